"""The paper's model averaging (Table 1): the equal-weight mixture of M models' next-word distributions."""

from __future__ import annotations

import torch


@torch.no_grad()
def mixture_nll(member_logps: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of each member and of their equal-weight mixture on `targets`.

    member_logps: M tensors (..., V) of log-probabilities; targets: (...) word ids. The mixture's
    log-probability of the target word is logsumexp_m log p_m(y) - log M: averaging whole
    distributions and then reading off y gives exactly this, without building the average.
    """
    lp = torch.stack([m.gather(-1, targets.unsqueeze(-1)).squeeze(-1) for m in member_logps])  # (M, ...)
    mix = lp.logsumexp(0) - torch.log(torch.tensor(float(len(member_logps))))
    return -lp.flatten(1).sum(1), -mix.sum()
