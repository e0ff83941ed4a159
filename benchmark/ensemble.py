"""`bench ensemble`: the paper's model averaging (Table 1, "Model averaging of N regularized LSTMs").

Members are finished runs of one task and preset. The ensemble predicts the average of their
distributions, p(w) = 1/M * sum_m p_m(w); the task's module says how to score that on its streams
(`ensemble_eval`). Every member is scored again on the same code path, so the row puts the
ensemble beside its members measured the same way.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark import config, environment
from benchmark.checkpoints import check_checkpoint
from benchmark.results import append_row
from benchmark.runner import RESULT_FILE
from tasks import registry
from tasks.nn.errors import ConfigError


def _member(path: Path, which: str) -> tuple[Path, dict[str, Any]]:
    """(checkpoint, result.json) of one member given as a run folder or a checkpoint inside one."""
    run_dir = path.parent.parent if path.suffix == ".ckpt" else path
    info_file = run_dir / RESULT_FILE
    if not info_file.is_file():
        raise ConfigError(f"{run_dir}: no {RESULT_FILE}, so not a finished run; ensemble finished runs "
                          f"(`bench run` writes {RESULT_FILE} when a run's results row lands)")
    info = json.loads(info_file.read_text())
    if path.suffix == ".ckpt":
        ckpt = path
    elif which == "last":
        ckpt = run_dir / "checkpoints" / "last.ckpt"
    else:
        best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
        if not best:
            raise ConfigError(f"{run_dir / 'checkpoints'}: no best-*.ckpt; use --checkpoint last")
        ckpt = best[-1]
    check_checkpoint(ckpt)
    return ckpt, info


def run_ensemble(task: str, runs: list[Path], data_root: Path, results_dir: Path, which: str = "last",
                 batch_size: int | None = None, command: str = "") -> dict[str, Any]:
    if not registry.get(task).can(registry.Can.ENSEMBLE):
        raise ConfigError(f"task {task} cannot ensemble yet (its registry entry lacks Can.ENSEMBLE)")
    if len(runs) < 2:
        raise ConfigError("an ensemble needs at least 2 --runs")
    members = [_member(Path(r), which) for r in runs]
    rows = [info["row"] for _, info in members]
    for (ckpt, _), row in zip(members, rows):
        if row["task"] != task:
            raise ConfigError(f"{ckpt}: a {row['task']} run, not {task}")
    presets = {(r["preset"], r.get("overrides", ""), r.get("config_hash", "")) for r in rows}
    if len(presets) > 1:
        raise ConfigError(f"members come from different settings {sorted(presets)}; ensemble runs of one preset")
    preset = config.load_preset(task, rows[0]["preset"])
    data = {**members[0][1]["data"], **({"batch_size": batch_size} if batch_size else {})}
    dm = registry.load_class(preset.datamodule)(data_root=data_root, **data)
    dm.prepare_data()
    dm.setup("test")
    module_cls = registry.load_class(preset.module)
    models = [_load(module_cls, ckpt, dm, data_root) for ckpt, _ in members]
    start = time.perf_counter()
    scores = module_cls.ensemble_eval(models, dm)  # {metric: ([member values], ensemble value)}
    row = _row(task, preset.name, rows, scores, [c for c, _ in members], time.perf_counter() - start, command)
    env, pkgs = environment.fingerprint(next(models[0].parameters()).device)
    environment.save_package_list(Path(results_dir), env["env_packages"], pkgs)
    row.update({**env, "skipped_records": len(getattr(dm, "skipped", []))})
    append_row(results_dir, row)
    return row


def _load(module_cls: type, ckpt: Path, dm: Any, data_root: Path) -> Any:
    model = module_cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    if model.hparams.get("vocab_size") != dm.model_kwargs().get("vocab_size"):
        raise ConfigError(f"{ckpt}: its vocabulary does not match the data ({data_root}); same data root?")
    return model.eval()


def _row(task: str, preset: str, rows: list[dict[str, Any]], scores: dict[str, tuple[list[float], float]],
         ckpts: list[Path], seconds: float, command: str) -> dict[str, Any]:
    """The ensemble's results row: its scores beside its members', measured the same way."""
    dropouts = sorted({r["dropout"] for r in rows})
    return {
        "task": task,
        "preset": preset,
        "dropout": dropouts[0] if len(dropouts) == 1 else "mixed",
        "seed": "+".join(str(r["seed"]) for r in rows),
        "ensemble": len(rows),
        "overrides": rows[0].get("overrides", ""),
        "config_hash": rows[0].get("config_hash", ""),
        **{k: f"{v[1]:.4f}" for k, v in scores.items()},
        **{f"members_{k}": " ".join(f"{x:.4f}" for x in v[0]) for k, v in scores.items()},
        "epochs": rows[0].get("epochs", ""),
        "wall_s": f"{seconds:.1f}",
        "device": rows[0].get("device", ""),
        "precision": rows[0].get("precision", ""),
        "devices": 1,
        "host": platform.node(),
        "git_commit": rows[0].get("git_commit", ""),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_dir": " ".join(str(c) for c in ckpts),
        "command": command or shlex.join(["bench", *sys.argv[1:]]),
    }
