"""Phone sets and the foldings used to score them, in one table.

TIMIT: 61 phones as transcribed (the `.phn` files). Trained on all 61 (Graves & Schmidhuber 2005 do
the same for framewise classification), scored after folding both prediction and reference into
the 39 classes of Lee & Hon (1989), "Speaker-independent phone recognition using hidden Markov
models", IEEE Trans. ASSP 37(11), Table I; the column for the 48-phone training set is theirs too,
as laid out in Kaldi's `egs/timit/s5/conf/phones.60-48-39.map`. The glottal stop `q` has no class
in either set: its frames are trained on but left out of the 39-class score (counted and logged).

AN4: the 33 ARPAbet phones of CMU's dictionary (`etc/an4.phone`) plus `SIL`, scored as they are.
cmu: all 39 ARPAbet phones of CMUdict plus `SIL`, what `bench align` writes for any English corpus.

Forced-alignment labels (CMU phones) against TIMIT's hand labels: both fold into Lee & Hon's 39
classes (`CMU_TO_TIMIT39`). CMU's phones have no stop closures, so a closure frame (bcl ... kcl) is
compared as the stop it closes ("closures merged").
"""

from __future__ import annotations

from dataclasses import dataclass

# 61-phone TIMIT symbol -> (Lee & Hon 48-phone training set, 39-class scoring set); None: no class.
TIMIT_FOLDING: dict[str, tuple[str | None, str | None]] = {
    "aa": ("aa", "aa"), "ae": ("ae", "ae"), "ah": ("ah", "ah"), "ao": ("ao", "aa"), "aw": ("aw", "aw"),
    "ax": ("ax", "ah"), "ax-h": ("ax", "ah"), "axr": ("er", "er"), "ay": ("ay", "ay"), "b": ("b", "b"),
    "bcl": ("vcl", "sil"), "ch": ("ch", "ch"), "d": ("d", "d"), "dcl": ("vcl", "sil"), "dh": ("dh", "dh"),
    "dx": ("dx", "dx"), "eh": ("eh", "eh"), "el": ("el", "l"), "em": ("m", "m"), "en": ("en", "n"),
    "eng": ("ng", "ng"), "epi": ("epi", "sil"), "er": ("er", "er"), "ey": ("ey", "ey"), "f": ("f", "f"),
    "g": ("g", "g"), "gcl": ("vcl", "sil"), "h#": ("sil", "sil"), "hh": ("hh", "hh"), "hv": ("hh", "hh"),
    "ih": ("ih", "ih"), "ix": ("ix", "ih"), "iy": ("iy", "iy"), "jh": ("jh", "jh"), "k": ("k", "k"),
    "kcl": ("cl", "sil"), "l": ("l", "l"), "m": ("m", "m"), "n": ("n", "n"), "ng": ("ng", "ng"),
    "nx": ("n", "n"), "ow": ("ow", "ow"), "oy": ("oy", "oy"), "p": ("p", "p"), "pau": ("sil", "sil"),
    "pcl": ("cl", "sil"), "q": (None, None), "r": ("r", "r"), "s": ("s", "s"), "sh": ("sh", "sh"),
    "t": ("t", "t"), "tcl": ("cl", "sil"), "th": ("th", "th"), "uh": ("uh", "uh"), "uw": ("uw", "uw"),
    "ux": ("uw", "uw"), "v": ("v", "v"), "w": ("w", "w"), "y": ("y", "y"), "z": ("z", "z"),
    "zh": ("zh", "sh"),
}

CMU_PHONES = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH SIL T TH UH UW "
              "V W Y Z ZH").split()
CMU_TO_TIMIT39 = {p: TIMIT_FOLDING[p.lower()][1] if p.lower() in TIMIT_FOLDING else None for p in CMU_PHONES}
CMU_TO_TIMIT39["SIL"] = "sil"
CLOSURE_OF = {"bcl": "b", "dcl": "d", "gcl": "g", "pcl": "p", "tcl": "t", "kcl": "k"}

AN4_PHONES = ("AA AE AH AO AW AY B CH D EH ER EY F G HH IH IY JH K L M N OW P R S SIL T TH UW V W Y Z").split()


@dataclass(frozen=True)
class PhoneSet:
    """Transcribed symbol -> training label -> scoring class (None: no class, frame left out)."""

    name: str
    raw: dict[str, str | None]  # every symbol a `.phn` file may hold -> training label
    train: tuple[str, ...]
    score: tuple[str, ...]
    fold: dict[str, str | None]  # training label -> scoring class

    def train_index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.train)}

    def fold_ids(self) -> list[int]:
        """Training-label id -> scoring-class id, -1 where a label is not scored."""
        score = {p: i for i, p in enumerate(self.score)}
        return [score[self.fold[p]] if self.fold[p] is not None else -1 for p in self.train]


PHONE_SETS = {
    "timit61": PhoneSet(
        "timit61",
        {p: p for p in TIMIT_FOLDING},
        tuple(sorted(TIMIT_FOLDING)),
        tuple(sorted({s for _, s in TIMIT_FOLDING.values() if s})),
        {p: s for p, (_, s) in TIMIT_FOLDING.items()},
    ),
    "timit48": PhoneSet(
        "timit48",
        {p: t for p, (t, _) in TIMIT_FOLDING.items()},
        tuple(sorted({t for t, _ in TIMIT_FOLDING.values() if t})),
        tuple(sorted({s for _, s in TIMIT_FOLDING.values() if s})),
        {t: s for t, s in TIMIT_FOLDING.values() if t},
    ),
    "cmu": PhoneSet("cmu", {p: p for p in CMU_PHONES}, tuple(CMU_PHONES), tuple(CMU_PHONES),
                    {p: p for p in CMU_PHONES}),
    "an4": PhoneSet("an4", {p: p for p in AN4_PHONES}, tuple(AN4_PHONES), tuple(AN4_PHONES), {p: p for p in AN4_PHONES}),
}
