"""What `make bench`'s training steps alone cost on this machine, beside issue 11's budget.

    python scripts/budget_floor.py --data-root ../shared/data --out results/budget-floor.csv

`make bench` trains each task's quick preset twice (dropout on, off; seed 0). For each of those
eight runs the module and DataModule are built as `bench run` builds them and `--steps` training
steps (after `--warmup`) are timed outside Lightning, arms alternating over `--reps` repetitions,
medians: the module's own `training_step` loss, backward, the preset's gradient clip and its
optimizer (scripts/profile_task_step.py's step). That time x the steps of a run is what the run's
training alone costs here, with nothing of validation, test, data loading or set-up. Summed over
the eight runs it is a floor under `make bench`'s warm wall time that no change outside the
training step can lower.

The same batches' matrix arithmetic is counted too, by torch's FlopCounterMode, given a formula
for the fused CPU LSTM kernel it has none for (2 x 4H x (I + H) per layer and position forward,
twice that backward); elementwise work is not counted. Beside this machine's single-precision
matrix-product rate at the same threads (the fastest of three large products, each the fastest of
5, measured before each task and after the last: the fastest of those, since the machine's speed
drifts; all of them in `gemm_gflops_runs`), it gives the step's share of that rate, and the run's
time had every product run at it (`at_gemm_rate_s`): about the least any implementation that
computes what this one does (padding included, but for the translator's packed encoder) could take
on this machine. Each run's figures extrapolate `--steps` batches to the whole run.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profile_task_step import batches, build, clip_of, one_step  # noqa: E402

from benchmark import allocator  # noqa: E402
from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_label, git_commit  # noqa: E402

TASKS = ("captioning", "translation", "speech", "ptb")  # `make bench`'s quick presets
BUDGET_WARM_MIN = 25.0  # issue 11: `make bench` warm, one seed, all four tasks on and off


def _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """One layer of the fused CPU LSTM kernel, forward: 2 x 4H x (I + H) per position (T x B)."""
    positions = 1
    for n in input_shape[:-1]:
        positions *= n
    return 2 * positions * w_ih_shape[0] * (w_ih_shape[1] + w_hh_shape[1])


def _rnn_layer_backward_flops(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """Its backward: the gradients of the layer's input and of its weights, each the forward's products."""
    return 2 * _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape)


# nn.LSTM on a padded CPU tensor runs one fused kernel per layer, which FlopCounterMode has no formula
# for; a packed one runs per-step products it already counts.
RNN_FORMULAS = {torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops,
                torch.ops.aten.mkldnn_rnn_layer_backward: _rnn_layer_backward_flops}


def step_flops(model: nn.Module, batch: Any) -> int:
    """FLOPs of one training step's forward and backward (matrix products only; see the module doc)."""
    with FlopCounterMode(display=False, custom_mapping=RNN_FORMULAS) as counter:
        model.training_step(batch, 1).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def gemm_rate() -> float:
    """FLOP/s of this machine's fastest single-precision product among a few large shapes at this
    process's threads, each the fastest of 5."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 1024, 1024), (2304, 512, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * n / min(times))
    return best


def measure(task: str, data_root: Path, steps: int, warmup: int, reps: int) -> list[dict]:
    """Each arm's training step (ms, median over the repetitions) and the step's FLOPs."""
    arms = {d: build(task, data_root, d) for d in ("on", "off")}
    data = batches(arms["on"][1], warmup + steps)  # both arms step through the same batches
    times: dict[str, list[float]] = {"on": [], "off": []}
    for rep in range(reps):
        for d in ("on", "off") if rep % 2 == 0 else ("off", "on"):
            preset, _, model, opt = arms[d]
            clip = clip_of(preset)
            for b in data[:warmup]:
                one_step(model, opt, b, clip)
            t0 = time.perf_counter()
            for b in data[warmup:]:
                one_step(model, opt, b, clip)
            times[d].append((time.perf_counter() - t0) * 1000 / steps)
    preset, dm, model, _ = arms["on"]
    flops = statistics.mean(step_flops(model, b) for b in data[warmup:])  # the off arm's products are the same
    per_epoch, epochs = len(dm.train_dataloader()), int(preset.trainer["max_epochs"])
    return [{"task": task, "preset": "quick", "dropout": d, "steps_per_epoch": per_epoch, "epochs": epochs,
             "ms_per_step": statistics.median(times[d]), "ms_per_step_runs": " ".join(f"{t:.1f}" for t in times[d]),
             "flops": flops} for d in ("on", "off")]


def finish(row: dict, rate: float) -> dict:
    """The row as written: its run's seconds of steps, and its arithmetic beside `rate` (FLOP/s)."""
    ms, flops = row["ms_per_step"], row["flops"]
    run_steps = row["steps_per_epoch"] * row["epochs"]
    achieved = flops / (ms / 1000)  # FLOP/s
    return {**{k: v for k, v in row.items() if k != "flops"}, "ms_per_step": f"{ms:.1f}",
            "steps_s": f"{ms / 1000 * run_steps:.0f}", "gflop_per_step": f"{flops / 1e9:.2f}",
            "gflops": f"{achieved / 1e9:.0f}", "gemm_gflops": f"{rate / 1e9:.0f}",
            "share_of_gemm_rate": f"{achieved / rate:.2f}", "at_gemm_rate_s": f"{flops * run_steps / rate:.0f}"}


