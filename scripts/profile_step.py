"""Where one PTB training step spends its time, with the output layer's loss fused and not, and
what reading the test stream in long windows saves: the profiles behind the training-step changes.

    python scripts/profile_step.py --data-root ../shared/data --malloc default --out results/profile-step.md
    python scripts/profile_step.py --data-root ../shared/data --malloc keep --out results/profile-step-kept-memory.md

The step is the module's own (`LanguageModel._nll` times the batch's columns, backward, clip,
SGD) on the small preset's shape, outside Lightning, under torch.profiler; the table lists the
operators by self CPU time per step. The test stream is scored both ways on a fresh model with the
preset's windows and with the evaluation windows the DataModule now uses. `--malloc keep` profiles
with freed memory kept in the process, as `bench run` sets it (benchmark/allocator.py); `default`
with glibc as it is. The minor page faults per step say how much of the step the kernel spent
mapping and zero-filling fresh pages, time the profiler books to the operator that first writes them.

Two tables need no profiler (which adds page faults of its own on some machines): the step's phases
timed with a clock, and the floor the step's math sets, each operation it cannot do without timed
alone on the step's shapes (the output layer's three matrix products, the LSTM forward and backward,
log-softmax and its backward). The step's time over that floor bounds from above what any change
that keeps the math (less allocation, fewer passes, less Python, no Lightning) could gain on this
machine; the embedding, clipping and SGD are left out of the floor, so the true bound is lower.

    python scripts/profile_step.py --data-root ../shared/data --out results/archive/profile-step-xeon-2026-12-03/profile-step.md
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import allocator  # noqa: E402
from benchmark.config import load_preset  # noqa: E402
from datamodules import ptb  # noqa: E402
from tasks.language_model import LanguageModel  # noqa: E402


def build(data_root: Path, preset_name: str, fused: bool) -> tuple[ptb.PTBDataModule, LanguageModel]:
    preset = load_preset("ptb", preset_name)
    torch.manual_seed(0)
    dm = ptb.PTBDataModule(data_root, download=False, **preset.data)
    dm.setup("fit")
    model = LanguageModel(**{**preset.model, "dropout": 0.0, "fused_loss": fused}, **dm.model_kwargs())
    return dm, model


def step_profile(dm: ptb.PTBDataModule, model: LanguageModel, steps: int, warmup: int = 10) -> tuple[str, float, float]:
    """(the operator table, ms per step, minor page faults per step) over `steps` steps after `warmup`."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = endless(dm)

    def one() -> None:
        x, y = next(batches)
        loss = model._nll((x, y), "train") * y.size(0)  # the paper's scale, as training_step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    for _ in range(warmup):
        one()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(steps):
            one()
        ms = (time.perf_counter() - start) * 1000 / steps
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)
    return table, ms, faults


