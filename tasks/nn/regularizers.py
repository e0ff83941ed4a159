"""The paper's dropout and the LSTM regularizers that followed it, as mechanisms with one rate each.

A named regularizer (`bench run --regularizer NAME`) is a preset's mapping of mechanisms to rates
(configs/<task>/<preset>.yaml, `regularizers:`); `zaremba`, the paper, is the mechanism `dropout`
alone. None of them adds a parameter or a buffer: a checkpoint trained under one loads under any other.

    mechanism    where                                  mask drawn                 source
    dropout      inputs of every layer, output of last   per element and time step  Zaremba et al. 2014
    locked       the same L+1 connections                per sequence and unit      Gal & Ghahramani 2016;
                                                                                    Merity et al. 2017 (LockedDropout)
    hidden       h_{t-1} on its way into W_hh            per sequence and unit      Gal & Ghahramani 2016
    weight_drop  the weights W_hh (DropConnect)          per forward call           Merity et al. 2017 (AWD-LSTM)
    embedding    rows of a word embedding (word types)   per forward call           Gal & Ghahramani 2016, Sec. 4.2
    zoneout_c/_h c_t, h_t keep their previous value      per element and time step  Krueger et al. 2017
    recurrent    the cell update g_t                     per element and time step  Semeniuta et al. 2016

`per_gate` (Gal & Ghahramani's "untied" LSTM): `locked` and `hidden` draw one mask per gate, so each
of the four gates sees its own dropped copy of x and h; otherwise one mask serves all four.

Which need a loop over time steps (their masks act inside the recurrence): hidden, zoneout_c/_h,
recurrent, and per_gate; the others keep the fused cuDNN/oneDNN kernel (weight_drop hands it a
dropped copy of W_hh through torch.func.functional_call, leaving the stored parameter untouched).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from tasks.nn.masks import dropout, keep_mask
from tasks.nn.mechanisms import MECHANISMS


@dataclass(frozen=True)
class Regularization:
    """Rates of the mechanisms beyond the paper's `dropout` (which the backbone takes as before)."""

    locked: float = 0.0
    hidden: float = 0.0
    weight_drop: float = 0.0
    embedding: float = 0.0
    zoneout_c: float = 0.0
    zoneout_h: float = 0.0
    recurrent: float = 0.0
    per_gate: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "per_gate" and not 0.0 <= value < 1.0:
                raise ValueError(f"regularization {f.name} must be in [0, 1), got {value!r}")

    @classmethod
    def of(cls, rates: dict | None) -> "Regularization | None":
        """A module's `regularization` argument -> the rates, or None where nothing is set."""
        if not rates:
            return None
        unknown = set(rates) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown regularization mechanism(s) {sorted(unknown)}; known: "
                             f"{', '.join(m for m in MECHANISMS if m != 'dropout')}, per_gate")
        reg = cls(**rates)
        return None if reg == cls() else reg

    @property
    def steps(self) -> bool:
        """Whether training needs the step loop."""
        return bool(self.hidden or self.zoneout_c or self.zoneout_h or self.recurrent or self.per_gate)

    @property
    def steps_at_eval(self) -> bool:
        """Zoneout's evaluation uses the expectation h = z h_{t-1} + (1 - z) h~_t: still a loop."""
        return bool(self.zoneout_c or self.zoneout_h)


def sequence_mask(x: Tensor | PackedSequence, p: float, copies: int = 0) -> Tensor:
    """An inverted-dropout mask, one per sequence and unit, laid out like x's data: (1, B, F) for a
    (T, B, F) tensor (broadcast over time), (N, F) for a PackedSequence's flat data. `copies`: that
    many masks stacked in front (one per gate)."""
    data = x.data if isinstance(x, PackedSequence) else x
    batch = int(x.batch_sizes[0]) if isinstance(x, PackedSequence) else data.size(1)
    shape = ((copies,) if copies else ()) + (batch, data.size(-1))
    mask = keep_mask(shape, 1 - p, like=data)
    if isinstance(x, PackedSequence):
        # The flat data holds, for each time step, the first batch_sizes[t] sequences (longest first).
        rows = torch.cat([torch.arange(int(n)) for n in x.batch_sizes]).to(data.device)
        return mask[..., rows, :]
    return mask.unsqueeze(-3)


