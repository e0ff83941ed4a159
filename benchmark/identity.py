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
                              names absolute paths: its size would tie the hash to the folder).
                              A file whose publisher gives its sha256 (PTB, Tatoeba, Multi30k, WMT
                              dev, the TIMIT sample) is checked against it, and a changed copy of
                              the same size (edited, cut and padded, placed by hand) is marked, so
                              it hashes apart; the publisher's own copy hashes as by name and size.
                              A file outside the data root (`--test-src /path`) counts by name and
                              sha256, not by where it lies, so the same command pools across folders.

Not covered: the code (each row names its commit), the machine (`device`, `host`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from datamodules.align import REPORT
from datamodules.download import Dataset, sha256_of
from datamodules.sources import SOURCES
from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

# Trainer settings that change where and how fast a run goes, not what it computes.
PLACEMENT_KEYS = {"accelerator", "strategy", "enable_progress_bar", "enable_model_summary", "logger", "callbacks",
                  "log_every_n_steps", "enable_checkpointing", "default_root_dir"}
# Data settings that decide whether a run may go on, not what it computes.
DATA_PLACEMENT_KEYS = {"bad_records"}
HASH_CHARS = 10


@functools.cache
def _published() -> dict[str, tuple[str, str]]:
    """'<data set folder>/<file>' -> (its `bench fetch` name, the publisher's sha256)."""
    return {f"{ds.name}/{name}": (key, digest) for key, ds in SOURCES.items() if isinstance(ds, Dataset)
            for name, digest in ds.sha256.items()}


@functools.cache
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_of(path)  # keyed by size and time too: a file replaced in place is read again


def changed_copy(path: Path, rel: str) -> str | None:
    """If `path`, found at `rel` under a data root, is a publisher's file with other contents: the
    `bench fetch` name of its data set; else None."""
    if rel not in _published():
        return None
    key, digest = _published()[rel]
    try:
        st = path.stat()
        got = _digest(path, st.st_size, st.st_mtime_ns)
    except OSError as err:
        raise DataError(f"{path}: cannot be read to check it against its publisher's sha256 ({err.strerror or err})")
    return None if got == digest else key


def _tell(changed: dict[str, list[Path]]) -> None:
    """One warning per data set and set of changed files, however many runs hash them."""
    for key, files in changed.items():
        if (key, tuple(files)) in _told:
            continue
        _told.add((key, tuple(files)))
        more = f" and {len(files) - 1} more of its files" if len(files) > 1 else ""
        log.warning("%s%s: not the publisher's (their sha256 differs): runs on them get settings hashes of their "
                    "own and never pool with runs on the publisher's copy; to use that, delete them and run "
                    "`bench fetch %s`", files[0], more, key)


_told: set[tuple[str, tuple[Path, ...]]] = set()


def data_files_under(folder: Path) -> list[Path]:
    """The data files in a folder, sorted: hidden entries (a download's temporary folder, .DS_Store,
    a cache) are not data, nor is the aligner's report."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.name != REPORT and not any(
        part.startswith(".") for part in f.relative_to(folder).parts))


def data_fingerprint(paths: list[Path], root: Path) -> str:
    """sha256 over (path relative to the data root, size) of every file under `paths`; a path
    that does not exist yet counts as missing (its download changes the fingerprint)."""
    h, changed = hashlib.sha256(), {}  # data set -> its changed files
    for path in sorted({Path(p) for p in paths}):
        files = data_files_under(path) if path.is_dir() else [path]
        for f in files:
            try:
                rel = f.relative_to(root).as_posix()
            except ValueError:  # outside the data root (a test set by path): by name and contents, not where it lies
                st = f.stat() if f.is_file() else None
                rel = f"{f.name} sha256:{_digest(f, st.st_size, st.st_mtime_ns)}" if st else f.as_posix()
            size = f.stat().st_size if f.is_file() else -1
            key = changed_copy(f, rel) if size >= 0 else None
            mark = ""
            if key is not None:  # the publisher's own copy hashes as by name and size alone
                changed.setdefault(key, []).append(f)
                mark = "\tchanged"
            h.update(f"{rel}\t{size}{mark}\n".encode())
    _tell(changed)
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
    if data.get("test_sets"):  # `--test-src /abs/path`: the file by name here, by content in the fingerprint
        data["test_sets"] = {name: {k: Path(v).name if isinstance(v, str) and Path(v).is_absolute() else v
                                    for k, v in spec.items()} if isinstance(spec, dict) else spec
                             for name, spec in data["test_sets"].items()}
    payload = {"module": module, "datamodule": datamodule, "model": model, "data": data,
               "trainer": _normalise_trainer(trainer), "data_files": fingerprint}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
