"""Two runs one after another with every thread, against the same two runs side by side
(`bench run --jobs 2`, the threads shared out), per task, in one process tree.

Each side is the real command: `bench run --task T --preset quick --dropout on,off --max-steps N`
into a fresh folder, timed from start to exit (process start, data set-up, training, the test).
The data caches are warm first, so neither side computes features. Within a repetition the order
of the sides alternates from task to task, and from one repetition to the next. Training tokens/s
of each run (its results row) is given beside the walls: under --jobs 2 each run trains slower,
and the two together faster.

    python scripts/bench_jobs.py --data-root ../shared/data --out results/throughput-jobs.csv
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.results import read_rows, write_rows_atomic  # noqa: E402
from benchmark.runner import device_label, git_commit  # noqa: E402

# Steps per run: about a minute of training each on a 2-core machine of this kind.
STEPS = {"ptb": 300, "speech": 60, "translation": 150, "captioning": 100}


def sweep(task: str, steps: int, jobs: int, data_root: Path, folder: Path, dropout: str = "on,off",
          env: dict[str, str] | None = None, peak: list[float] | None = None,
          base_env: Mapping[str, str] | None = None) -> tuple[float, list[str]]:
    """Wall seconds of one `bench run` of the task's on and off runs (or `dropout`), and their
    training tokens/s; `env`: variables set for it on top of `base_env` (default: this process's);
    `peak`, if given, gets the command's peak resident memory in MB (its largest process)."""
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "--task", task, "--preset", "quick", "--dropout", dropout,
           "--max-steps", str(steps), "--jobs", str(jobs), "--data-root", str(data_root), "--logger", "csv",
           "--runs-dir", str(folder / "runs"), "--results-dir", str(folder / "results"),
           "--set", "trainer.enable_progress_bar=false"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stderr.txt", "w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                env={**(os.environ if base_env is None else base_env), "WANDB_MODE": "disabled", **(env or {})})
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this command's own resource use, peak memory included
        except BaseException:  # Ctrl-C or an error here: leave no training running behind
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"{shlex.join(cmd)} failed:\n{err.read()[-3000:]}")
    if peak is not None:
        peak.append(usage.ru_maxrss / 1024)  # KB on Linux
    rows = read_rows(folder / "results" / "runs.csv")
    return wall, [f"{r['dropout']} {r['tokens_per_s']}" for r in sorted(rows, key=lambda r: r["dropout"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="CSV of the runs (default: print only)")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:  # warm the caches: one short run, not timed
            sweep(task, 2, 1, args.data_root, Path(tmp) / f"warm-{task}")
        for rep in range(args.reps):
            for i, task in enumerate(args.tasks):
                order = (1, 2) if (i + rep) % 2 == 0 else (2, 1)
                walls = {}
                for jobs in order:
                    walls[jobs], rates = sweep(task, STEPS[task], jobs, args.data_root, Path(tmp) / f"{task}-{rep}-{jobs}")
                    print(f"{task} rep {rep} jobs {jobs}: {walls[jobs]:.1f} s (training tokens/s {', '.join(rates)})",
                          flush=True)
                    rows.append({"task": task, "rep": rep, "jobs": jobs, "ran_first": order[0], "threads_per_run": max(1, threads // jobs),
                                 "steps": STEPS[task], "wall_s": f"{walls[jobs]:.1f}", "tokens_per_s": "; ".join(rates)})
                rows[-1]["speedup"] = rows[-2]["speedup"] = f"{walls[1] / walls[2]:.3f}"
    for row in rows:
        row |= {"device": device_label(torch.device("cpu")), "commit": git_commit(),
                "command": "python " + shlex.join(["scripts/bench_jobs.py", *sys.argv[1:]])}
    if args.out:
        write_rows_atomic(args.out, rows)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