def endless(dm: ptb.PTBDataModule) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches epoch after epoch: a small preset has fewer than the steps timed."""
    while True:
        yield from dm.train_dataloader()


def phases(dm: ptb.PTBDataModule, model: LanguageModel, steps: int, warmup: int = 10) -> dict[str, float]:
    """ms per step of each phase of the same step as `step_profile`, by the clock, no profiler."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = endless(dm)
    total = dict.fromkeys(("forward and loss", "backward", "clip", "SGD"), 0.0)
    for i in range(warmup + steps):
        x, y = next(batches)
        t0 = time.perf_counter()
        loss = model._nll((x, y), "train") * y.size(0)
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= warmup:
            for k, dt in zip(total, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                total[k] += dt
    return {k: v * 1000 / steps for k, v in total.items()}


def math_floor(dm: ptb.PTBDataModule, model: LanguageModel, reps: int = 50) -> dict[str, float]:
    """ms per step of each operation the step's math needs, forward and backward, timed alone on the
    step's shapes: what no change that keeps the math can avoid."""
    T, B = dm.bptt, dm.batch_size
    H, V = model.head.in_features, model.head.out_features
    lstm = model.rnn.lstm
    x = torch.randn(T, B, H, requires_grad=True)
    h = torch.randn(T * B, H, requires_grad=True)
    logits = torch.randn(T * B, V, requires_grad=True)
    y = torch.randint(V, (T * B,))
    g_out, g_rnn = torch.randn(T * B, V), torch.randn(T, B, H)

    def fresh(*tensors: torch.Tensor) -> None:  # as the step's zero_grad(set_to_none): no accumulation
        for t in tensors:
            t.grad = None

    def head() -> None:
        fresh(h, model.head.weight, model.head.bias)
        F.linear(h, model.head.weight, model.head.bias).backward(g_out)

    def rnn() -> None:
        fresh(x, *lstm.parameters())
        out, _ = lstm(x)
        out.backward(g_rnn)

    def loss() -> None:
        fresh(logits)
        F.nll_loss(F.log_softmax(logits, -1), y).backward()

    floor = {}
    for name, fn in (("output layer: 3 matrix products", head), ("LSTM (oneDNN), 2 layers", rnn),
                     ("log-softmax and NLL", loss)):
        for _ in range(5):
            fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        floor[name] = (time.perf_counter() - t0) * 1000 / reps
    gflop = 3 * 2 * T * B * H * V / 1e9
    floor["output layer: GFLOP/s"] = gflop / (floor["output layer: 3 matrix products"] / 1000)
    model.zero_grad(set_to_none=True)
    return floor


@torch.no_grad()
def test_stream(dm: ptb.PTBDataModule, model: LanguageModel, window: int) -> tuple[float, float]:
    """(perplexity, seconds) of the test split as one column read in `window`-token windows."""
    model.eval()
    grid = ptb.batchify(dm.ids["test"], 1)
    windows = ptb.BPTTWindows(grid, window, 0, 1, drop_last=False)
    state, nll, n = None, 0.0, 0
    start = time.perf_counter()
    for x, y in windows:
        logits, state = model(x, state)
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        n += y.numel()
    return math.exp(nll / n), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--malloc", default="keep", choices=("keep", "default"),
                    help="freed memory kept in the process, as `bench run` sets it, or glibc as it is")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ[allocator.ENV] = args.malloc
    kept = allocator.keep_freed_memory()
    lines = [f"# One PTB training step, profiled ({args.preset} shape, {torch.get_num_threads()} threads, "
             f"{'freed memory kept' if kept else 'glibc malloc as it is'})\n",
             f"`{shlex.join(['python', *sys.argv])}`\n"]
    for fused in (False, True):
        dm, model = build(args.data_root, args.preset, fused)
        table, ms, faults = step_profile(dm, model, args.steps)
        lines += [f"## Output layer and loss {'fused' if fused else 'as two steps (the default)'}: {ms:.1f} ms and "
                  f"{faults:.0f} minor page faults per step\n", "```", table.rstrip(), "```\n"]
        print(f"fused={fused}: {ms:.1f} ms/step, {faults:.0f} faults/step", flush=True)
    dm, model = build(args.data_root, args.preset, False)
    phase = phases(dm, model, 4 * args.steps)
    floor = math_floor(dm, model)
    step_ms, floor_ms = sum(phase.values()), sum(v for k, v in floor.items() if "GFLOP" not in k)
    lines += [f"## The default step by the clock ({4 * args.steps} steps, no profiler), and its math alone\n",
              "| phase | ms per step |", "|---|---:|", *(f"| {k} | {v:.2f} |" for k, v in phase.items()),
              f"| **step** | **{step_ms:.2f}** |\n",
              "| the math's floor, each operation alone, forward and backward | ms per step |", "|---|---:|",
              *(f"| {k} | {v:.2f} |" for k, v in floor.items() if "GFLOP" not in k),
              f"| **floor** | **{floor_ms:.2f}** |\n",
              f"The output layer's products run at {floor['output layer: GFLOP/s']:.0f} GFLOP/s. The step takes "
              f"{step_ms / floor_ms:.2f}x its floor: more than any change keeping the math could speed this loop "
              "on this machine (the floor leaves out the embedding, clipping and SGD, which the math needs "
              "too).\n"]
    print(f"phases {phase}, floor {floor}, step/floor {step_ms / floor_ms:.2f}", flush=True)
    dm, model = build(args.data_root, args.preset, True)
    short = test_stream(dm, model, dm.bptt)
    long = test_stream(dm, model, ptb.EVAL_WINDOW_TOKENS)
    lines += ["## The test stream, one column, an untrained model\n",
              "| windows | perplexity | seconds |", "|---|---:|---:|",
              f"| {dm.bptt} tokens (before) | {short[0]:.6f} | {short[1]:.2f} |",
              f"| {ptb.EVAL_WINDOW_TOKENS} tokens | {long[0]:.6f} | {long[1]:.2f} |"]
    print(f"test stream: {short} vs {long}")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
