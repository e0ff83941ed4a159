"""The output layer and its cross-entropy in one autograd step, for training a word model.

    loss = sum_i  logsumexp(h_i W^T + b) - (h_i W^T + b)[y_i]

is what `F.cross_entropy(F.linear(h, W, b), y, reduction="sum")` computes. Done that way, PyTorch
keeps the (N, V) logits for log_softmax's backward, writes the (N, V) log-probabilities, and in
the backward pass builds the gradient of the log-probabilities and then of the logits: four passes
over an N x V array (PTB: 400 x 10,000 floats, 16 MB, far beyond the cache). The gradient of the
summed loss with respect to the logits is known as soon as the forward pass has them:

    dL/dlogits = softmax(logits) - onehot(y)

so the forward pass computes it in place of the logits, a chunk of rows at a time (one chunk of
the array stays in cache from the matrix product through the softmax), and the backward pass is
the output layer's three matrix products alone. Same math; the float rounding differs only in the
order of the sums (tests/test_language_model.py compares both).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ROWS = 128  # 128 x 10,000 floats = 5 MB: one chunk of logits in the last-level cache


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        grad_logits = torch.empty(h.size(0), weight.size(0), dtype=torch.float32, device=h.device)
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, h.size(0), CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            logits = torch.addmm(bias, h[rows], weight.t(), out=grad_logits[rows])
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            y = target[rows].unsqueeze(1)
            total += (lse - logits.gather(1, y)).sum()
            logits.sub_(lse).exp_()  # softmax, in place
            logits.scatter_add_(1, y, torch.full_like(y, -1, dtype=logits.dtype))
        ctx.save_for_backward(h, weight, grad_logits)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable  # g is a constant here: no second derivatives
    def backward(ctx, grad_out: Tensor):
        h, weight, g = ctx.saved_tensors
        # Scale the three small results, not the N x V array: one pass over it fewer.
        return (g @ weight) * grad_out, (g.t() @ h) * grad_out, g.sum(0) * grad_out, None


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:
    """Summed NLL of `target` (N,) under softmax(h W^T + b); h, weight and bias float32 (callers
    under autocast use the unfused path)."""
    return _LinearCrossEntropy.apply(h, weight, bias, target)
