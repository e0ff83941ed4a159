"""The one word vocabulary: specials first, then words by falling training frequency.

Translation and captioning reserve <pad> <unk> <bos> <eos> as ids 0..3. PTB reserves none: its
files already hold <unk> (Mikolov's preprocessing) and its reader appends <eos>, so both are
ordinary words there, ranked by frequency like the rest.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

from tasks.nn.errors import DataError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3 in the generating tasks' vocabularies


class WordVocab:
    """Ties in frequency go alphabetically, so a given corpus and settings always give the same ids.
    Words below `min_count`, or past `max_size` entries, become <unk>."""

    def __init__(self, itos: list[str], specials: tuple[str, ...] = SPECIALS) -> None:
        if tuple(itos[: len(specials)]) != tuple(specials):
            raise ValueError(f"a vocabulary must start with {specials}")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad, self.unk, self.bos, self.eos = (self.stoi.get(s) for s in SPECIALS)  # None where absent

    @classmethod
    def build(cls, sentences: Iterable[list[str]], max_size: int | None = None, min_count: int = 1,
              specials: tuple[str, ...] = SPECIALS) -> WordVocab:
        counts = Counter(w for sent in sentences for w in sent)
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in specials),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(max_size - len(specials), 0)]
        return cls([*specials, *words], specials)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: list[str], source: Path | str = "") -> list[int]:
        """Words -> ids, unknown words -> <unk>; without an <unk> an unknown word is an error in `source`."""
        if self.unk is None:
            unknown = next((w for w in words if w not in self.stoi), None)
            if unknown is not None:
                raise DataError(f"{source}: word {unknown!r} is not in the training vocabulary and there is no {UNK}")
        return [self.stoi.get(w, self.unk) for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, stopping at <eos> and leaving out <pad>/<bos>."""
        out = []
        for i in ids:
            if i == self.eos:
                break
            if i not in (self.pad, self.bos):
                out.append(self.itos[i])
        return out
