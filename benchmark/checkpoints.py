"""Checkpoint writing that never leaves a half-written file, and reading with a clear error.

Every checkpoint is read with torch's `weights_only` unpickler: tensors and plain data only. A
checkpoint that needs more (a shared run folder whose pickle would run code) is refused, never
executed."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tasks.nn.errors import BenchError

BEST_NAME = re.compile(r"epoch(\d+)(?:-v(\d+))?$")  # best-epoch007, best-epoch007-v1 (a later save of that name)


def best_epoch_and_version(path: Path | str) -> tuple[int, int] | None:
    """best-epoch007-v1.ckpt -> (7, 1): the 0-based epoch in the name, and Lightning's `-vN`, which
    marks a later save beside a file of the same name; None for another name."""
    match = BEST_NAME.search(Path(path).stem)
    return (int(match[1]), int(match[2] or 0)) if match else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file beside the target, fsync, then rename over it.

    A run killed while saving keeps the previous checkpoint intact instead of a truncated one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class FollowMovedRunFolder(L.Callback):
    """Lets a resumed run's ModelCheckpoints keep what they knew after its folder was moved.

    ModelCheckpoint records its folder as an absolute path. Loading a checkpoint saved in another
    folder, it keeps only `best_model_path`, still pointing at the old place, and forgets the best
    score and the files it kept: the first epoch after the resume then became the best whatever its
    score, and the old best file stayed beside the new one. Lightning calls every callback's
    `on_load_checkpoint` before any callback's `load_state_dict`, so each checkpoint callback's
    state is moved here first: the same file names, in the callback's own folder now.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        for cb in trainer.checkpoint_callbacks:
            state = states.get(cb.state_key)
            if isinstance(cb, ModelCheckpoint) and cb.dirpath and state and state.get("dirpath") not in (None, cb.dirpath):
                states[cb.state_key] = moved_checkpoint_state(state, cb.dirpath)


def moved_checkpoint_state(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """A ModelCheckpoint's saved state with the files it names in its old folder named in `dirpath`."""
    old = state["dirpath"]

    def move(path: Any) -> Any:
        if isinstance(path, str) and path and os.path.dirname(path) == old:
            return os.path.join(dirpath, os.path.basename(path))
        return path

    moved = {k: move(v) for k, v in state.items() if k.endswith("_path")}  # best_, kth_best_, last_model_path
    if "best_k_models" in state:
        moved["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
    return {**state, **moved, "dirpath": dirpath}


def _looks_saved_by_torch(path: Path) -> bool:
    """torch.save's zip format, or its older pickle one (protocol 2 and up start with PROTO, 0x80)."""
    with open(path, "rb") as f:
        return zipfile.is_zipfile(f) or f.seek(0) == 0 and f.read(1) == b"\x80"


def check_checkpoint(path: Path, purpose: str = "resume") -> dict[str, Any]:
    """Fail early, naming the file, if a checkpoint to resume from (or to load) is missing or unreadable."""
    if not path.is_file():
        if purpose == "resume":
            raise BenchError(f"{path}: no checkpoint to resume from; drop --resume to start a new run")
        raise BenchError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _looks_saved_by_torch(path):  # torch says the same of bytes that are no checkpoint at all
            raise BenchError(f"{path}: not a checkpoint (neither torch's zip format nor a pickle: an LFS pointer, "
                             f"a web page?); copy it again from where it was made") from err
        raise BenchError(f"{path}: holds Python objects beyond tensors and plain data, which loading would "
                         f"execute; refused. Use checkpoints written by `bench run`") from err
    except Exception as err:  # torch raises many types for a damaged zip/pickle
        raise BenchError(
            f"{path}: corrupt or unreadable checkpoint ({type(err).__name__}: {err}); "
            + ("delete it to resume from an older one in that folder, or start a new run" if purpose == "resume"
               else "copy it again from where it was made")
        ) from err
    if not isinstance(ckpt, dict):
        raise BenchError(f"{path}: not a Lightning training checkpoint (it holds a {type(ckpt).__name__})")
    missing = {"state_dict", "loops", "epoch"} - set(ckpt)
    if missing:
        raise BenchError(f"{path}: not a Lightning training checkpoint (no {sorted(missing)})")
    return ckpt
