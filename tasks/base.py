"""What the runner asks of every task's LightningModule beyond Lightning's own hooks."""

from __future__ import annotations

import lightning as L
from torch import Tensor


class TaskModule(L.LightningModule):
    output_prefix = ""
    """Set by the runner while it tests the best checkpoint ("best_"): the prefix of the test
    outputs a task writes, as of its metric names."""

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
