"""Greedy and beam-search decoding for the LSTM decoders (translation, captioning).

Both drive a `step` function, one decoder time step for N rows at once:

    step(tokens (N,), state) -> (log-probs (N, V) float32, state)

where `state` is a tuple of tensors with the batch in dim 1 (an LSTM's (h, c): (layers, N, hidden)).
Outputs are token ids without <bos>/<eos>. A sentence stops at its first <eos> or after
`max_len[b]` tokens, whichever comes first.

Beam search (Sutskever et al. 2014, Sec. 3.1) keeps `beam` partial hypotheses per sentence, laid
out as rows b * beam + k:

    state (layers, B * beam, H)    row  0 .. beam-1 : sentence 0's hypotheses
                                   row  beam .. 2 beam-1 : sentence 1's, ...

Each step scores all beam x V extensions. The best 2 x beam are examined in order: an extension by
<eos> within the first `beam` ranks is a finished hypothesis; the best `beam` others live on. A
sentence is done when `beam` hypotheses have finished (the usual early stop: a live hypothesis
could still end better, but rarely does) or its length limit is reached, when the live ones are
finished as they stand. The answer is the finished hypothesis with the best length-normalised score

    log p(y | x) / len(y) ** alpha        len counts the <eos>;  alpha = 0: raw log-probability

Raw log-probability prefers short outputs, so alpha > 0 (0.6-1.0) usually scores better. With
beam = 1 the search is exactly greedy decoding (tested).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]
StepFn = Callable[[Tensor, State], tuple[Tensor, State]]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Decode as at test time whatever mode the caller left `module` in: no dropout of any kind
    (zoneout's expectation, weight-drop's full weights) and no graph. Each submodule's own flag comes
    back afterwards, not one flag for all: the captioner keeps its frozen CNN in eval while training."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def _reorder(state: State, rows: Tensor) -> State:
    return tuple(s.index_select(1, rows) for s in state)


@torch.no_grad()
def greedy(step: StepFn, state: State, bos: int, eos: int, max_len: Tensor) -> list[list[int]]:
    """The most probable token at every step. max_len: (B,) output-length limit per sentence."""
    batch = max_len.numel()
    tok = torch.full((batch,), bos, dtype=torch.long, device=max_len.device)
    out = []
    done = torch.zeros(batch, dtype=torch.bool, device=max_len.device)
    for t in range(int(max_len.max())):
        logp, state = step(tok, state)
        tok = logp.argmax(-1)
        out.append(tok)
        done |= (tok == eos) | (t + 1 >= max_len)
        if bool(done.all()):
            break
    seqs = torch.stack(out, 1).tolist() if out else [[] for _ in range(batch)]
    result = []
    for seq, limit in zip(seqs, max_len.tolist()):
        seq = seq[:limit]
        result.append(seq[: seq.index(eos)] if eos in seq else seq)
    return result


@torch.no_grad()
def beam_search(step: StepFn, state: State, bos: int, eos: int, max_len: Tensor, beam: int,
                alpha: float = 0.0) -> list[list[int]]:
    """Best hypothesis per sentence under length-normalised log-probability (see module doc)."""
    if beam < 1:
        raise ValueError(f"beam size must be >= 1, got {beam}")
    batch, k, device = max_len.numel(), beam, max_len.device
    limits = max_len.tolist()
    state = tuple(s.repeat_interleave(k, dim=1) for s in state)
    tok = torch.full((batch * k,), bos, dtype=torch.long, device=device)
    live = torch.zeros(batch, k, device=device)
    live[:, 1:] = float("-inf")  # the k copies of <bos> are one hypothesis: only the first expands
    seqs = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [limit <= 0 for limit in limits]
    base = (torch.arange(batch, device=device) * k).unsqueeze(1)  # (B, 1): each sentence's first row
    for t in range(max(limits, default=0)):
        logp, state = step(tok, state)
        vocab = logp.size(-1)
        cand = live.unsqueeze(-1) + logp.float().view(batch, k, vocab)  # (B, k, V)
        top, idx = cand.view(batch, -1).topk(min(2 * k, k * vocab), dim=-1)
        # Extensions by <eos> among the first k ranks finish; the others' prefixes are seqs rows.
        ends = (idx % vocab == eos)[:, :k]
        if bool(ends.any()):
            for b, r in ends.nonzero().tolist():
                score = float(top[b, r])
                if not done[b] and score > float("-inf"):
                    prefix = seqs[b * k + int(idx[b, r]) // vocab].tolist()
                    finished[b].append((score / (len(prefix) + 1) ** alpha, prefix))
        cand[:, :, eos] = float("-inf")
        live, idx = cand.view(batch, -1).topk(k, dim=-1)  # (B, k): the best k that go on
        rows = (base + idx // vocab).flatten()
        tok = (idx % vocab).flatten()
        seqs = torch.cat([seqs.index_select(0, rows), tok.unsqueeze(1)], dim=1)
        state = _reorder(state, rows)
        for b in range(batch):
            if done[b]:
                continue
            if len(finished[b]) >= k:
                done[b] = True
            elif t + 1 >= limits[b]:  # out of length: the live hypotheses finish as they are
                for j in range(k):
                    score = float(live[b, j])
                    if score > float("-inf"):
                        finished[b].append((score / (t + 1) ** alpha, seqs[b * k + j].tolist()))
                done[b] = True
        if all(done):
            break
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]
