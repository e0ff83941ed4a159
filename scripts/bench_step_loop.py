"""One LSTM layer's forward and backward: the step loop (tasks/nn/regularizers.py) against the LSTM
kernel, by sequence length, in one run. The loop is what variational, zoneout and recurrent dropout
need; its cost grows with the number of steps, which is why speech (hundreds of frames) feels it most.

`--compile` adds the same `lstm_steps` under `torch.compile` (inductor, static shapes): Dynamo
unrolls the Python loop over time, so each sequence length is its own compilation, timed here as
`compile_s` (the first call, forward and backward). Repetitions rotate the order of the sides.

    python scripts/bench_step_loop.py --lengths 20 100 600
    python scripts/bench_step_loop.py --lengths 20 35 100 --compile --out results/step-loop.csv
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_label, git_commit  # noqa: E402
from tasks.nn.regularizers import Regularization, lstm_steps  # noqa: E402


def seconds(fn: Callable[[], torch.Tensor]) -> float:
    t0 = time.perf_counter()
    fn().sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[20, 100, 600])
    ap.add_argument("--batch", type=int, default=20, help="default: PTB small's batch")
    ap.add_argument("--input", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time lstm_steps under torch.compile")
    ap.add_argument("--out", type=Path, default=None, help="CSV of the medians")
    args = ap.parse_args()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(args.input, args.hidden)
    weights = tuple(lstm._flat_weights)
    zeros = torch.zeros(args.batch, args.hidden)
    reg = Regularization(hidden=0.3)  # Gal's recurrent mask: the step loop, one mask for all gates
    rows = []
    for steps in args.lengths:
        x = torch.randn(steps, args.batch, args.input)
        sides = {"kernel": lambda: lstm(x)[0],
                 "loop": lambda: lstm_steps(x, (zeros, zeros), weights, reg, training=True)[0]}
        compile_s = None
        if args.compile:
            torch._dynamo.reset()  # each length compiles from nothing, as a new run would
            compiled = torch.compile(lstm_steps, dynamic=False)
            sides["compiled"] = lambda: compiled(x, (zeros, zeros), weights, reg, training=True)[0]
            compile_s = seconds(sides["compiled"])
        names = list(sides)
        times: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(args.reps):
            for n in names[rep % len(names):] + names[:rep % len(names)]:
                times[n].append(seconds(sides[n]))
        med = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
        row = {"steps": steps, "batch": args.batch, "input": args.input, "hidden": args.hidden,
               "kernel_ms": f"{med['kernel'] * 1e3:.1f}", "loop_ms": f"{med['loop'] * 1e3:.1f}",
               "loop_over_kernel": f"{med['loop'] / med['kernel']:.2f}"}
        if args.compile:
            row |= {"compiled_ms": f"{med['compiled'] * 1e3:.1f}",
                    "compiled_over_kernel": f"{med['compiled'] / med['kernel']:.2f}",
                    "loop_over_compiled": f"{med['loop'] / med['compiled']:.2f}", "compile_s": f"{compile_s:.1f}"}
        row |= {"reps": args.reps, "threads": torch.get_num_threads(), "device": device_label(torch.device("cpu")),
                "commit": git_commit(), "command": shlex.join(["python", "scripts/bench_step_loop.py", *sys.argv[1:]])}
        rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items() if k not in ("device", "commit", "command")), flush=True)
    if args.out:
        write_rows_atomic(args.out, rows, list(rows[0]))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
