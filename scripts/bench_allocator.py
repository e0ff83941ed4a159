"""Each quick preset's `bench run` with freed memory kept in the process (benchmark/allocator.py,
what `bench run` does) against glibc's malloc as it is (`RNNREG_MALLOC=default`), side by side.

Each side is the real command, `bench run --task T --preset quick --dropout on --max-steps N`
(bench_jobs.py's steps: about a minute of training each), into a fresh folder, timed from start to
exit, with its peak resident memory (the memory kept is memory not returned); its training
tokens/s comes from its results row. The data caches are warm first. The order
of the two sides alternates from task to task and from one repetition to the next. The setting
changes no number: both sides' test metrics are in the CSV, and must agree.

    python scripts/bench_allocator.py --data-root ../shared/data --reps 2 --out results/throughput-allocator.csv
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_jobs import STEPS, sweep  # noqa: E402

from benchmark import allocator  # noqa: E402
from benchmark.results import read_rows, write_rows_atomic  # noqa: E402
from benchmark.runner import device_label, git_commit  # noqa: E402
from tasks import registry  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="CSV of the runs (default: print only)")
    args = ap.parse_args()
    base_env = allocator.without_other_settings(os.environ)  # both sides differ in the setting alone
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:  # warm the caches: one short run, not timed
            sweep(task, 2, 1, args.data_root, Path(tmp) / f"warm-{task}", dropout="on")
        for rep in range(args.reps):
            for i, task in enumerate(args.tasks):
                order = ("keep", "default") if (i + rep) % 2 == 0 else ("default", "keep")
                walls = {}
                for malloc in order:
                    folder = Path(tmp) / f"{task}-{rep}-{malloc}"
                    peak: list[float] = []
                    walls[malloc], rates = sweep(task, STEPS[task], 1, args.data_root, folder, dropout="on",
                                                 env={allocator.ENV: malloc}, peak=peak, base_env=base_env)
                    metric = registry.get(task).headline
                    row = read_rows(folder / "results" / "runs.csv")[0]
                    print(f"{task} rep {rep} malloc {malloc}: {walls[malloc]:.1f} s, peak {peak[0]:.0f} MB "
                          f"(training tokens/s {', '.join(rates)}; {metric} {row[metric]})", flush=True)
                    rows.append({"task": task, "rep": rep, "malloc": malloc, "ran_first": order[0],
                                 "steps": STEPS[task], "wall_s": f"{walls[malloc]:.1f}",
                                 "tokens_per_s": row["tokens_per_s"], "peak_rss_mb": f"{peak[0]:.0f}",
                                 "metric": metric, "value": row[metric]})
                rows[-1]["speedup"] = rows[-2]["speedup"] = f"{walls['default'] / walls['keep']:.3f}"
    for row in rows:
        row |= {"threads": torch.get_num_threads(), "device": device_label(torch.device("cpu")),
                "commit": git_commit(), "command": "python " + shlex.join(["scripts/bench_allocator.py", *sys.argv[1:]])}
    if args.out:
        write_rows_atomic(args.out, rows)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
