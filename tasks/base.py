"""What the runner asks of every task's LightningModule beyond Lightning's own hooks."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import Metric

RUN_INFO_KEY = "rnnreg_run"  # the checkpoint entry holding `run_info`


class TaskModule(L.LightningModule):
    output_prefix = ""
    """Set by the runner while it tests the best checkpoint ("best_"): the prefix of the test
    outputs a task writes, as of its metric names."""
    run_info: dict[str, Any] | None = None
    """Which run trained it (task, preset, dropout, seed, settings hash, commit), set by the runner
    and written into every checkpoint, so a `.ckpt` moved anywhere still says what it is."""

    # Sums of losses and counts stay float32 whatever the weights' precision: `--precision bf16-true`
    # casts the whole module, torchmetrics' states too, and a bf16 sum of thousands of windows (or
    # frame counts past 256) is off by a factor. Each stage's first hook puts them back.
    def _metrics_in_float32(self) -> None:
        for m in self.modules():
            if isinstance(m, Metric):
                m.set_dtype(torch.float32)

    def on_fit_start(self) -> None:
        self._metrics_in_float32()

    def on_validation_start(self) -> None:
        self._metrics_in_float32()

    def on_test_start(self) -> None:
        self._metrics_in_float32()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_info:
            checkpoint[RUN_INFO_KEY] = dict(self.run_info)

    def use_test_streams(self, names: list[str]) -> None:
        """The DataModule's test streams (its `stream_names()`), in test_dataloader() order, when
        they are not the ones the model was trained beside (`bench eval` on other test sets)."""
        self.test_streams = tuple(names)

    def row_info(self) -> dict[str, str]:
        """Extra results-row columns (how BLEU was computed, which image encoder)."""
        return {}

    def log_loss(self, loss: Tensor, per_item: Tensor, **kwargs) -> None:
        """One training step's loss as the optimizer sees it (`train_loss`), its mean per predicted
        word or frame (`train_nll`), and their ratio (`loss_scale`: PTB's 35 steps, a translation
        sentence's words under the paper's SGD, 1 for a mean), so that steps of tasks and presets
        that scale their loss differently read alike (scripts/dry_run_paper.py)."""
        self.log("train_loss", loss.detach(), prog_bar=True, **kwargs)
        self.log("train_nll", per_item.detach(), **kwargs)
        self.log("loss_scale", (loss / per_item).detach(), **kwargs)
