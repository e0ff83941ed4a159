"""What the runner asks of every task's DataModule beyond Lightning's own hooks."""

from __future__ import annotations

import inspect
from collections.abc import Sized
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.shards import EvalBlocks
from tasks.nn.errors import DataError


def plain(value: Any) -> Any:
    """A setting as plain data that torch's weights_only loader reads back: paths (and anything
    else unknown to it) as text, sets as sorted lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def same_value(a: Any, b: Any) -> bool:
    """Learned state compared: float statistics to float tolerance (a feature cache recomputed on
    another machine may differ in the last bits), the rest exactly."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6))
    return a == b


PLACE_ARGS = ("data_root", "cache_dir", "test_only")  # where data sits and what to read now: not settings


class TaskDataModule(L.LightningDataModule):
    """A checkpoint carries what the data taught the model, so that evaluation and inference need
    only the `.ckpt`: Lightning stores the DataModule's `state_dict()` under the class's name, its
    settings (constructor arguments) and what setup() learned (vocabularies, normalisation
    statistics). `load_state_dict` gives the learned part back before `setup`, which then uses it
    instead of learning it again; with `test_only` it reads the `test_sets` alone."""

    eval_batch_key: str | None = "eval_batch_size"
    """The constructor argument `bench eval|ensemble --batch-size` sets; None: the evaluation
    layout is part of the metric, so no other batch is taken."""

    def __init__(self) -> None:
        super().__init__()
        # Bad records setup() skipped in a large corpus (datamodules/bad_records.py): the runner
        # lists them in the run folder and counts them in the results row.
        self.skipped: list[str] = []
        self.restored: dict[str, Any] | None = None  # a checkpoint's state_dict(), for setup() to use

    def keep_settings(self) -> None:
        """Record the calling constructor's arguments as the data settings a checkpoint carries: the
        folders they sit in are the machine's, not the model's, so `data_root` and `cache_dir` stay
        out. (Not `save_hyperparameters`: Lightning would merge them with the model's for the loggers,
        and a `max_len` of each means different things.)"""
        frame = inspect.getargvalues(inspect.currentframe().f_back)
        self.settings = {k: plain(frame.locals[k]) for k in frame.args if k not in ("self", *PLACE_ARGS)}

    def learned(self) -> dict[str, Any]:
        """What setup() learned from the training data that a model needs to read new input; {}
        before setup()."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"settings": dict(getattr(self, "settings", {})), **self.learned()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before setup(): use these instead of learning them. After (Lightning restores a resumed
        run's DataModule once set up): they must be what setup() learned, or the data changed under
        the run."""
        current, state = self.learned(), {k: v for k, v in state.items() if k != "settings"}
        if current:
            for key, value in state.items():
                if key in current and not same_value(value, current[key]):
                    raise DataError(f"the data under this run changed since its checkpoint was written ({key} differs); "
                                    f"restore the data or start a new run")
            return
        self.restored = dict(state)

    def data_files(self) -> list[Path]:
        """Every file or folder it reads: the settings hash covers their names and sizes."""
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        """What the LightningModule's constructor needs from the data (vocabulary, feature size);
        called after setup("fit")."""
        return {}

    def stream_names(self) -> list[str]:
        """The test streams, in test_dataloader() order: the names their metrics start with."""
        return ["test"]

    def rank_world(self) -> tuple[int, int]:
        """(this process's rank, the world size) under the Trainer; (0, 1) outside one. For the
        evaluation samplers, and the DataModules that lay out their own per-rank training batches
        (`Can.OWN_RANK_LAYOUT`)."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def eval_sampler(self, dataset: Sized, what: str) -> EvalBlocks | None:
        """Under DDP, this rank's block of an evaluation set (each item scored once, see shards.py);
        None on one process."""
        rank, world = self.rank_world()
        return EvalBlocks(dataset, rank, world, what) if world > 1 else None


class StreamsDataModule(TaskDataModule):
    """Splits as named streams: "train", "valid", and the test streams: the held-out "test" split,
    then "test_<name>" for each extra test set, one DataLoader each, in that order."""

    test_sets: dict[str, Any]  # name -> where an extra test set lives
    test_only: bool = False  # the test_sets alone, read with what a checkpoint's state_dict() holds

    def stream_names(self) -> list[str]:
        return ["test"] * (not self.test_only) + [f"test_{name}" for name in self.test_sets]

    def loader(self, stream: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("valid", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self.loader(name, shuffle=False) for name in self.stream_names()]