def summary(rows: list[dict]) -> str:
    """The eight runs together: their steps' time, and their arithmetic, which does not depend on the
    machine, beside the rate the warm budget would need."""
    steps = sum(float(r["steps_s"]) for r in rows) / 60
    per_task = ", ".join(f"{t} {sum(float(r['steps_s']) for r in rows if r['task'] == t) / 60:.1f}"
                         for t in dict.fromkeys(r["task"] for r in rows))
    flops = sum(float(r["gflop_per_step"]) * 1e9 * int(r["steps_per_epoch"]) * int(r["epochs"]) for r in rows)
    rate = float(rows[0]["gemm_gflops"]) * 1e9
    return (f"make bench's {len(rows)} runs: training steps alone {steps:.1f} min ({per_task}); their arithmetic "
            f"{flops / 1e12:.0f} TFLOP, {flops / rate / 60:.1f} min at this machine's fastest product rate "
            f"({rate / 1e9:.0f} GFLOP/s); the warm budget of {BUDGET_WARM_MIN:g} min needs "
            f"{flops / (BUDGET_WARM_MIN * 60) / 1e9:.0f} GFLOP/s for every product, before validation and test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per arm and repetition")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions (on off, off on, ...)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    allocator.keep_freed_memory()  # as `bench run` does before the first large tensor
    measured, rates = [], []
    for task in args.tasks:
        rates.append(gemm_rate())  # before each task and after the last: the machine's speed drifts
        measured += measure(task, args.data_root, args.steps, args.warmup, args.reps)
        print(f"{task}: ms per step " + ", ".join(f"{r['dropout']} {r['ms_per_step']:.1f}" for r in measured[-2:]),
              flush=True)
    rates.append(gemm_rate())
    rate = max(rates)  # the fastest the machine showed: the most a step's products could run at
    print("matrix-product rate, GFLOP/s, before each task and after: " + " ".join(f"{r / 1e9:.0f}" for r in rates))
    rows = [{**finish(r, rate), "gemm_gflops_runs": " ".join(f"{x / 1e9:.0f}" for x in rates), "threads": args.threads, "device": device_label(torch.device("cpu")),
             "git_commit": git_commit(), "command": shlex.join(["python", *sys.argv])} for r in measured]
    print(summary(rows), flush=True)
    if args.out:
        write_rows_atomic(args.out, rows)


if __name__ == "__main__":
    main()
