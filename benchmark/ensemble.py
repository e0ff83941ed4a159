"""`bench ensemble`: the paper's model averaging (Table 1, "Model averaging of N regularized LSTMs").

Members are finished runs of one task and preset. The ensemble predicts the average of their
distributions, p(w) = 1/M * sum_m p_m(w): PTB's next-word distributions, translation's and
captioning's at every step of one beam search, speech's frame posteriors; the task's module says how
to score that on its test stream (`ensemble_eval`). Every member is scored again on the same code path, so the row puts the
ensemble beside its members measured the same way.
"""

from __future__ import annotations

import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark import environment, trained
from benchmark.results import RUNS_FILE, append_row, checkpoint_kind, read_rows, row_regularizer
from benchmark.runner import RESULT_FILE, check_results_dir, device_label, git_commit
from datamodules.base import same_value
from tasks import registry
from tasks.nn.errors import ConfigError


def _member(path: Path, which: str) -> tuple[trained.Trained, dict[str, Any]]:
    """A member, given as a run folder or a checkpoint in one, and its run's results row."""
    t = trained.load(Path(path), which)
    row = trained.run_row(t.path) or {}
    if not row:
        raise ConfigError(f"{t.path}: its run folder holds no {RESULT_FILE}, so not a finished run; ensemble "
                          f"finished runs (`bench run` writes {RESULT_FILE} when a run's results row lands)")
    return t, row


def run_ensemble(task: str, runs: list[Path], data_root: Path, results_dir: Path, which: str = "last",
                 batch_size: int | None = None, command: str = "", repeats_ok: bool = False) -> dict[str, Any]:
    """Score the average of the members' distributions; append and return its row. `repeats_ok`:
    let one run stand for several members, which only a check of the mixture wants (a distribution
    averaged with itself is itself); an ensemble of it would count one model as two."""
    if not registry.get(task).can(registry.Can.ENSEMBLE):
        raise ConfigError(f"task {task} cannot ensemble yet (its registry entry lacks Can.ENSEMBLE)")
    if len(runs) < 2:
        raise ConfigError("an ensemble needs at least 2 --runs")
    read_rows(Path(results_dir) / RUNS_FILE)  # a damaged results file fails now, not after the scoring
    check_results_dir(results_dir)  # and so does one that cannot take the row
    # In seed order, so that one set of members given in any order is one ensemble (its `seed`, e.g. 0+1+2).
    members = sorted((_member(Path(r), which) for r in runs), key=lambda m: int(m[1]["seed"]))
    for t, _ in members:
        if t.spec.name != task:
            raise ConfigError(f"{t.path}: a {t.spec.name} model, not {task}")
    rows = [row for _, row in members]
    # On and off runs, and every regularizer's, share a settings hash (dropout is the paired variable):
    # the arm keeps them apart, so that the row pools with its members' own.
    # The world size too: the hash holds the devices asked for (auto), and rows pool by the count that ran.
    presets = {(r["preset"], r.get("overrides", ""), r.get("config_hash", ""), r["dropout"], row_regularizer(r),
                r.get("dropout_rate", ""), str(r.get("devices", ""))) for r in rows}
    if len(presets) > 1:
        raise ConfigError(f"members come from different settings or arms {sorted(presets)} (preset, overrides, "
                          f"settings hash, dropout, regularizer, rates, devices); ensemble runs of one")
    _refuse_other_data(members)  # one setting, yet other files (rows from before the hash covered them)
    if not repeats_ok:
        _refuse_repeats(members)
    first = members[0][0]
    for t, _ in members[1:]:
        if not _same_state(t.state, first.state):
            raise ConfigError(f"{t.path}: its vocabulary or feature statistics differ from {first.path}'s: "
                              f"members must be trained on the same data")
    dm = first.datamodule(data_root, batch_size=batch_size)
    dm.prepare_data()
    dm.setup("test")
    models = [t.model for t, _ in members]
    start = time.perf_counter()
    scores = type(models[0]).ensemble_eval(models, dm)  # {metric: ([member values], ensemble value)}
    row = _row(task, rows[0]["preset"], rows, scores, [t.path for t, _ in members], time.perf_counter() - start,
               command, checkpoint_kind([t.path for t, _ in members]), device_label(next(models[0].parameters()).device))
    env, pkgs = environment.fingerprint(next(models[0].parameters()).device)
    environment.save_package_list(Path(results_dir), env["env_packages"], pkgs)
    row.update({**env, "skipped_records": len(getattr(dm, "skipped", []))})
    append_row(results_dir, row)
    return row


