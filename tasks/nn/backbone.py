"""The paper's regularized LSTM (Zaremba et al. 2014, Section 3).

Dropout D sits on the L+1 non-recurrent connections only:

    x_t --D--> LSTM_1 --D--> LSTM_2 --D--> ... LSTM_L --D--> y_t
                 ^  |          ^  |
                 h,c (never D) h,c (never D)

A fresh mask per time step and unit: nn.Dropout on a (T, B, H) tensor draws an independent Bernoulli
for every element, so every (t, b, unit) gets its own mask. The h->h path carries information across
time undisturbed, which is the paper's whole point.

Two implementations share this interface and parameter layout:
  * "stacked": one single-layer nn.LSTM per layer with nn.Dropout between them. Each layer is a
    cuDNN/oneDNN call without dropout, so on GPU it is deterministic (masks come from torch's RNG).
  * "fused": one multi-layer nn.LSTM whose own inter-layer dropout covers the L-1 inner connections;
    we add the first and last. Faster on GPU, but cuDNN's dropout is not reproducible run to run.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

State = tuple[Tensor, Tensor]  # (h, c), each (num_layers, batch, hidden)
Impl = Literal["stacked", "fused"]

log = logging.getLogger(__name__)


def dropout_any(drop: nn.Dropout, x: Tensor | PackedSequence) -> Tensor | PackedSequence:
    """Apply dropout to a padded tensor or to the flat data of a PackedSequence."""
    if isinstance(x, PackedSequence):
        return x._replace(data=drop(x.data))
    return drop(x)


@functools.lru_cache(maxsize=None)
def cpu_lstm_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN on this CPU can run an LSTM forward and backward in `dtype`.

    oneDNN has no reduced-precision LSTM primitive on CPUs without the matching ISA (bf16 needs
    AVX512-BF16/AMX; fp16 needs AVX512-FP16 and is missing from many builds): autocast then crashes
    with "could not create a primitive descriptor for the LSTM forward propagation primitive".
    """
    try:
        # The first call may come from inside Lightning's validation (inference mode, no grad).
        with torch.inference_mode(False), torch.enable_grad():
            lstm = nn.LSTM(4, 4)
            x = torch.randn(2, 1, 4, requires_grad=True)
            with torch.autocast("cpu", dtype=dtype):
                y, _ = lstm(x)
            y.float().sum().backward()
        return True
    except RuntimeError as err:
        log.warning(
            "oneDNN cannot run nn.LSTM in %s on this CPU (%s); the LSTM layers will run in float32 "
            "while the rest of the model keeps %s autocast.",
            dtype,
            str(err).splitlines()[0],
            dtype,
        )
        return False


def _needs_fp32_lstm(x: Tensor | PackedSequence) -> bool:
    device = (x.data if isinstance(x, PackedSequence) else x).device
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    return not cpu_lstm_supports(torch.get_autocast_dtype("cpu"))


def _run_lstm(lstm: nn.LSTM, x: Tensor | PackedSequence, state: State | None):
    if not _needs_fp32_lstm(x):
        return lstm(x, state)
    with torch.autocast("cpu", enabled=False):
        if isinstance(x, PackedSequence):
            x = x._replace(data=x.data.float())
        else:
            x = x.float()
        if state is not None:
            state = (state[0].float(), state[1].float())
        return lstm(x, state)


class DropoutLSTM(nn.Module):
    """L-layer LSTM, time-major (T, B, F), with the paper's non-recurrent dropout.

    forward(x, state) -> (y, (h, c)); y is the last layer's output after the output dropout, and
    (h, c) is the un-dropped recurrent state to carry into the next window.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
        impl: Impl = "stacked",
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if impl not in ("stacked", "fused"):
            raise ValueError(f"backbone impl must be 'stacked' or 'fused', got {impl!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.impl: Impl = impl
        self.drop = nn.Dropout(dropout)
        if impl == "fused":
            # nn.LSTM's own dropout acts on every layer's output except the last: the L-1 inner
            # connections. (It warns when num_layers == 1 and dropout > 0; there is nothing inner.)
            inner = dropout if num_layers > 1 else 0.0
            self.lstm = nn.LSTM(input_size, hidden_size, num_layers, dropout=inner)
        else:
            self.layers = nn.ModuleList(
                nn.LSTM(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
            )

    @property
    def dropout(self) -> float:
        return self.drop.p

    def forward(self, x: Tensor | PackedSequence, state: State | None = None):
        x = dropout_any(self.drop, x)
        if self.impl == "fused":
            y, state = _run_lstm(self.lstm, x, state)
            return dropout_any(self.drop, y), state
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else (state[0][i : i + 1], state[1][i : i + 1])
            x, (h, c) = _run_lstm(layer, x, layer_state)
            hs.append(h)
            cs.append(c)
            # Dropout between layers and after the last: the next layer's input, never h or c.
            x = dropout_any(self.drop, x)
        return x, (torch.cat(hs), torch.cat(cs))

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return zeros, zeros.clone()


def stacked_to_fused_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a stacked backbone's parameters to the fused layout (same tensors, same math)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("layers."):
            _, idx, name = key.split(".", 2)  # layers.{i}.weight_ih_l0
            out["lstm." + name.replace("_l0", f"_l{idx}")] = value
        else:
            out[key] = value
    return out


def fused_to_stacked_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `stacked_to_fused_state_dict`."""
    out = {}
    for key, value in sd.items():
        if key.startswith("lstm."):
            name = key.split(".", 1)[1]  # weight_ih_l{i}
            base, idx = name.rsplit("_l", 1)
            out[f"layers.{idx}.{base}_l0"] = value
        else:
            out[key] = value
    return out


def init_uniform_(module: nn.Module, scale: float) -> None:
    """The paper's init: every parameter, biases included, uniform in [-scale, scale]."""
    for p in module.parameters():
        nn.init.uniform_(p, -scale, scale)
