"""What the runner asks of every task's DataModule beyond Lightning's own hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


class TaskDataModule(L.LightningDataModule):
    def data_files(self) -> list[Path]:
        """Every file or folder it reads: the settings hash covers their names and sizes."""
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        """What the LightningModule's constructor needs from the data (vocabulary, feature size);
        called after setup("fit")."""
        return {}

    def rank_world(self) -> tuple[int, int]:
        """(this process's rank, the world size) under the Trainer; (0, 1) outside one. For the
        DataModules that lay out their own per-rank batches (`Can.OWN_RANK_LAYOUT`)."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
