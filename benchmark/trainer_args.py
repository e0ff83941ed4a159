"""Trainer settings (a preset's `trainer:` and the command line's) checked against lightning.Trainer's
own signature before any data is prepared: a typo or a wrong type fails in a second, not after a
download or at the Trainer's construction."""

from __future__ import annotations

import collections.abc
import difflib
import functools
import types
import typing
from typing import Any, Literal, Union

from tasks.nn.errors import ConfigError

# lightning.Trainer arguments the runner passes itself: one from a preset or --set would clash.
RUNNER_TRAINER_KEYS = {"default_root_dir": "--run-dir/--runs-dir", "callbacks": "the runner",
                       "logger": "--logger", "plugins": "the runner", "use_distributed_sampler": "the task"}


@functools.cache
def _trainer_hints() -> dict[str, Any]:
    import lightning  # here, not at the top: `bench list` does not load Lightning

    return {k: v for k, v in typing.get_type_hints(lightning.Trainer.__init__).items() if k != "return"}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML/CLI value can be `hint`; a hint this cannot read lets the value through."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, arm) for arm in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # True is no epoch count; an int is a fine float
        return isinstance(value, (int, hint)) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        # a string is a sequence too, but not the list that is meant
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and (len(args) != 2 or all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()))
    if origin is None and isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arm) for arm in args))
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def check_trainer_types(trainer: dict[str, Any], where: str) -> None:
    """Each trainer setting is an argument of lightning.Trainer of the type it declares, checked
    before any data is prepared (not when the Trainer is built, after a download)."""
    hints = _trainer_hints()
    for key, value in trainer.items():
        if key in RUNNER_TRAINER_KEYS:
            raise ConfigError(f"{where}: trainer.{key} is set by {RUNNER_TRAINER_KEYS[key]}, not by a preset "
                              f"or --set; remove it")
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see lightning.Trainer's arguments"
            raise ConfigError(f"{where}: trainer.{key} is not a lightning.Trainer argument; {hint}")
        if not _fits(value, hints[key]):
            raise ConfigError(f"{where}: trainer.{key} must be {_describe(hints[key])}, got {value!r}")
