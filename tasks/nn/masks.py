"""Dropout masks on CPU, drawn sooner and the same masks bit for bit.

On CPU, torch's dropout (ATen's `_dropout_impl`, behind nn.Dropout and F.dropout) fills its mask
with `bernoulli_(1 - p)`: one element at a time, each a float64 uniform from the generator compared
with 1 - p. `uniform_()` on a float64 tensor laid out alike draws the same uniforms in the same
order in a vectorised loop, so `uniform < 1 - p` is the same mask, and it leaves the generator
where `bernoulli_` would: every seed gives the numbers it gave before, sooner (a captioning/quick
step 1.06x sooner, results/archive/profile-task-steps-xeon-2026-12-04/).

The equivalence is checked once per process against `bernoulli_` itself; where they differ (a torch
build whose `bernoulli_` draws otherwise), and off the CPU (a GPU's fused dropout has a generator of
its own), torch's own dropout is used.

    dropout(x, 0.5, training)            # F.dropout(x, 0.5, training), the same numbers
    keep_mask((B, H), 0.5, like=x)       # x.new_empty((B, H)).bernoulli_(0.5).div_(0.5)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@functools.cache
def _uniform_is_bernoulli() -> bool:
    """Whether `uniform_() < keep` draws what `bernoulli_(keep)` draws, and leaves the generator alike."""
    first, second = torch.Generator().manual_seed(20141004), torch.Generator().manual_seed(20141004)
    shape = (4, 1000)  # more than one of ATen's parallel grains, were a build to split the work
    mask = torch.empty(shape).bernoulli_(0.7, generator=first)
    same = torch.equal(mask, (torch.empty(shape, dtype=torch.float64).uniform_(generator=second) < 0.7).float())
    return same and torch.equal(torch.rand(8, generator=first), torch.rand(8, generator=second))


def _vectorised(t: Tensor) -> bool:
    return t.device.type == "cpu" and _uniform_is_bernoulli()


def keep_mask(shape: tuple[int, ...], keep: float, like: Tensor) -> Tensor:
    """An inverted-dropout mask in `like`'s dtype and device: 1/keep with probability `keep`, else 0."""
    if not _vectorised(like):
        return like.new_empty(shape).bernoulli_(keep).div_(keep)
    return _scaled(like.new_empty(shape, dtype=torch.float64), keep, like.dtype)


def _scaled(uniform: Tensor, keep: float, dtype: torch.dtype) -> Tensor:
    """Fill `uniform` (float64) in its memory order; 1/keep where a draw is below keep, else 0."""
    return (uniform.uniform_() < keep).to(dtype).div_(keep)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training), its mask drawn as above."""
    if not training or not 0.0 < p < 1.0 or x.numel() == 0 or not _vectorised(x):
        return F.dropout(x, p, training)  # no mask to draw (nor any draw), or not the CPU's draw
    # In x's memory order, as ATen's empty_like(x) is filled: a transposed x gets the mask it got before.
    return x * _scaled(torch.empty_like(x, dtype=torch.float64), 1.0 - p, x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout (same repr, no state), its mask drawn as above."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
