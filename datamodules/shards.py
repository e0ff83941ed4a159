"""Evaluation under DDP: each rank scores one contiguous block of the items, every item exactly once.

    items     0 1 2 3 4 5 6        (7 items, 2 ranks)
    rank 0    0 1 2                 rank r takes [r n / W, (r + 1) n / W)
    rank 1          3 4 5 6

Lightning's own DistributedSampler pads each rank's share to the same length by repeating items, so
a metric over the gathered outputs counts some items twice. Blocks gathered in rank order are the
one-process order, so the outputs files and samples match a single-process evaluation line by line.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence, Sized

from torch.utils.data import DistributedSampler

from tasks.nn.errors import ConfigError


def block(n: int, rank: int, world: int, what: str = "the evaluation set") -> range:
    """Rank `rank`'s share of `n` items. Every rank needs at least one: a rank with nothing to score
    would skip the epoch-end metric sync the others wait in."""
    if n < world:
        raise ConfigError(f"{what} has {n} items, fewer than the {world} ranks that score it: "
                          f"evaluate on at most {n} devices")
    return range(rank * n // world, (rank + 1) * n // world)


def balanced_block(costs: Sequence[float], rank: int, world: int, what: str = "the evaluation set") -> range:
    """Like `block`, with the cuts placed so that each rank gets about an equal share of the total
    cost: translation's batches come sorted by sentence length, and equal counts would leave the
    last rank every long sentence to decode."""
    n = len(costs)
    block(n, rank, world, what)  # at least one item a rank
    ends, total, cuts = list(itertools.accumulate(costs)), sum(costs), [0]
    for r in range(1, world):
        at = bisect.bisect_left(ends, total * r / world) + 1  # the first cut with r / world of the cost before it
        cuts.append(min(max(at, cuts[-1] + 1), n - (world - r)))  # every rank keeps at least one item
    cuts.append(n)
    return range(cuts[rank], cuts[rank + 1])


class EvalBlocks(DistributedSampler):
    """A rank's contiguous block, unshuffled. A DistributedSampler subclass, so that Lightning keeps
    it instead of substituting its padding one."""

    def __init__(self, dataset: Sized, rank: int, world: int, what: str = "the evaluation set") -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.items = block(len(dataset), rank, world, what)
        self.num_samples, self.total_size = len(self.items), len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
