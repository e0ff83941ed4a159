"""scripts/budget_floor.py: the arithmetic it sets beside the training step's time is the hand count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("budget_floor", ROOT / "scripts" / "budget_floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Tagger(nn.Module):
    """A 2-layer LSTM (3 -> 4) and a linear head (4 -> 5), trained on (T, B, 3) inputs, packed or not."""

    def __init__(self, packed: bool) -> None:
        super().__init__()
        self.lstm, self.head, self.packed = nn.LSTM(3, 4, num_layers=2), nn.Linear(4, 5), packed

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["x"]
        if self.packed:
            y, _ = self.lstm(pack_padded_sequence(x, batch["lengths"], enforce_sorted=False))
            return self.head(y.data).sum()
        y, _ = self.lstm(x)
        return self.head(y).sum()


def test_a_step_counts_the_fused_lstm_kernel_by_formula_and_a_packed_lstm_once():
    script = _script()
    x, lengths = torch.randn(6, 2, 3), torch.tensor([6, 4])  # T=6, B=2: 12 positions padded
    model = _Tagger(packed=False)
    flops = script.step_flops(model, {"x": x})
    # the fused kernel, per layer and position: 2 x 4H x (I + H) forward, twice that backward
    lstm = 3 * 2 * 12 * 16 * ((3 + 4) + (4 + 4))
    head = 3 * 2 * 12 * 4 * 5  # the counter's addmm forward, and mm for each gradient
    assert flops == lstm + head
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradients behind
    # Packed, nn.LSTM runs per-step products the counter sees itself: the formula must not add to them.
    model = _Tagger(packed=True)
    with FlopCounterMode(display=False) as plain:
        model.training_step({"x": x, "lengths": lengths}, 1).backward()
    model.zero_grad(set_to_none=True)
    assert script.step_flops(model, {"x": x, "lengths": lengths}) == plain.get_total_flops() > 0


def test_the_fused_kernels_forward_formula_is_what_the_counter_counts_of_the_unfused_lstm():
    """An independent check of the formula: with oneDNN off, nn.LSTM runs products the counter sees."""
    script = _script()
    lstm, x = nn.LSTM(3, 4, num_layers=2), torch.randn(6, 2, 3)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as unfused:
        lstm(x)
    by_formula = script._rnn_layer_flops((6, 2, 3), (16, 3), (16, 4)) + script._rnn_layer_flops((6, 2, 4), (16, 4), (16, 4))
    assert unfused.get_total_flops() == by_formula


def test_a_row_gives_its_runs_seconds_and_its_share_of_the_product_rate():
    script = _script()
    row = script.finish({"task": "ptb", "steps_per_epoch": 10, "epochs": 3, "ms_per_step": 50.0, "flops": 5e9},
                        rate=200e9)
    # 30 steps of 50 ms; 5 GFLOP in 50 ms is 100 GFLOP/s, half of 200; 30 x 5 GFLOP at 200 GFLOP/s
    assert {k: row[k] for k in ("steps_s", "gflop_per_step", "gflops", "gemm_gflops", "share_of_gemm_rate",
                                "at_gemm_rate_s")} == {"steps_s": "2", "gflop_per_step": "5.00", "gflops": "100",
                                                       "gemm_gflops": "200", "share_of_gemm_rate": "0.50",
                                                       "at_gemm_rate_s": "1"}
    assert "flops" not in row and row["ms_per_step"] == "50.0"


def test_the_summary_adds_the_runs_of_each_task_and_their_arithmetic_against_the_warm_budget():
    script = _script()
    rows = [{"task": "ptb", "steps_s": "60", "gflop_per_step": "5.00", "steps_per_epoch": "100", "epochs": "3",
             "gemm_gflops": "200"},
            {"task": "ptb", "steps_s": "60", "gflop_per_step": "5.00", "steps_per_epoch": "100", "epochs": "3",
             "gemm_gflops": "200"},
            {"task": "speech", "steps_s": "180", "gflop_per_step": "30.00", "steps_per_epoch": "10", "epochs": "20",
             "gemm_gflops": "200"}]
    # 2 x 1.5 TFLOP + 6 TFLOP = 9 TFLOP: 45 s at 200 GFLOP/s; 9 TFLOP in 1,500 s is 6 GFLOP/s
    assert script.summary(rows) == ("make bench's 3 runs: training steps alone 5.0 min (ptb 2.0, speech 3.0); their "
                                    "arithmetic 9 TFLOP, 0.8 min at this machine's fastest product rate (200 GFLOP/s); "
                                    "the warm budget of 25 min needs 6 GFLOP/s for every product, before validation "
                                    "and test")
