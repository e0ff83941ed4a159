"""One LSTM layer's forward and backward: the step loop (tasks/nn/regularizers.py) against the LSTM
kernel, by sequence length, in one run. The loop is what variational, zoneout and recurrent dropout
need; its cost grows with the number of steps, which is why speech (hundreds of frames) feels it most.

    python scripts/bench_step_loop.py --lengths 20 100 600
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.nn.regularizers import Regularization, lstm_steps  # noqa: E402


def best_of(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn().sum().backward()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[20, 100, 600])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(args.input, args.hidden)
    weights = tuple(lstm._flat_weights)
    zeros = torch.zeros(args.batch, args.hidden)
    reg = Regularization(hidden=0.3)  # Gal's recurrent mask: the step loop, one mask for all gates
    print(f"{'steps':>6} {'kernel ms':>10} {'loop ms':>9} {'loop/kernel':>12}")
    for steps in args.lengths:
        x = torch.randn(steps, args.batch, args.input)
        kernel = best_of(lambda: lstm(x)[0], args.reps)
        loop = best_of(lambda: lstm_steps(x, (zeros, zeros), weights, reg, training=True)[0], args.reps)
        print(f"{steps:>6} {kernel * 1000:>10.0f} {loop * 1000:>9.0f} {loop / kernel:>12.1f}")


if __name__ == "__main__":
    main()
