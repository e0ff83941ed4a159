"""Multi-reference test sets in sacrebleu's layout. Torch-free: the leaderboard's paired bootstrap
reads it without loading a model."""

from __future__ import annotations


def reference_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Per-segment reference lists -> sacrebleu's reference streams; None where a segment has fewer
    references than the most (COCO images have 5 to 7 captions)."""
    n = max((len(r) for r in refs), default=0)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(n)]