def locked_dropout(x: Tensor | PackedSequence, p: float) -> Tensor | PackedSequence:
    """x times one mask per sequence, the same at every time step."""
    if p == 0.0:
        return x
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data * sequence_mask(x, p))
    return x * sequence_mask(x, p)


class WordEmbedding(nn.Embedding):
    """nn.Embedding (same parameter) that, in training, drops whole word types: every occurrence of a
    dropped word in the batch reads zeros, the kept rows are scaled by 1/(1 - p)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, drop_types: float = 0.0) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.drop_types = drop_types

    def forward(self, ids: Tensor) -> Tensor:
        out = super().forward(ids)
        if not self.training or self.drop_types == 0.0:
            return out
        p = self.drop_types
        keep = keep_mask((self.num_embeddings,), 1 - p, like=out)
        return out * keep[ids].unsqueeze(-1)


def lstm_steps(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    weights: tuple[Tensor, Tensor, Tensor, Tensor],
    reg: Regularization,
    training: bool,
    lengths: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One LSTM layer, one time step at a time, with the masks that act inside the recurrence.

    x: (T, B, F) padded input; state: (h, c), each (B, H); weights: nn.LSTM's (W_ih, W_hh, b_ih, b_hh)
    with gates in its order (i, f, g, o); lengths: (B,) true lengths, past which a sequence's state
    stops changing (its outputs there are zeros, as pad_packed_sequence gives). The input projection
    of all T steps is one matrix product; the loop holds only what depends on h_{t-1}.
    """
    w_ih, w_hh, b_ih, b_hh = weights
    h, c = state
    hidden = w_hh.size(1)
    if training and reg.per_gate:
        # Gal & Ghahramani's untied LSTM: gate k reads x * m_k and h * n_k, m and n fixed over time.
        mx = sequence_mask(x, reg.locked, copies=4) if reg.locked else None  # (4, 1, B, F)
        xs = x.unsqueeze(0) * mx if mx is not None else x.unsqueeze(0).expand(4, *x.shape)
        gx = torch.einsum("ktbf,khf->tbkh", xs, w_ih.view(4, hidden, -1)).flatten(2) + (b_ih + b_hh)
    else:
        gx = F.linear(x, w_ih, b_ih + b_hh)  # (T, B, 4H)
    mh = None
    if training and reg.hidden:
        mh = keep_mask((4,) * reg.per_gate + tuple(h.shape), 1 - reg.hidden, like=h)
    w_gates = w_hh.view(4, hidden, hidden) if training and reg.per_gate else None
    outs = []
    # unbind, not gx[t]: each indexing's backward would write a zero tensor of gx's full size, T times.
    for t, gx_t in enumerate(gx.unbind(0)):
        if w_gates is not None:
            hk = h.unsqueeze(0) * mh if mh is not None else h.unsqueeze(0).expand(4, *h.shape)
            gates = gx_t + torch.einsum("kbh,kgh->bkg", hk, w_gates).flatten(1)
        else:
            gates = gx_t + F.linear(h if mh is None else h * mh, w_hh)
        i, f, g, o = gates.chunk(4, 1)
        g = torch.tanh(g)
        if training and reg.recurrent:
            g = dropout(g, reg.recurrent, training=True)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * g
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if reg.zoneout_c:
            c_new = _zoneout(c, c_new, reg.zoneout_c, training)
        if reg.zoneout_h:
            h_new = _zoneout(h, h_new, reg.zoneout_h, training)
        if lengths is not None:
            running = (t < lengths).unsqueeze(1)
            h_new, c_new = torch.where(running, h_new, h), torch.where(running, c_new, c)
            outs.append(h_new * running)
        else:
            outs.append(h_new)
        h, c = h_new, c_new
    return torch.stack(outs), (h, c)


def _zoneout(old: Tensor, new: Tensor, z: float, training: bool) -> Tensor:
    """Each unit keeps its previous value with probability z (training), or moves by its expectation."""
    if training:
        return torch.where(torch.rand_like(new) < z, old, new)
    return z * old + (1 - z) * new
