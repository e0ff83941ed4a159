"""Is dropout's effect beyond seed noise? Paired comparisons of dropout on against off.

Two tests, for two kinds of noise:
- across seeds: on minus off of the headline metric, paired by seed (the same seed draws the same
  initial weights and data order with either setting), with a Student-t 95% interval over the
  pairs. This is the claim the leaderboard makes: it covers everything a seed changes.
- across test sentences, within one seed: sacrebleu's paired bootstrap resampling between the on
  and off outputs of the same test set (BLEU tasks only). It says whether one seed's BLEU gap is
  more than the test set's sampling noise, not whether it would repeat with another seed.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from scipy import stats as scipy_stats

from tasks.nn.references import reference_streams, unk_as_one_word

LOWER_IS_BETTER = ("ppl", "per", "loss", "wer")


def lower_is_better(metric: str) -> bool:
    return any(metric.endswith(k) or f"_{k}_" in metric for k in LOWER_IS_BETTER)


@dataclass
class Effect:
    pairs: int
    on: float  # mean over the paired seeds
    off: float
    diff: float  # mean of on - off over the paired seeds
    low: float | None  # 95% t-interval; None with a single pair
    high: float | None
    p: float | None = None  # two-sided paired t-test; None with one pair or no spread

    def verdict(self, lower_better: bool, subject: str = "dropout") -> str:
        """`subject`: what was switched on (the paper's dropout, or another regularizer)."""
        if self.low is None:
            return "one seed: a smoke test, no claim"
        if self.low == self.high:  # every pair differs by the same amount: no spread to size an interval by
            return "no spread between the paired seeds: no interval, no claim"
        if self.low > 0 or self.high < 0:
            helps = (self.high < 0) if lower_better else (self.low > 0)
            return f"{subject} {'better' if helps else 'worse'}, beyond seed noise"
        return "not beyond seed noise (the interval holds 0)"


def t_half_width(values: list[float], confidence: float = 0.95) -> float | None:
    """Half the width of the t-interval of the mean of `values`; None for fewer than two."""
    if len(values) < 2:
        return None
    return scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * stdev(values) / math.sqrt(len(values))


def paired_effect(on: dict[int, float], off: dict[int, float], confidence: float = 0.95) -> Effect | None:
    """on - off over the seeds both have, with a t-interval (n - 1 degrees of freedom)."""
    seeds = sorted(set(on) & set(off))
    if not seeds:
        return None
    diffs = [on[s] - off[s] for s in seeds]
    means = (mean(on[s] for s in seeds), mean(off[s] for s in seeds))
    if len(diffs) == 1:
        return Effect(1, *means, diffs[0], None, None)
    spread = stdev(diffs)
    if spread <= 1e-9 * max(1.0, abs(mean(diffs))):  # the same difference every seed, up to float rounding
        return Effect(len(diffs), *means, mean(diffs), mean(diffs), mean(diffs), None)
    half = t_half_width(diffs, confidence)
    p = 2 * scipy_stats.t.sf(abs(mean(diffs)) / (spread / math.sqrt(len(diffs))), len(diffs) - 1)
    return Effect(len(diffs), *means, mean(diffs), mean(diffs) - half, mean(diffs) + half, p)


def holm(p_values: list[float | None], alpha: float = 0.05) -> list[bool | None]:
    """Holm's step-down correction: which of several tests of one family stay beyond chance at
    family-wise level `alpha` (None where a test has no p-value). Several regularizers compared with
    the same `off` runs are such a family: at 95% each, one of seven would often pass by chance."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[bool | None] = [None] * len(p_values)
    holding = True
    for k, (p, i) in enumerate(ranked):
        holding = holding and p <= alpha / (len(ranked) - k)
        out[i] = holding
    return out


def read_outputs(path: Path, stream: str = "test") -> dict[str, tuple[str, list[str]]]:
    """key -> (hypothesis, references) of one test stream from a run's outputs file."""
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["stream"] == stream:
                out[rec["key"]] = (rec["hyp"], rec["refs"])
    return out


@dataclass
class Bootstrap:
    off: float
    on: float
    p_value: float


def bleu_bootstrap(off_file: Path, on_file: Path, stream: str = "test", samples: int = 1000) -> Bootstrap | None:
    """sacrebleu's paired bootstrap (BLEU, 1000 resamples, its fixed seed) between the off and on
    outputs of one seed, each <unk> one wrong word as in the rows; None when the two files do not
    hold the same test sentences."""
    from sacrebleu.metrics import BLEU  # sacrebleu loads only when there are BLEU outputs to compare
    from sacrebleu.significance import PairedTest

    off, on = read_outputs(off_file, stream), read_outputs(on_file, stream)
    if not off or set(off) != set(on):
        return None
    keys = sorted(off)
    refs = reference_streams([off[k][1] for k in keys])
    hyps = {name: [unk_as_one_word(side[k][0]) for k in keys] for name, side in (("off", off), ("on", on))}
    test = PairedTest([("off", hyps["off"]), ("on", hyps["on"])], {"BLEU": BLEU()},
                      references=refs, test_type="bs", n_samples=samples)
    _, scores = test()
    base, system = scores["BLEU"]
    return Bootstrap(off=base.score, on=system.score, p_value=system.p_value)
