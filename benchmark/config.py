"""Named, reproducible presets: `configs/<task>/<preset>.yaml`.

A preset gives the constructor arguments of its task's LightningModule and DataModule (which
classes those are is the task's, in tasks/registry.py). Sections:

    default_dropout       on | off: what `bench run` does without --dropout (the paper's setting)
    model                 LightningModule kwargs; every `dropout`/`*_dropout` key is the rate for `on`
    data                  DataModule kwargs (data_root comes from the CLI)
    trainer               lightning.Trainer kwargs
    paper                 the paper's reported numbers, keyed like our metrics: for the default_dropout
                          setting, or `on:` and `off:` blocks when the paper reports both
    default_regularizer   optional: what `--dropout on` trains with without --regularizer (default zaremba)
    regularizers          optional: `--regularizer NAME` -> {mechanism: rate} for `on` (tasks/nn/regularizers.py);
                          `zaremba` (the paper) is model.dropout and needs no entry
    extends               optional: another preset of the same task to start from
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks import registry
from tasks.nn.errors import ConfigError
from tasks.nn.mechanisms import FLAGS, MECHANISMS, ZAREMBA

MAPPINGS = ("model", "data", "trainer", "paper", "regularizers")  # sections that hold KEY: VALUE


class _Loader(yaml.SafeLoader):
    """YAML 1.1, what PyYAML reads, takes `1e-3` (no dot) for a string; YAML 1.2, and anyone
    writing a learning rate, for a number. Both presets and `--set` read it as a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))

# What YAML 1.1 (PyYAML) reads otherwise than it looks: `no`, `on` -> booleans, `010` -> 8 (octal),
# `0x1f` -> 31, `1:30` -> 90 (base 60). YAML 1.2, and anyone typing `--set model.backbone=no`, take
# them as written. A plain integer is `0` or has no leading zero; true/false are booleans in both.
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")  # 08, 09: not octal, so YAML 1.1 keeps them as text


def _reads_otherwise(node: yaml.Node, at: str = "") -> Iterator[tuple[str, yaml.ScalarNode]]:
    """(where, scalar) for every unquoted scalar under `node` that YAML 1.1 gives another value than
    its text shows; `where` is the key path, e.g. `model.backbone`."""
    if isinstance(node, yaml.ScalarNode):
        text, kind = node.value, node.tag.rpartition(":")[2]
        if node.style is None and ((kind == "bool" and text.lower() not in ("true", "false"))
                                   or (kind == "int" and not _PLAIN_INT.fullmatch(text))
                                   or (kind == "float" and ":" in text) or kind == "timestamp"
                                   or (kind == "str" and _LEADING_ZERO.fullmatch(text))):
            yield at, node
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            yield from _reads_otherwise(child, f"{at}[{i}]")
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _reads_otherwise(key, at)
            yield from _reads_otherwise(value, f"{at}.{key.value}" if at else str(key.value))


def _surprise(node: yaml.ScalarNode, item: str = "") -> str:
    """`item`: the --set argument, whose quotes must survive the shell (`--set "k='no'"`)."""
    value = yaml.load(node.value, Loader=_Loader)
    key, _, whole = item.partition("=")
    # The whole --set value: the command as the shell keeps its quotes; a list's or mapping's item: in place.
    quoted = f'--set "{key}=\'{node.value}\'"' if item and whole.strip() == node.value else f"'{node.value}'"
    return (f"`{node.value}` reads as {value!r} in YAML 1.1, not as written; write true/false or the plain "
            f"number, or quote it ({quoted}) if a string is meant")


def _preset_surprises(path: Path, root: yaml.Node | None) -> list[str]:
    """The error line for each preset value YAML 1.1 reads otherwise than written. `default_dropout: on`
    and `paper: {on: .., off: ..}` are the exceptions: the loader turns them back into on/off itself."""
    if not isinstance(root, yaml.MappingNode):
        return []
    found = []
    for key, value in root.value:
        if key.value == "default_dropout":
            continue
        for where, node in [*_reads_otherwise(key), *_reads_otherwise(value, str(key.value))]:
            if not (where == "paper" and node.value in ("on", "off")):  # paper's on:/off: blocks
                found.append(f"{path}:{node.start_mark.line + 1}: {where or key.value}: {_surprise(node)}")
    return found


