"""Weights & Biases through Lightning's `WandbLogger`: online with an account, offline without one.

An offline run lives in `<run dir>/wandb/offline-run-*/run-*.wandb` and uploads later with
`wandb sync <that folder>`. `offline_run_keys` reads such a file back, so a user (and the tests) can
see what landed before syncing.
"""

from __future__ import annotations

import logging
import netrc
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
PROJECT = "rnnreg-bench"
_told_offline = False


def resolve_mode(mode: str) -> str:
    """auto -> online when W&B has credentials (WANDB_API_KEY or `wandb login`'s netrc entry).
    W&B's own switch wins: WANDB_MODE=disabled turns W&B off whatever the command says, and
    WANDB_MODE=offline (or dryrun) keeps an `auto` run offline."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return "disabled"
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
        return "offline"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        if netrc.netrc().authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def make_logger(run_dir: Path, *, name: str, group: str, tags: list[str], config: dict[str, Any],
                project: str = PROJECT, mode: str = "auto", entity: str | None = None):
    """Lightning's WandbLogger for one run, or None when WANDB_MODE=disabled. `entity`: the W&B
    user or team (default: WANDB_ENTITY, else the account's default)."""
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_mode(mode)
    if mode == "disabled":
        log.info("W&B: disabled by WANDB_MODE=disabled; logging to CSV only")
        return None
    if mode == "offline":
        os.environ.setdefault("WANDB_SILENT", "true")  # its banner would repeat per run; we say it once
        say_offline(mode, Path(run_dir).parent)
    return WandbLogger(project=project, name=name, group=group, tags=tags, job_type="train", config=config,
                       save_dir=str(run_dir), offline=mode == "offline", entity=entity)


def say_offline(mode: str, runs_dir: Path | str = "runs") -> None:
    """Once per process, where W&B logs offline: what that means and how to upload later. A
    parallel sweep says it for its runs, whose own output goes to their log files."""
    global _told_offline
    if resolve_mode(mode) == "offline" and not _told_offline:
        log.warning("W&B: no account (WANDB_API_KEY or `wandb login`), logging offline; upload later with "
                    "`wandb sync %s/*/wandb/offline-run-*`", runs_dir)
        _told_offline = True


def is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def finish(loggers: list, summary: dict[str, Any] | None = None, failed: bool = False) -> None:
    """Write the final summary and close the W&B run, so that the next run of a sweep in this
    process starts its own (WandbLogger would otherwise attach to the open one)."""
    for logger in loggers:
        if not is_wandb(logger) or logger._experiment is None:
            continue
        try:
            if summary:
                logger.experiment.summary.update(summary)
            logger.experiment.finish(exit_code=1 if failed else 0)
        except Exception as err:  # W&B trouble must not cost a finished run its results row
            log.warning("W&B: could not finish the run: %s", err)


LEADERBOARD_RUN = "leaderboard"  # the run's name and its table's key (benchmark/wandb_dashboard.py shows it)


def log_leaderboard(csv_path: Path, save_dir: Path, project: str = PROJECT, mode: str = "auto",
                    entity: str | None = None) -> None:
    """The leaderboard as a W&B table and a versioned artifact, in a run of its own."""
    import csv

    import wandb

    mode = resolve_mode(mode)
    if mode == "disabled":
        log.info("W&B: disabled by WANDB_MODE=disabled; the leaderboard is not logged there")
        return
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, entity=entity, job_type="leaderboard", name=LEADERBOARD_RUN,
                     group=LEADERBOARD_RUN, dir=str(save_dir), mode=mode)
    try:
        table = wandb.Table(columns=rows[0], data=rows[1:])
        artifact = wandb.Artifact("leaderboard", type="results", description="bench leaderboard: runs.csv "
                                  "aggregated per task x preset x dropout, beside the paper's numbers")
        artifact.add(table, "leaderboard")
        artifact.add_file(str(csv_path))
        run.log({LEADERBOARD_RUN: table})
        run.log_artifact(artifact)
    finally:
        run.finish()
    log.info("W&B: leaderboard logged as a table and artifact (%s)", mode)


# -- reading an offline run back -----------------------------------------------------------------------
# A .wandb file is a LevelDB-style log: a 7-byte header (":W&B", 0xBEE1, version), then 32 KiB
# blocks of chunks [crc32 (4) | length (2, LE) | type (1)] + payload; types FULL=1, FIRST=2,
# MIDDLE=3, LAST=4 reassemble into protobuf `Record`s.
_BLOCK, _CHUNK_HEADER = 32 * 1024, 7


def _records(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        pos += _CHUNK_HEADER
        if pos + length > len(data):  # a chunk still being written
            return
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            yield parts
            parts = b""


def offline_run_keys(run_file: Path, wait_s: float = 0.0) -> dict[str, set[str]]:
    """{"config": keys, "history": keys, "summary": keys, "artifacts": names} of a .wandb file.

    wandb-core writes the file from its own process and may still be flushing it after `finish()`
    has returned (seen as a file holding only its 7-byte header): with `wait_s`, re-read until the
    run's exit record is there or the time is up."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        records = []
        for raw in _records(run_file):
            record = pb.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() >= deadline:
            if wait_s:
                log.warning("%s: no exit record after %.0f s (a crashed run?): reading what is there", run_file, wait_s)
            break
        time.sleep(0.2)
    out: dict[str, set[str]] = {"config": set(), "history": set(), "summary": set(), "artifacts": set()}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "config":
            out["config"] |= {u.key or "/".join(u.nested_key) for u in record.config.update}
        elif kind == "history":
            out["history"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
        elif kind == "summary":
            out["summary"] |= {u.key or "/".join(u.nested_key) for u in record.summary.update}
        elif kind == "artifact":
            out["artifacts"].add(record.artifact.name)
        elif kind == "run":
            out["config"] |= {u.key or "/".join(u.nested_key) for u in record.run.config.update}
    return out
