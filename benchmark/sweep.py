"""A sweep: the runs one command plans (tasks x dropout x seeds), one after another. One run's
failure is reported and the others go on; Ctrl+C stops the sweep, and `--resume` picks it up."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmark.config import ZAREMBA, Preset, apply_dropout
from benchmark.runner import RunOptions, finished_row, make_datamodule, run, run_name, settings_hash
from tasks.nn.errors import BenchError, RunInterrupted

__all__ = ["RunOptions", "describe", "run_all"]


def describe(preset: Preset, dropout: str, seed: int, trainer: dict[str, Any], data_root: Path, runs_dir: Path,
             run_dir: Path | None) -> str:
    """`--dry-run`: the run's settings hash, folder and state, and its resolved config."""
    dm = make_datamodule(preset, data_root)
    chash = settings_hash(preset, dm, trainer, data_root)
    absent = [p for p in dm.data_files() if not p.exists()]
    apply_dropout(preset, dropout)
    run_dir = run_dir or runs_dir / run_name(preset, dropout, seed, chash)
    state = ("finished: skipped with --resume" if finished_row(run_dir) else
             "resumes from last.ckpt" if (run_dir / "checkpoints" / "last.ckpt").exists() else "new")
    if absent:
        state += f"; {absent[0]} not downloaded yet: the hash changes once it is"
    resolved = {"config_file": str(preset.path), "model": preset.model, "data": preset.data,
                "trainer": {**preset.trainer, **{k: v for k, v in trainer.items() if v is not None}},
                "paper": preset.paper or None}
    reg = f" regularizer={preset.regularizer}" if dropout == "on" and preset.regularizer != ZAREMBA else ""
    return (f"# {preset.task}/{preset.name} dropout={dropout}{reg} seed={seed} config_hash={chash} -> {run_dir} "
            f"({state})\n" + yaml.safe_dump(resolved, sort_keys=False))


def label(preset: Preset, dropout: str) -> str:
    """`dropout_off`, `dropout_on` (the paper's), or the regularizer `dropout on` trains with."""
    return f"dropout_{dropout}" if dropout == "off" or preset.regularizer == ZAREMBA else preset.regularizer


def run_all(plan: list[tuple[Preset, str, int]], options: RunOptions) -> int:
    """Every planned run with `options` (its dropout and seed set per run); 2 if any failed."""
    outcomes: list[tuple[str, str]] = []  # (run, status)
    start = time.perf_counter()
    for preset, dropout, seed in plan:
        name = f"{preset.task}-{preset.name}-{label(preset, dropout)}-seed{seed}"
        try:
            status = _one(preset, dataclasses.replace(options, dropout=dropout, seed=seed))
        except (KeyboardInterrupt, RunInterrupted):
            if len(plan) > 1:  # the user stopped the whole sweep, not one run
                print(f"bench: sweep stopped at {name} ({len(outcomes)} of {len(plan)} runs done); the same "
                      f"command with --resume skips the finished runs and continues this one", file=sys.stderr)
            raise
        except Exception as err:  # noqa: BLE001 - a sweep reports one run's failure and goes on
            if len(plan) == 1:  # a lone run's error is the command's: the CLI prints it
                raise
            if not isinstance(err, BenchError):
                logging.getLogger("benchmark").exception("%s failed", name)
            print(f"bench: error: {name}: {err}", file=sys.stderr)
            status = "FAILED"
        if status is not None:
            outcomes.append((name, status))
    return _report(outcomes, len(plan), time.perf_counter() - start)


def _one(preset: Preset, opts: RunOptions) -> str | None:
    """One run of the sweep: its status, or None on a DDP rank other than 0."""
    t0 = time.perf_counter()
    row = run(preset, opts)
    if row is None:
        return None
    shown = {k: v for k, v in row.items() if k.startswith(("train_", "valid_", "test_")) and k != "train_loss"}
    print(f"{preset.task}/{preset.name} {label(preset, opts.dropout)} seed {opts.seed}: "
          + ", ".join(f"{k}={v}" for k, v in shown.items()))
    skipped = row.get("skipped")
    return (f"skipped (finished earlier, at {skipped})" if isinstance(skipped, str) else
            "skipped (finished earlier)" if skipped else f"done in {time.perf_counter() - t0:.0f} s")


def _report(outcomes: list[tuple[str, str]], planned: int, seconds: float) -> int:
    if planned > 1 and outcomes:
        print(f"\nbench run: {planned} runs in {seconds:.0f} s")
        for name, status in outcomes:
            print(f"  {name:<48} {status}")
    failed = [n for n, status in outcomes if status == "FAILED"]
    if failed:
        print(f"bench: error: {len(failed)} of {planned} runs failed ({', '.join(failed)}); the others kept "
              f"their results; rerun with --resume to retry only those", file=sys.stderr)
        return 2
    return 0