SECTIONS = {"default_dropout", "model", "data", "trainer", "paper", "extends", "notes", "regularizers",
            "default_regularizer"}


@dataclass
class Preset:
    task: str
    name: str
    path: Path
    module: str
    datamodule: str
    default_dropout: str
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    regularizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    regularizer: str = ZAREMBA
    default_regularizer: str = ZAREMBA
    set_keys: set[str] = field(default_factory=set)
    """`section.key` of every `--set` (a rate set there and overwritten by a regularizer is refused)."""
    base_model: dict[str, Any] | None = None
    """The model section before `apply_regularizer` or `--dropout off` changed it: what the settings
    hash and `overrides_of` read, so that every regularizer of a setting pairs with the same `off`
    runs, and a rate given by `--set` counts as an override in both arms."""

    @property
    def hashed_model(self) -> dict[str, Any]:
        return self.base_model if self.base_model is not None else self.model


def presets(task: str) -> list[str]:
    return sorted(p.stem for p in registry.get(task).presets_dir.glob("*.yaml"))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path, seen: tuple[Path, ...] = (), surprises: list[str] | None = None) -> dict:
    """The preset at `path` over what it extends; `surprises` collects the values YAML 1.1 reads
    otherwise than written (load_preset refuses them after its own, more specific, checks)."""
    if path in seen:
        raise ConfigError(f"{path}: `extends` loops back on itself")
    if not path.is_file():  # only an `extends:` gets here with a missing file: load_preset checks its own
        raise ConfigError(f"{seen[-1]}: `extends: {path.stem}`: no {path}; known: "
                          f"{', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))}")
    text = path.read_text()
    try:
        found = _preset_surprises(path, yaml.compose(text, Loader=_Loader))
        raw = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if surprises is not None:
        surprises += found
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = set(raw) - SECTIONS
    if unknown & {"module", "datamodule"}:
        raise ConfigError(f"{path}: `module:`/`datamodule:` are the task's, not a preset's: they are declared once in "
                          f"tasks/registry.py; delete them here")
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
    for section in MAPPINGS:
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: `{section}:` must hold KEY: VALUE lines, got {raw[section]!r}")
    if "extends" in raw:
        base = _read(path.parent / f"{raw['extends']}.yaml", seen + (path,), surprises)
        merged = _merge(base, {k: v for k, v in raw.items() if k != "extends"})
        if "paper" in raw:  # one setting's published numbers: a preset's own replace its base's whole
            merged["paper"] = raw["paper"]
        raw = merged
    return raw


