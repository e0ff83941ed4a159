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

`regularization` adds the regularizers that came after the paper (tasks/nn/regularizers.py) without
changing the parameters: with it the layers run one at a time (the masks between layers are ours),
each through the LSTM kernel, or through a step loop where a mask acts inside the recurrence.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from tasks.nn.masks import Dropout, dropout
from tasks.nn.regularizers import Regularization, locked_dropout, lstm_steps

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
        # The first call may come from inside Lightning's validation (inference mode, no grad), and
        # from inside a run: the probe's weights and input must not draw from the run's generator,
        # or a seed would give other masks in the first run of a process than in the next.
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
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
    (h, c) is the un-dropped recurrent state to carry into the next window. With
    `output_dropout=False` y comes out undropped and the caller drops the connection where it
    reaches the softmax, with `drop_output` (a translator whose attention sits in between).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
        impl: Impl = "stacked",
        regularization: Regularization | dict | None = None,
        output_dropout: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if impl not in ("stacked", "fused"):
            raise ValueError(f"backbone impl must be 'stacked' or 'fused', got {impl!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.impl: Impl = impl
        self.drop = Dropout(dropout)  # nn.Dropout's masks, drawn sooner on CPU (tasks/nn/masks.py)
        self.output_dropout = output_dropout
        reg = regularization
        reg = reg if isinstance(reg, Regularization) or reg is None else Regularization.of(reg)
        # Embedding dropout is the task's (its word embedding); the rest act here.
        self.reg = None if reg is None or dataclasses.replace(reg, embedding=0.0) == Regularization() else reg
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
        if self.reg is not None:
            return self._forward_regularized(x, state)
        x = dropout_any(self.drop, x)
        if self.impl == "fused":
            y, state = _run_lstm(self.lstm, x, state)
            return self._out(y), state
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else (state[0][i : i + 1], state[1][i : i + 1])
            x, (h, c) = _run_lstm(layer, x, layer_state)
            hs.append(h)
            cs.append(c)
            # Dropout between layers and after the last: the next layer's input, never h or c.
            x = dropout_any(self.drop, x) if i < self.num_layers - 1 else self._out(x)
        return x, (torch.cat(hs), torch.cat(cs))

    def drop_output(self, y: Tensor | PackedSequence) -> Tensor | PackedSequence:
        """The output connection's regularization: the paper's per-step dropout, then any
        per-sequence (locked) mask, as the last layer's output gets it inside `forward`."""
        return self._drop_between(y)

    def _out(self, y: Tensor | PackedSequence) -> Tensor | PackedSequence:
        return self.drop_output(y) if self.output_dropout else y

    def _weights(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Layer i's (W_ih, W_hh, b_ih, b_hh), from either layout."""
        lstm, k = (self.lstm, i) if self.impl == "fused" else (self.layers[i], 0)
        return tuple(getattr(lstm, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _shell(self, i: int) -> nn.LSTM:
        """A one-layer nn.LSTM of layer i's shape that runs layer i's weights (functional_call):
        the stacked layout's own layer; for the fused one, a helper kept out of the parameters."""
        if self.impl == "stacked":
            return self.layers[i]
        shells = self.__dict__.setdefault("_shells", {})
        if i not in shells:
            # Built at the process's first regularized batch, so it must not draw from the CPU RNG
            # (as nn.LSTM's init does): a resumed run builds it at a later point of the run than the
            # uninterrupted one, and the draw would shift every CPU random number after it (masks
            # on CPU, shuffles). Its own weights are never used; on CPU, so only that RNG is forked.
            with torch.random.fork_rng(devices=[]):
                shells[i] = nn.LSTM(self.input_size if i == 0 else self.hidden_size, self.hidden_size,
                                    device="cpu")
        return shells[i]

    def _forward_regularized(self, x: Tensor | PackedSequence, state: State | None):
        reg, training = self.reg, self.training
        steps = reg.steps if training else reg.steps_at_eval
        drop_hh = reg.weight_drop if training else 0.0
        if self.impl == "fused" and not steps and not (training and reg.locked):
            # Weight-drop alone keeps the multi-layer kernel: each W_hh dropped once for this call.
            x = dropout_any(self.drop, x)
            swap = {f"weight_hh_l{i}": dropout(self._weights(i)[1], drop_hh)
                    for i in range(self.num_layers)} if drop_hh else {}
            y, state = _run_lstm(lambda v, s: functional_call(self.lstm, swap, (v, s)), x, state)
            return self._out(y), state
        hs, cs = [], []
        for i in range(self.num_layers):
            x = self._drop_between(x, skip_locked=steps and reg.per_gate)
            w_ih, w_hh, b_ih, b_hh = self._weights(i)
            if drop_hh:
                w_hh = dropout(w_hh, drop_hh)  # DropConnect: one mask for every step of this call
            layer_state = None if state is None else (state[0][i : i + 1], state[1][i : i + 1])
            if steps:
                x, (h, c) = self._steps(x, layer_state, (w_ih, w_hh, b_ih, b_hh))
            else:
                weights = dict(zip((f"{n}_l0" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                                   (w_ih, w_hh, b_ih, b_hh)))
                shell = self._shell(i)
                x, (h, c) = _run_lstm(lambda v, s: functional_call(shell, weights, (v, s)), x, layer_state)
            hs.append(h)
            cs.append(c)
        return self._out(x), (torch.cat(hs), torch.cat(cs))

    def _drop_between(self, x: Tensor | PackedSequence, skip_locked: bool = False) -> Tensor | PackedSequence:
        """The paper's connections: its per-step dropout, then the per-sequence (locked) mask."""
        x = dropout_any(self.drop, x)
        return x if skip_locked or not self.training or self.reg is None else locked_dropout(x, self.reg.locked)

    def _steps(self, x: Tensor | PackedSequence, state: State | None, weights) -> tuple:
        packed = isinstance(x, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(x)
            lengths = lengths.to(x.device)
        if state is None:
            zeros = x.new_zeros(x.size(1), self.hidden_size)
            state = (zeros, zeros)
        else:
            state = (state[0][0], state[1][0])
        y, (h, c) = lstm_steps(x, state, weights, self.reg, self.training, lengths)
        if packed:
            y = pack_padded_sequence(y, lengths.cpu(), enforce_sorted=False)
        return y, (h.unsqueeze(0), c.unsqueeze(0))

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
