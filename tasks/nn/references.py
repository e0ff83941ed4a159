"""Multi-reference test sets in sacrebleu's layout, and how an <unk> is scored. Torch-free: the
leaderboard's paired bootstrap reads it without loading a model."""

from __future__ import annotations

# An <unk> in a hypothesis is one word that matches nothing, as the MT literature scores it
# (multi-bleu.perl on tokenized text splits on spaces only). sacrebleu's 13a tokenizer would cut
# "<unk>" into "<", "unk", ">": three wrong words, which lengthen the output (a smaller brevity
# penalty) and lower every n-gram precision. So each <unk> is written as one token that 13a and
# Moses keep whole and no reference holds: SentencePiece's own rendering of an unknown piece.
UNK, UNSCORED = "<unk>", "\u2047"
# Moses' rules look at a word's neighbours: French "l'" joins the next word, in detokenizing, and
# is split from it, in tokenizing, only where that word starts with a letter; "<unk>" and "\u2047"
# do not. So an <unk> passes through Moses as this stand-in, an ordinary word no vocabulary holds.
UNK_SLOT = "Qunkq"


def unk_as_one_word(text: str) -> str:
    return text.replace(UNK, UNSCORED)


def reference_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Per-segment reference lists -> sacrebleu's reference streams; None where a segment has fewer
    references than the most (COCO images have 5 to 7 captions)."""
    n = max((len(r) for r in refs), default=0)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(n)]
