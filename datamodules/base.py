"""What the runner asks of every task's DataModule beyond Lightning's own hooks."""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from datamodules.shards import EvalBlocks


class TaskDataModule(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        # Bad records setup() skipped in a large corpus (datamodules/bad_records.py): the runner
        # lists them in the run folder and counts them in the results row.
        self.skipped: list[str] = []

    def data_files(self) -> list[Path]:
        """Every file or folder it reads: the settings hash covers their names and sizes."""
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        """What the LightningModule's constructor needs from the data (vocabulary, feature size);
        called after setup("fit")."""
        return {}

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

    def stream_names(self) -> list[str]:
        return ["test", *(f"test_{name}" for name in self.test_sets)]

    def loader(self, stream: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("valid", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self.loader(name, shuffle=False) for name in self.stream_names()]
