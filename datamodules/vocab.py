"""Word vocabularies for the generating tasks (translation, captioning), built from training text."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3 in every vocabulary


class WordVocab:
    """Specials first, then words by falling training frequency (ties alphabetical), so a given
    corpus and settings always give the same ids. Words below `min_count`, or past `max_size`
    entries, become <unk>."""

    def __init__(self, itos: list[str]) -> None:
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad, self.unk, self.bos, self.eos = (self.stoi[s] for s in SPECIALS)

    @classmethod
    def build(cls, sentences: Iterable[list[str]], max_size: int | None = None, min_count: int = 1) -> WordVocab:
        counts = Counter(w for sent in sentences for w in sent)
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(max_size - len(SPECIALS), 0)]
        return cls([*SPECIALS, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: list[str]) -> list[int]:
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
