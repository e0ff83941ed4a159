"""What the evaluation changes of issue 17 save in one `make bench`, measured side by side on the
trained quick models of a `make bench` folder (seed 0, dropout on, the last-epoch checkpoints).

Two changes touch every quick run; each is timed both ways, in alternating order (A B, B A, ...):

    translation, captioning   one validation pass: perplexity alone (`valid_decode: false`, the
                              presets now) against perplexity and greedy decoding of the whole
                              validation set (`valid_decode: true`, what ran every epoch before)
    ptb                       one validation pass and one test (both of its test layouts): windows
                              of 2,048 tokens (datamodules/ptb.EVAL_WINDOW_TOKENS, now) against
                              windows of the training bptt (EVAL_WINDOW_TOKENS = 0, before)

Each pass is `Trainer.validate` / `Trainer.test` as a run calls them, Trainer set-up included. A
run validates once per epoch and tests twice (the last and the best-by-validation checkpoints), so
one run's saving is the validation difference times the epochs, plus, for PTB, twice the test
difference; `make bench` runs each task twice (on and off). A trained model's greedy outputs are
as long as they will be at the run's end; an early epoch's may be longer or shorter. Models are
read as `bench run` and `bench eval` read them, with freed memory kept in the process
(benchmark/allocator.py; `malloc` column) unless RNNREG_MALLOC=default.

    python scripts/bench_eval_cost.py --runs-dir runs/bench-quick --data-root ../shared/data \\
        --out results/throughput-eval.csv
    python scripts/bench_eval_cost.py --runs-dir runs/bench-quick --data-root ../shared/data --tasks ptb \
        --out results/throughput-eval-ptb-kept-memory.csv
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datamodules.ptb as ptb  # noqa: E402
from benchmark import allocator, trained  # noqa: E402
from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_label, git_commit  # noqa: E402


def run_folder(runs_dir: Path, task: str) -> Path:
    found = sorted(runs_dir.glob(f"{task}-quick-*-dropout_on-seed0"))
    if len(found) != 1:
        raise SystemExit(f"{runs_dir}: expected one {task}-quick-*-dropout_on-seed0 run folder, found {len(found)}; "
                         f"give the RUNS_DIR of a finished `make bench` (--runs-dir)")
    return found[0]


def seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def trainer() -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


def alternate(settings: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each setting's times over `reps` rounds, the order reversed every other round."""
    times: dict[str, list[float]] = {name: [] for name in settings}
    for rep in range(reps):
        for name in (list(settings) if rep % 2 == 0 else list(settings)[::-1]):
            times[name].append(settings[name]())
    return times


def text_generator(folder: Path, data_root: Path, reps: int) -> dict[str, list[float]]:
    t = trained.load(folder)
    dm = t.datamodule(data_root)
    dm.setup("validate")

    def validate(decode: bool) -> Callable[[], float]:
        def go() -> float:
            t.model.hparams.valid_decode = decode
            return seconds(lambda: trainer().validate(t.model, datamodule=dm, verbose=False))
        return go
    return alternate({"before": validate(True), "after": validate(False)}, reps)


def language_model(folder: Path, data_root: Path, reps: int) -> dict[str, dict[str, list[float]]]:
    t = trained.load(folder)
    out: dict[str, dict[str, list[float]]] = {}
    for stage in ("validate", "test"):
        def window(tokens: int) -> Callable[[], float]:
            def go() -> float:
                ptb.EVAL_WINDOW_TOKENS = tokens  # read when the loaders are built, in setup's dataloaders
                dm = t.datamodule(data_root)
                dm.setup(stage)
                run = trainer().validate if stage == "validate" else trainer().test
                return seconds(lambda: run(t.model, datamodule=dm, verbose=False))
            return go
        default = ptb.EVAL_WINDOW_TOKENS
        out[stage] = alternate({"before": window(0), "after": window(default)}, reps)
        ptb.EVAL_WINDOW_TOKENS = default
    return out


def epochs_of(folder: Path) -> int:
    return int(yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["max_epochs"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, required=True, help="a finished `make bench` RUNS_DIR")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--tasks", nargs="+", default=["translation", "captioning", "ptb"],
                    choices=("translation", "captioning", "ptb"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folders = {task: run_folder(args.runs_dir, task) for task in args.tasks}
    # (task, pass, how often a run makes it, {"before": [s], "after": [s]})
    measured = [(task, "validation: greedy decoding and perplexity / perplexity only", epochs_of(folders[task]),
                 text_generator(folders[task], args.data_root, args.reps))
                for task in args.tasks if task in ("translation", "captioning")]
    if "ptb" in folders:
        lm = language_model(folders["ptb"], args.data_root, args.reps)
        measured += [("ptb", "validation: windows of bptt / of 2,048 tokens", epochs_of(folders["ptb"]),
                      lm["validate"]),
                     ("ptb", "test, both layouts: windows of bptt / of 2,048 tokens", 2, lm["test"])]
    device, commit, command = device_label(torch.device("cpu")), git_commit(), shlex.join(["python", *sys.argv])
    rows = []
    for task, what, per_run, times in measured:
        before, after = (statistics.median(times[k]) for k in ("before", "after"))
        rows.append({"task": task, "preset": "quick", "pass": what, "threads": args.threads, "reps": args.reps,
                     "malloc": "kept" if allocator.keep_freed_memory() else "glibc",
                     "before_s": f"{before:.2f}", "after_s": f"{after:.2f}",
                     "before_runs": " ".join(f"{x:.2f}" for x in times["before"]),
                     "after_runs": " ".join(f"{x:.2f}" for x in times["after"]),
                     "ratio_before_over_after": f"{before / after:.3f}", "passes_per_run": per_run,
                     "saved_per_run_s": f"{(before - after) * per_run:.1f}",
                     "saved_per_make_bench_s": f"{(before - after) * per_run * 2:.1f}",  # on and off
                     "device": device, "git_commit": commit, "command": command})
        print(rows[-1], flush=True)
    total = sum(float(r["saved_per_make_bench_s"]) for r in rows)
    print(f"saved per make bench (one seed, on and off): {total:.0f} s", flush=True)
    if args.out:
        write_rows_atomic(args.out, rows)


if __name__ == "__main__":
    main()
