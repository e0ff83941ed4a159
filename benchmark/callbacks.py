"""Small Lightning callbacks the runner attaches to every task."""

from __future__ import annotations

import time
from collections import deque

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import grad_norm
from torch import Tensor

from tasks.nn.cadence import log_due


def _tokens(batch) -> int:
    """Target tokens in a batch: the last tensor of a tuple batch (LM windows: (x, y)), or a
    `num_tokens` entry of a dict batch (padded tasks count real tokens, not padding)."""
    if isinstance(batch, dict):
        return int(batch["num_tokens"])
    target = batch[-1] if isinstance(batch, (tuple, list)) else batch
    return target.numel() if isinstance(target, Tensor) else 0


class TokenThroughput(L.Callback):
    """Training tokens per second (all ranks), on the progress bar and in the results row.

    Only the training batches are timed (forward, backward, optimizer step), not validation.
    """

    def __init__(self, window: int = 20) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._t0
        n = _tokens(batch) * trainer.world_size
        self.tokens += n
        self.seconds += dt
        self._recent.append((n, dt))
        if log_due(trainer, batch_idx):
            rate = sum(k for k, _ in self._recent) / max(sum(t for _, t in self._recent), 1e-9)
            pl_module.log("tok/s", rate, prog_bar=True)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.tokens, self.seconds = state["tokens"], state["seconds"]


class GradNorm(L.Callback):
    """The global L2 norm of the gradients before clipping, on the logging cadence: how often the
    clip (5 in the paper) bites, and whether training is blowing up."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not log_due(trainer, trainer.fit_loop.epoch_loop.batch_idx):
            return
        norms = grad_norm(pl_module, norm_type=2)  # Lightning's: every parameter's norm and the total
        if norms:
            pl_module.log("grad_norm", norms["grad_2.0_norm_total"])


class EpochSeed(L.Callback):
    """Reseed torch at the start of every training epoch from (seed, epoch, rank).

    The dropout masks of epoch e then do not depend on what ran before it, so a run resumed from an
    epoch checkpoint draws exactly the masks an uninterrupted run draws; ranks draw different masks.
    It fires at the epoch's first batch, after the DataLoader iterator has drawn its own base seed
    from the global RNG (which happens at a different moment in a resumed run).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx != 0:
            return
        state = np.random.SeedSequence([self.seed, trainer.current_epoch, trainer.global_rank]).generate_state(2)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
