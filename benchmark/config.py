"""Named, reproducible presets: `configs/<task>/<preset>.yaml`.

A preset gives the constructor arguments of its task's LightningModule and DataModule (which
classes those are is the task's, in tasks/registry.py). Sections:

    default_dropout       on | off: what `bench run` does without --dropout (the paper's setting)
    model                 LightningModule kwargs; every `dropout`/`*_dropout` key is the rate for `on`
    data                  DataModule kwargs (data_root comes from the CLI)
    trainer               lightning.Trainer kwargs
    paper                 the paper's reported numbers, keyed like our metrics: for the default_dropout
                          setting, or `on:` and `off:` blocks when the paper reports both
    extends               optional: another preset of the same task to start from
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks import registry
from tasks.nn.errors import ConfigError

SECTIONS = {"default_dropout", "model", "data", "trainer", "paper", "extends", "notes"}


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


def presets(task: str) -> list[str]:
    return sorted(p.stem for p in registry.get(task).presets_dir.glob("*.yaml"))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: `extends` loops back on itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = set(raw) - SECTIONS
    if unknown & {"module", "datamodule"}:
        raise ConfigError(f"{path}: `module:`/`datamodule:` are the task's, not a preset's: they are declared once in "
                          f"tasks/registry.py; delete them here")
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
    if "extends" in raw:
        base = _read(path.parent / f"{raw['extends']}.yaml", seen + (path,))
        raw = _merge(base, {k: v for k, v in raw.items() if k != "extends"})
    return raw


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars: 0.5 -> float, 3 -> int, null -> None, fused -> 'fused'."""
    return yaml.safe_load(text)


def load_preset(task: str, preset: str, overrides: list[str] = ()) -> Preset:
    """Load `configs/<task>/<preset>.yaml` (or a YAML path given as `preset`) and apply
    `section.key=value` overrides."""
    spec = registry.get(task)
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else spec.presets_dir / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r} for task {task!r}; known: {', '.join(presets(task))}")
    raw = _read(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("model", "data", "trainer"):
            raise ConfigError(f"--set {item!r}: expected model.KEY=VALUE, data.KEY=VALUE or trainer.KEY=VALUE")
        raw.setdefault(section, {})[name] = parse_value(value)
    dropout = str(raw.get("default_dropout", "on")).lower()
    if dropout in ("true", "false"):  # YAML 1.1 reads bare on/off as booleans
        dropout = "on" if dropout == "true" else "off"
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
    )


def paper_numbers(preset: Preset, dropout: str) -> dict[str, float]:
    """The paper's figures for this preset run with this dropout setting: `paper:` holds either
    one setting's numbers (the preset's default_dropout) or `on:`/`off:` blocks."""
    paper = preset.paper or {}
    if set(paper) & {"on", "off"}:
        return dict(paper.get(dropout) or {})
    return dict(paper) if dropout == preset.default_dropout else {}


def dropout_keys(model: dict[str, Any]) -> list[str]:
    return [k for k in model if k == "dropout" or k.endswith("_dropout")]


def apply_dropout(preset: Preset, mode: str) -> dict[str, float]:
    """`off` zeroes every dropout of the preset; `on` keeps the rates it names. Returns the rates."""
    if mode not in ("on", "off"):
        raise ConfigError(f"--dropout must be 'on' or 'off', got {mode!r}")
    keys = dropout_keys(preset.model)
    if not keys:
        raise ConfigError(f"{preset.path}: model section names no dropout rate (a `dropout` key)")
    if mode == "off":
        for k in keys:
            preset.model[k] = 0.0
    return {k: float(preset.model[k]) for k in keys}


# Trainer settings that change where and how fast a run goes, not what it computes.
PLACEMENT_KEYS = {"accelerator", "devices", "num_nodes", "strategy", "precision", "enable_progress_bar",
                  "enable_model_summary", "logger", "callbacks"}


def overrides_of(preset: Preset, trainer: dict[str, Any]) -> str:
    """How a run's effective settings differ from its preset file, e.g. `trainer.max_steps=10`.

    Empty for a run of the preset as named; the leaderboard ranks only those.
    """
    fresh = load_preset(preset.task, str(preset.path))
    apply_dropout(fresh, "on")
    diffs = []
    for section in ("model", "data", "trainer"):
        ours = {**getattr(preset, section), **(trainer if section == "trainer" else {})}
        ref = getattr(fresh, section)
        for key in sorted(set(ours) | set(ref)):
            if key in PLACEMENT_KEYS or (section == "model" and key in dropout_keys(ours)):
                continue
            if ours.get(key) != ref.get(key):
                diffs.append(f"{section}.{key}={ours.get(key)}")
    return " ".join(diffs)


def test_set_name(path: Path) -> str:
    """A test set given by path is named by its (first) file: `newstest2014.en` -> `newstest2014`,
    its metrics `test_newstest2014_*`."""
    return re.sub(r"\W+", "_", Path(path).name.split(".")[0]).strip("_") or "custom"
