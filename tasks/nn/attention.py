"""Global attention for the translator's decoder (Luong, Pham & Manning 2015, "general" score).

Not in the paper: Sutskever et al.'s translator reads the source only through the encoder's final
state. That takes days at 4x1000 on 12M pairs; at CPU size it barely translates (README, "What the
quick presets show"), so a quick preset may attend instead. Every decoder position t looks at all
source positions s:

    memory  (S, B, H)   the encoder's top-layer outputs
    keys    (S, B, H)   W_a memory, computed once per sentence, not once per decoder step
    y       (T, B, H)   the decoder's top-layer outputs

    a_t(s) = softmax_s( y_t . keys_s )        padding masked out
    c_t    = sum_s a_t(s) memory_s
    out_t  = tanh(W_c [c_t ; y_t])            (T, B, H), what the output layer reads

No input feeding (out_{t-1} into the decoder's input at t): the decoder stays one LSTM over the
whole target, so it keeps the fused kernel and every regularizer means what it means elsewhere.
The attention layer itself adds no dropout. By default (the translator's `attention_dropout_at:
inputs`) memory and y arrive already dropped, as the LSTMs' last non-recurrent connections, so
both sides of every score carry a mask; with `output` they arrive whole and out_t is dropped on
its way to the softmax instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GlobalAttention(nn.Module):

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)  # W_a
        self.out = nn.Linear(2 * hidden_size, hidden_size, bias=False)  # W_c

    def keys(self, memory: Tensor) -> Tensor:
        return self.key(memory)

    def forward(self, y: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        """y (T, B, H), keys and memory (S, B, H), mask (S, B) True at real source words -> (T, B, H)."""
        scores = torch.einsum("tbh,sbh->bts", y, keys)
        scores = scores.masked_fill(~mask.t().unsqueeze(1), float("-inf"))
        context = torch.einsum("bts,sbh->tbh", scores.softmax(-1).to(memory.dtype), memory)
        return torch.tanh(self.out(torch.cat([context, y], dim=-1)))


def source_mask(lengths: Tensor, steps: int) -> Tensor:
    """(S, B) True where position s < the sentence's length (padding sits at the end)."""
    return torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths.unsqueeze(0)
