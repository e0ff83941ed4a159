"""Bad records in large corpora: skipped, counted and listed, or fatal.

One malformed line in a 40-million-line corpus, or one unreadable file among 100,000 images,
should cost a line, not a run. A corpus with more records than its preset's
`data.bad_records.skip_above` skips them (a line that is not UTF-8 or lacks its tab, an image that
does not decode or is missing, audio that does not read), and the run lists them in its folder
(`skipped_records.txt`) and counts them in its results row; more than `max_fraction` of the
corpus bad stops the run, since that is a broken file, not a stray line (splits cut from one file
share its rule). Smaller corpora, the separate reference and test sets among them, stay strict: the first bad record stops the run, naming its
file and line. Without `bad_records` in the preset every corpus is strict.

Whether a run skipped is not part of its settings hash (benchmark/identity.py): on the same files a
strict run either fails or reads what a tolerant one reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tasks.nn.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadRecordPolicy:
    skip_above: int | None = None  # corpora with more records than this skip bad ones; None: always strict
    max_fraction: float = 0.001  # ... and stop when more than this fraction of them is bad

    @classmethod
    def of(cls, spec: dict[str, Any] | None) -> BadRecordPolicy:
        spec = dict(spec or {})
        unknown = set(spec) - {"skip_above", "max_fraction"}
        if unknown:
            raise DataError(f"data.bad_records: unknown key(s) {sorted(unknown)}; known: skip_above, max_fraction")
        skip, fraction = spec.get("skip_above"), spec.get("max_fraction", cls.max_fraction)
        if skip is not None and (isinstance(skip, bool) or not isinstance(skip, int)):
            raise DataError(f"data.bad_records.skip_above must be a whole number (write 100000, not 1e5), got {skip!r}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise DataError(f"data.bad_records.max_fraction must be a number, got {fraction!r}")
        policy = cls(**spec)
        if not 0 <= policy.max_fraction < 1:
            raise DataError(f"data.bad_records.max_fraction must be in [0, 1), got {policy.max_fraction}")
        return policy


STRICT = BadRecordPolicy()


class BadRecords:
    """The bad records of one corpus of `total` records, under a policy."""

    def __init__(self, source: str, total: int, policy: BadRecordPolicy = STRICT) -> None:
        self.source, self.total, self.policy = source, total, policy
        self.tolerant = policy.skip_above is not None and total > policy.skip_above
        self.found: list[str] = []

    def add(self, err: DataError) -> None:
        """A bad record: raised at once in a strict corpus, noted in a tolerant one, which stops as
        soon as the count passes `max_fraction` of its total (known before reading: a broken 40-million-
        line file fails at its first few hundred bad lines, not after the whole file)."""
        if not self.tolerant:
            raise err
        self.found.append(str(err))
        if len(self.found) > self.policy.max_fraction * self.total:
            raise DataError(f"{self.source}: {len(self.found)} of {self.total} records bad, over the "
                            f"{self.policy.max_fraction:.2%} data.bad_records.max_fraction allows (reading stopped "
                            f"at that one); the first: {self.found[0]}")

    def check(self) -> list[str]:
        """After the whole corpus was read: its bad records, logged (`add` stopped on too many)."""
        if self.found:
            log.warning("%s: skipped %d bad record(s) of %d (the run folder's skipped_records.txt lists them); "
                        "the first: %s", self.source, len(self.found), self.total, self.found[0])
        return list(self.found)
