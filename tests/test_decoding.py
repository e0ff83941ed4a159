"""Greedy and beam search on hand-made and random decoders; sacrebleu scoring as its CLI scores."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from tasks.nn import decoding, text_metrics

BOS, EOS = 0, 1


def markov_step(table: torch.Tensor):
    """A decoder whose next-word distribution depends on the previous word only."""
    logp = table.log()

    def step(tokens, state):
        return logp[tokens], state

    return step


def lstm_step(vocab: int = 7, hidden: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    emb, lstm, head = nn.Embedding(vocab, hidden), nn.LSTM(hidden, hidden), nn.Linear(hidden, vocab)

    def step(tokens, state):
        y, state = lstm(emb(tokens).unsqueeze(0), state)
        return torch.log_softmax(head(y[0]), -1), state

    return step


def test_beam_finds_the_better_sequence_greedy_misses():
    # From <bos>: a 0.6, b 0.4. After a: <eos> 0.4 (a, <eos> = 0.24). After b: <eos> 0.9 (b, <eos> = 0.36).
    table = torch.tensor([
        [0.0, 0.0, 0.6, 0.4],   # <bos>
        [0.25, 0.25, 0.25, 0.25],  # after <eos> (never used)
        [0.0, 0.4, 0.3, 0.3],   # after a (2)
        [0.0, 0.9, 0.05, 0.05],  # after b (3)
    ]) + 1e-9
    state = (torch.zeros(1, 1, 1),)
    limit = torch.tensor([5])
    assert decoding.greedy(markov_step(table), state, BOS, EOS, limit) == [[2]]
    assert decoding.beam_search(markov_step(table), state, BOS, EOS, limit, beam=2) == [[3]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_is_greedy(seed):
    step = lstm_step(seed=seed)
    batch = 6
    state = (torch.randn(1, batch, 8), torch.randn(1, batch, 8))
    limit = torch.tensor([1, 3, 5, 8, 8, 12])
    greedy = decoding.greedy(step, state, BOS, EOS, limit)
    for alpha in (0.0, 0.6):
        assert decoding.beam_search(step, state, BOS, EOS, limit, beam=1, alpha=alpha) == greedy
    assert all(len(seq) <= n for seq, n in zip(greedy, limit.tolist()))


def test_beam_search_respects_length_limits_and_batch_independence():
    step = lstm_step(seed=3)
    state = (torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    limit = torch.tensor([2, 4, 6, 9])
    together = decoding.beam_search(step, state, BOS, EOS, limit, beam=3, alpha=0.6)
    for b in range(4):
        alone = decoding.beam_search(step, tuple(s[:, b : b + 1] for s in state), BOS, EOS, limit[b : b + 1], 3, 0.6)
        assert alone == [together[b]]
        assert len(together[b]) <= limit[b]
        assert EOS not in together[b] and BOS not in together[b]


def test_beam_size_must_be_positive():
    with pytest.raises(ValueError, match="beam size"):
        decoding.beam_search(lstm_step(), (torch.zeros(1, 1, 8), torch.zeros(1, 1, 8)), BOS, EOS, torch.tensor([3]), 0)


HYPS = ["The cat sat on the mat.", "A dog runs in the park quickly.", "It is raining today in Paris."]
REFS_A = ["The cat sat on the mat.", "A dog is running in the park.", "Today it rains in Paris."]
REFS_B = ["There is a cat on the mat.", "The dog runs quickly through the park.", "It's raining in Paris today."]


def _cli_bleu(tmp_path, refs: list[list[str]], *args: str) -> float:
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    paths = []
    for i, stream in enumerate(refs):
        (tmp_path / f"ref{i}.txt").write_text("\n".join(stream) + "\n")
        paths.append(str(tmp_path / f"ref{i}.txt"))
    out = subprocess.run([sys.executable, "-m", "sacrebleu", *paths, "-i", str(tmp_path / "hyp.txt"), "-b", "-w", "4", *args],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_bleu_equals_sacrebleu_cli(tmp_path):
    one, sig = text_metrics.bleu(HYPS, [[r] for r in REFS_A])
    one = one.score
    assert sig.startswith("nrefs:1|") and "tok:13a" in sig
    assert one == pytest.approx(_cli_bleu(tmp_path, [REFS_A]), abs=0.01)
    two = text_metrics.bleu(HYPS, [[a, b] for a, b in zip(REFS_A, REFS_B)])[0].score
    assert two == pytest.approx(_cli_bleu(tmp_path, [REFS_A, REFS_B]), abs=0.01)
    assert two > one > 0
    # The CLI has no n-gram order flag: BLEU-2 from its 1- and 2-gram precisions and brevity penalty.
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    out = json.loads(subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref0.txt"), "-i",
                                     str(tmp_path / "hyp.txt"), "-w", "6"], capture_output=True, text=True,
                                    check=True).stdout)
    p1, p2 = (float(x) for x in out["verbose_score"].split("/")[:2])
    bp = float(out["verbose_score"].split("BP = ")[1].split()[0])
    bleu2 = text_metrics.bleu(HYPS, [[r] for r in REFS_A], max_order=2)[0].score
    assert bleu2 == pytest.approx(bp * math.sqrt(p1 * p2), abs=0.01)
    chrf = text_metrics.chrf(HYPS, [[r] for r in REFS_A])
    assert chrf == pytest.approx(_cli_bleu(tmp_path, [REFS_A], "-m", "chrf"), abs=0.01)


def test_uneven_reference_counts_pad_with_none():
    streams = text_metrics.reference_streams([["a", "b"], ["c"], ["d", "e", "f"]])
    assert streams == [["a", "c", "d"], ["b", None, "e"], [None, None, "f"]]
    score, sig = text_metrics.bleu(["a b c d"], [["a b c d", "x y"]])
    assert score.score == pytest.approx(100.0) and sig.startswith("nrefs:2|")
