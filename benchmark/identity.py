"""What makes two runs comparable: a hash of every setting that changes the math, data included.

The leaderboard pools seeds, and pairs dropout on with off, only between rows with the same
`config_hash`; a run's folder carries it too, so `--resume` never hands back a result made with
other settings. Covered:

    module, datamodule        which classes
    model                     with the preset's `on` dropout rates (on and off runs share a hash:
                              dropout is the paired variable, its rate is part of the setting)
    data                      the DataModule's arguments, but `bad_records` (on the same files a
                              run that may skip bad records either reads what a strict one reads,
                              or the strict one fails; each row counts what it skipped)
    trainer                   every key but placement ones (progress bar, logger...), precision and
                              the device count included: DDP changes the global batch of most tasks
                              (the leaderboard also keys rows by the world size they ran with)
    data files                names and sizes of every file the DataModule reads (`data_files()`),
                              so a re-encoded copy of a data set does not pool with the publisher's;
                              not hidden files, nor the aligner's report of what it skipped (it
                              names absolute paths: its size would tie the hash to the folder)

Not covered: the code (each row names its commit), the machine (`device`, `host`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from datamodules.align import REPORT

# Trainer settings that change where and how fast a run goes, not what it computes.
PLACEMENT_KEYS = {"accelerator", "strategy", "enable_progress_bar", "enable_model_summary", "logger", "callbacks",
                  "log_every_n_steps", "enable_checkpointing", "default_root_dir"}
# Data settings that decide whether a run may go on, not what it computes.
DATA_PLACEMENT_KEYS = {"bad_records"}
HASH_CHARS = 10


def data_fingerprint(paths: list[Path], root: Path) -> str:
    """sha256 over (path relative to the data root, size) of every file under `paths`; a path
    that does not exist yet counts as missing (its download changes the fingerprint)."""
    h = hashlib.sha256()
    for path in sorted({Path(p) for p in paths}):
        # Hidden entries (a download's temporary folder, .DS_Store) are not data, nor is a report.
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != REPORT and not any(
            part.startswith(".") for part in f.relative_to(path).parts)) if path.is_dir() else [path]
        for f in files:
            try:
                rel = f.relative_to(root).as_posix()
            except ValueError:
                rel = f.as_posix()
            size = f.stat().st_size if f.is_file() else -1
            h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()


def _normalise_trainer(trainer: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in trainer.items() if k not in PLACEMENT_KEYS and v is not None}
    precision = str(out.get("precision", "32-true"))
    out["precision"] = "32-true" if precision == "32" else precision
    # The device count as asked: a list of ids counts as its length; "auto" (Lightning's default)
    # stays "auto", and the leaderboard also keys rows by the world size each one really ran with.
    devices = out.get("devices", "auto")
    out["devices"] = str(len(devices) if isinstance(devices, (list, tuple)) else devices)
    out["num_nodes"] = str(out.get("num_nodes", 1))
    return out


def config_hash(module: str, datamodule: str, model: dict[str, Any], data: dict[str, Any],
                trainer: dict[str, Any], fingerprint: str) -> str:
    """A short, stable hash of a run's settings (see the module docstring for what is in it)."""
    data = {k: v for k, v in data.items() if k not in DATA_PLACEMENT_KEYS}
    payload = {"module": module, "datamodule": datamodule, "model": model, "data": data,
               "trainer": _normalise_trainer(trainer), "data_files": fingerprint}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
