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


def batch_tokens(batch) -> int:
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
        n = batch_tokens(batch) * trainer.world_size
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
    """What a resumed run needs to draw the random numbers an uninterrupted run draws.

    Dropout masks: torch is reseeded at every training epoch's first batch from (seed, epoch, rank),
    so the masks of epoch e do not depend on what ran before it; ranks draw different masks.
    Data order: a shuffling DataLoader (speech, captioning on one process; no worker processes)
    draws each epoch's order from torch's global RNG: from the second epoch on, the epoch's iterator
    draws its base seed when it is made, after `on_train_epoch_start`, then the RandomSampler draws
    the order's seed at the first batch. A
    checkpoint keeps that RNG's state as it was when the checkpoint was written, at an epoch's end,
    and nothing draws from it before the uninterrupted run's next epoch. A resumed run puts it back
    as its first epoch starts; Lightning has made that epoch's iterator already (before the hook),
    so the base seed's draw is made again here, and the sampler then draws what it draws in the
    uninterrupted run. `tests/test_resume.py` checks the outcome on every task. (A sampler seeded
    from (seed, epoch) would not depend on this, but would change the order every finished speech
    and captioning run was trained in.)
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._resumed_rng: Tensor | None = None

    def state_dict(self) -> dict[str, Tensor]:
        return {"torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        self._resumed_rng = state_dict.get("torch_rng")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        rng, self._resumed_rng = self._resumed_rng, None
        # Only the first epoch of a run resumed from an epoch's end; a checkpoint from elsewhere (a
        # restart mid-epoch, which skips this hook) leaves the order to chance rather than misplace it.
        if rng is not None and trainer.fit_loop.is_resuming:
            torch.set_rng_state(rng)
            torch.empty((), dtype=torch.int64).random_()  # the uninterrupted run's iterator's base seed

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._resumed_rng = None  # loaded by a test from a checkpoint: nothing to resume

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx != 0:
            return
        state = np.random.SeedSequence([self.seed, trainer.current_epoch, trainer.global_rank]).generate_state(2)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