def _refuse_other_data(members: list[tuple[trained.Trained, dict[str, Any]]]) -> None:
    """Members trained on other data files (their checkpoints' fingerprints differ) are not seeds of
    one setting. Checkpoints from before runs kept the fingerprint are let through."""
    seen: dict[str, Path] = {}
    for t, _ in members:
        if t.info.get("data_files"):
            seen.setdefault(t.info["data_files"], t.path)
    if len(seen) > 1:
        a, b = list(seen.values())[:2]
        raise ConfigError(f"{b}: trained on other data files (names or sizes) than {a}; ensemble runs trained on "
                          f"the same data")


def _refuse_repeats(members: list[tuple[trained.Trained, dict[str, Any]]]) -> None:
    """One training run given twice (the same file, a copy of its folder, or a second run of the same
    seed and settings, bit for bit the same model on one machine) is one model, not two."""
    seen: dict[tuple[str, Any], Path] = {}
    for t, row in members:
        # A seed repeats a model only on the same world size and precision (the settings hash takes
        # the asked device count, which may be "auto").
        seed = str(row.get("seed", ""))
        for kind, value in (("file", t.path.resolve()), ("run", row.get("run_id") or t.info.get("run_id")),
                            ("seed", seed and (seed, str(row.get("devices", "")), row.get("precision", "")))):
            if value in (None, ""):
                continue
            if (kind, value) in seen:
                what = {"file": "the same checkpoint", "run": f"the same run (run_id {value})",
                        "seed": f"seed {seed} of the same settings"}[kind]
                raise ConfigError(f"{t.path}: {what} as {seen[kind, value]}; an ensemble averages independently "
                                  f"trained models: give each run once (train another seed with `bench run --seed N`)")
            seen[kind, value] = t.path


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def _row(task: str, preset: str, rows: list[dict[str, Any]], scores: dict[str, tuple[list[float], float]],
         ckpts: list[Path], seconds: float, command: str, checkpoint: str = "last", device: str = "") -> dict[str, Any]:
    """The ensemble's results row: its scores beside its members', measured the same way. `git_commit`
    is the code that scored it; the members' training commits are `members_git_commit`."""
    # run_ensemble admits members of one arm only (dropout, regularizer, rates): the row is that arm's.
    # The members' world size: with config_hash, what the row pools by (leaderboard._hash). The
    # ensemble itself is scored in one process.
    devices = sorted({str(r.get("devices") or 1) for r in rows})
    return {
        "task": task,
        "preset": preset,
        "dropout": rows[0]["dropout"],
        "regularizer": row_regularizer(rows[0]),
        "dropout_rate": rows[0].get("dropout_rate", ""),
        "seed": "+".join(str(r["seed"]) for r in rows),
        "ensemble": len(rows),
        "checkpoint": checkpoint,  # the members' files: last, best (by validation), other or mixed; they pool apart
        "overrides": rows[0].get("overrides", ""),
        "config_hash": rows[0].get("config_hash", ""),
        **{k: f"{v[1]:.4f}" for k, v in scores.items()},
        **{f"members_{k}": " ".join(f"{x:.4f}" for x in v[0]) for k, v in scores.items()},
        "epochs": rows[0].get("epochs", ""),
        "wall_s": f"{seconds:.1f}",
        "device": device,
        "precision": "32-true",  # ensemble_eval scores without a Trainer or autocast, whatever the members trained in
        "devices": devices[0] if len(devices) == 1 else "mixed",
        "host": platform.node(),
        "git_commit": git_commit(),
        "members_git_commit": " ".join(str(r.get("git_commit", "")) for r in rows),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_dir": " ".join(str(c) for c in ckpts),
        "command": command or shlex.join(["bench", *sys.argv[1:]]),
    }
