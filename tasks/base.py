"""What the runner asks of every task's LightningModule beyond Lightning's own hooks."""

from __future__ import annotations

import lightning as L


class TaskModule(L.LightningModule):
    output_prefix = ""
    """Set by the runner while it tests the best checkpoint ("best_"): the prefix of the test
    outputs a task writes, as of its metric names."""

    def row_info(self) -> dict[str, str]:
        """Extra results-row columns (how BLEU was computed, which image encoder)."""
        return {}