def parse_value(text: str, item: str = "") -> Any:
    """`--set` values are YAML scalars: 0.5 and 1e-3 -> float, 3 -> int, null -> None, fused -> 'fused'.
    What YAML 1.1 reads otherwise than typed (`no`, `010`, `1:30`) is refused."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item or text!r}: {text!r} is not a YAML value ({str(err).splitlines()[0]}); "
                          f"quote it if it is a string") from err
    for _, bad in _reads_otherwise(node) if node is not None else ():
        raise ConfigError(f"--set {item or text!r}: {_surprise(bad, item)}")
    return value


def load_preset(task: str, preset: str, overrides: list[str] = ()) -> Preset:
    """Load `configs/<task>/<preset>.yaml` (or a YAML path given as `preset`) and apply
    `section.key=value` overrides."""
    spec = registry.get(task)
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else spec.presets_dir / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r} for task {task!r}; known: {', '.join(presets(task))}")
    surprises: list[str] = []
    raw = _read(path, surprises=surprises)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("model", "data", "trainer"):
            raise ConfigError(f"--set {item!r}: expected model.KEY=VALUE, data.KEY=VALUE or trainer.KEY=VALUE")
        if key == "model.regularization":  # apply_regularizer writes it over whatever --set gave
            raise ConfigError(f"--set {item!r}: model.regularization is set by --regularizer NAME from the "
                              f"preset's `regularizers:` section ({path}); edit or add the rates there")
        raw.setdefault(section, {})[name] = parse_value(value, item)
    dropout = str(raw.get("default_dropout", "on")).lower()
    if dropout in ("true", "false"):  # YAML 1.1 reads bare on/off as booleans
        dropout = "on" if dropout == "true" else "off"
    if dropout not in ("on", "off"):  # checked with the preset, before any run trains, not when its run starts
        raise ConfigError(f"{path}: default_dropout must be on or off, got {raw['default_dropout']!r}")
    set_keys = {item.partition("=")[0] for item in overrides}
    for key in dropout_keys(raw.get("model") or {}):
        rate = raw["model"][key]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            where = f"--set model.{key}" if f"model.{key}" in set_keys else f"{path}: model.{key}"
            raise ConfigError(f"{where}: a dropout rate is a number in [0, 1), got {rate!r}")
    if surprises:
        raise ConfigError(surprises[0])
    return Preset(
        task=task,
        name=path.stem,
        path=path,
        module=spec.module,
        datamodule=spec.datamodule,
        default_dropout=dropout,
        model=dict(raw.get("model") or {}),
        data=dict(raw.get("data") or {}),
        trainer=dict(raw.get("trainer") or {}),
        # `paper: {on: {...}, off: {...}}` gives both settings' numbers; YAML 1.1 reads bare on/off as booleans
        paper={({True: "on", False: "off"}[k] if isinstance(k, bool) else k): v
               for k, v in (raw.get("paper") or {}).items()},
        notes=str(raw.get("notes", "")),
        regularizers=_regularizers(path, raw),
        default_regularizer=str(raw.get("default_regularizer", ZAREMBA)),
        set_keys=set_keys,
    )


def _regularizers(path: Path, raw: dict) -> dict[str, dict[str, Any]]:
    """The `regularizers:` section, checked: known mechanisms, rates in [0, 1)."""
    section = raw.get("regularizers") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: `regularizers:` must map names to {{mechanism: rate}}")
    out = {}
    for name, rates in section.items():
        if not isinstance(rates, dict) or not rates:
            raise ConfigError(f"{path}: regularizer {name!r} must map mechanisms to rates, e.g. {{locked: 0.5}}")
        unknown = set(rates) - set(MECHANISMS) - set(FLAGS)
        if unknown:
            raise ConfigError(f"{path}: regularizer {name!r} names unknown mechanism(s) {sorted(unknown)}; "
                              f"known: {', '.join(MECHANISMS + FLAGS)}")
        bad = {k: v for k, v in rates.items() if k not in FLAGS and not (isinstance(v, (int, float)) and 0 <= v < 1)}
        if bad:
            raise ConfigError(f"{path}: regularizer {name!r}: rates must be numbers in [0, 1), got {bad}")
        out[str(name)] = dict(rates)
    zaremba = out.pop(ZAREMBA, None)
    rate = (raw.get("model") or {}).get("dropout")
    if zaremba is not None and zaremba != {"dropout": rate}:
        raise ConfigError(f"{path}: regularizers.{ZAREMBA} is the paper's dropout alone, model.dropout ({rate}); "
                          f"drop the entry or make it {{dropout: {rate}}}")
    return out


def regularizer_names(preset: Preset) -> list[str]:
    """What `--regularizer all` runs for this preset: the paper's, then the preset's, in its order."""
    return [ZAREMBA, *preset.regularizers]


def apply_regularizer(preset: Preset, name: str) -> None:
    """Set the model section to regularizer `name`'s rates (for `--dropout on`): `dropout` for the
    paper's mechanism, `regularization` for the others. The settings hash keeps reading the model
    as the preset wrote it (`base_model`)."""
    if name == ZAREMBA:
        preset.regularizer = name
        return
    if name not in preset.regularizers:
        known = ", ".join(regularizer_names(preset))
        raise ConfigError(f"{preset.path}: no rates for regularizer {name!r} (this preset has: {known}); add them "
                          f"under `regularizers:` ({name}: {{mechanism: rate}})")
    # Its rates replace every dropout key: one given by --set would be dropped without a word.
    overwritten = sorted(k for k in preset.set_keys if k.startswith("model.") and is_dropout_key(k[len("model."):]))
    if overwritten:
        default = " (this preset's default_regularizer)" if name == preset.default_regularizer else ""
        raise ConfigError(f"--set {overwritten[0]}: regularizer {name}{default} takes its rates from the preset's "
                          f"`regularizers:` section ({preset.path}), not model.*dropout; edit them there, or use "
                          f"--regularizer {ZAREMBA}")
    rates = preset.regularizers[name]
    preset.base_model = copy.deepcopy(preset.hashed_model)
    for key in dropout_keys(preset.model):
        preset.model[key] = 0.0
    preset.model["dropout"] = float(rates.get("dropout", 0.0))
    preset.model["regularization"] = {k: v for k, v in rates.items() if k != "dropout"} or None
    preset.regularizer = name


def regularizer_tag(preset: Preset) -> str:
    """`locked-3f2a91`: a regularizer other than the paper's and a hash of its rates, for run folders
    and rows (so a changed rate never resumes, or pools with, the old one); "" for zaremba."""
    if preset.regularizer == ZAREMBA:
        return ""
    rates = json.dumps(preset.regularizers[preset.regularizer], sort_keys=True)
    return f"{preset.regularizer}-{hashlib.sha256(rates.encode()).hexdigest()[:6]}"


def paper_numbers(preset: Preset, dropout: str, regularizer: str | None = None) -> dict[str, float]:
    """The paper's figures for this preset run with this dropout setting: `paper:` holds either
    one setting's numbers (the preset's default_dropout) or `on:`/`off:` blocks. The `on` figures
    belong to the preset's default regularizer (Gal & Ghahramani's 79.7 is not the paper's
    dropout's number): run with another (`regularizer`), `on` has none."""
    if dropout == "on" and regularizer not in (None, preset.default_regularizer):
        return {}
    paper = preset.paper or {}
    if set(paper) & {"on", "off"}:
        return dict(paper.get(dropout) or {})
    return dict(paper) if dropout == preset.default_dropout else {}


def is_dropout_key(key: str) -> bool:
    return key == "dropout" or key.endswith("_dropout")


def dropout_keys(model: dict[str, Any]) -> list[str]:
    return [k for k in model if is_dropout_key(k)]


def apply_dropout(preset: Preset, mode: str) -> dict[str, float]:
    """`off` zeroes every dropout of the preset; `on` keeps the rates it names. Returns the rates."""
    if mode not in ("on", "off"):
        raise ConfigError(f"--dropout must be 'on' or 'off', got {mode!r}")
    keys = dropout_keys(preset.model)
    if not keys:
        raise ConfigError(f"{preset.path}: model section names no dropout rate (a `dropout` key)")
    if mode == "off":
        if preset.base_model is None:
            preset.base_model = copy.deepcopy(preset.model)
        for k in keys:
            preset.model[k] = 0.0
        preset.model.pop("regularization", None)
    rates = {k: float(preset.model[k]) for k in keys}
    return {**rates, **(preset.model.get("regularization") or {})}


# Trainer settings that change where and how fast a run goes, not what it computes.
PLACEMENT_KEYS = {"accelerator", "devices", "num_nodes", "strategy", "precision", "enable_progress_bar",
                  "enable_model_summary", "logger", "callbacks"}


def _as_hashed(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def overrides_of(preset: Preset, trainer: dict[str, Any]) -> str:
    """How a run's effective settings differ from its preset file, e.g. `trainer.max_steps=10`.

    Empty for a run of the preset as named; the leaderboard ranks only those.
    """
    fresh = load_preset(preset.task, str(preset.path))
    apply_dropout(fresh, "on")
    diffs = []
    for section in ("model", "data", "trainer"):
        mine = preset.hashed_model if section == "model" else getattr(preset, section)
        ours = {**mine, **(trainer if section == "trainer" else {})}
        ref = getattr(fresh, section)
        for key in sorted(set(ours) | set(ref)):
            if key in PLACEMENT_KEYS:
                continue
            # As the settings hash writes them: `--set model.lr=1` against `lr: 1.0` is another hash,
            # so it must be an override too.
            if _as_hashed(ours.get(key)) != _as_hashed(ref.get(key)):
                diffs.append(f"{section}.{key}={ours.get(key)}")
    return " ".join(diffs)


def test_set_name(path: Path) -> str:
    """A test set given by path is named by its (first) file: `newstest2014.en` -> `newstest2014`,
    its metrics `test_newstest2014_*`."""
    return re.sub(r"\W+", "_", Path(path).name.split(".")[0]).strip("_") or "custom"
