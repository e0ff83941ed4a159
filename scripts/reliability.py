"""kill -9 at each point of a run, resume it, and compare with the run that was never interrupted.

    python scripts/reliability.py --data-root ../shared/data --out results/reliability.md   # every point
    python scripts/reliability.py --data-root DIR --points mid-epoch checkpoint-write         # a short form

Each point runs `bench run` in a child process that sends itself SIGKILL there (a real kill -9: no
handler runs, nothing is flushed or cleaned up), then the same command with --resume. The point
passes when the resumed run's row equals the uninterrupted run's on every metric, steps and epochs,
and the results file holds no row of the run between the kill and the resume (for `results-row`,
killed just after the row was written, exactly one row before and after), and its CSV logs hold
the same validation perplexity for every epoch (the learning curve survives the resume). The
default run is ptb/quick made small (2x32, 3 epochs) on the first `--lines` lines of each real PTB
split (copied to the work folder): the points, not the model, are tested, and PTB's test protocol
(batch 1, state carried) over the full test split would take longer than all the points.

    mid-epoch          halfway through the second epoch's training batches
    validation         at the second epoch's first validation batch (before its checkpoint)
    checkpoint-write   halfway through writing the second epoch's last.ckpt (to its temporary file)
    test               at the first test batch, after training ended
    results-row        just after the results row was appended, before the run folder is marked finished
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark import runner  # noqa: E402
from benchmark.cli import main as bench  # noqa: E402
from benchmark.results import RUNS_FILE, metric_logs, read_rows  # noqa: E402

POINTS = ("mid-epoch", "validation", "checkpoint-write", "test", "results-row")
SMALL = ["--set", "model.hidden_size=32", "--set", "trainer.max_epochs=3"]
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
COMPARED = ("steps", "epochs", "best_epoch")  # besides every train_/valid_/test_/best_test_ metric


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    def __init__(self, point: str) -> None:
        self.point = point

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.point == "mid-epoch" and trainer.current_epoch == 1 and batch_idx == trainer.num_training_batches // 2:
            _kill()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.point == "validation" and not trainer.sanity_checking and trainer.current_epoch == 1:
            _kill()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.point == "test":
            _kill()


def child(point: str | None, argv: list[str]) -> int:
    """`bench run argv` with the fault for `point` in place."""
    if point in ("mid-epoch", "validation", "test"):
        build_callbacks = runner.callbacks
        runner.callbacks = lambda r, kw: [*build_callbacks(r, kw), KillAt(point)]
    elif point == "checkpoint-write":
        save = torch.save

        def half_then_kill(obj, f, *args, **kwargs):
            name = getattr(f, "name", str(f))
            if ".last.ckpt." in str(name) and isinstance(obj, dict) and obj.get("epoch") == 1:
                buf = io.BytesIO()
                save(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                _kill()
            return save(obj, f, *args, **kwargs)

        torch.save = half_then_kill
    elif point == "results-row":
        append = runner.append_row

        def append_then_kill(*args, **kwargs):
            path = append(*args, **kwargs)
            _kill()
            return path

        runner.append_row = append_then_kill
    return bench(argv)


def _bench_args(work: Path, data_root: Path, extra: list[str], resume: bool) -> list[str]:
    return ["run", "--task", "ptb", "--preset", "quick", "--dropout", "on", "--seed", "0", "--logger", "csv",
            "--data-root", str(data_root), "--runs-dir", str(work / "runs"), "--results-dir", str(work / "results"),
            *extra, *(["--resume"] if resume else [])]


def _spawn(point: str | None, work: Path, data_root: Path, extra: list[str], resume: bool = False) -> int:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", point or "none", "--", *_bench_args(work, data_root, extra, resume)]
    with open(work / f"log-{'resume' if resume else 'first'}.txt", "w") as log:
        env = {**os.environ, "WANDB_MODE": "disabled"}
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def _rows(work: Path) -> list[dict[str, str]]:
    return read_rows(work / "results" / RUNS_FILE)


def _same(a: dict[str, str], b: dict[str, str]) -> list[str]:
    keys = [k for k in a if (k.startswith(("train_", "valid_", "test_", "best_test_")) or k in COMPARED)
            and k != "train_s_per_epoch"]  # a timing, not a result
    return [f"{k}: {a[k]} vs {b.get(k)}" for k in keys if a[k] != b.get(k)]


def _valid_curve(work: Path) -> dict[str, str]:
    """epoch -> valid_ppl over the run's CSV logs (a resumed run's later value for an epoch wins)."""
    curve: dict[str, str] = {}
    for path in [p for run_dir in (work / "runs").glob("*") for p in metric_logs(run_dir)]:
        with open(path, newline="") as f:
            curve.update({r["epoch"]: r["valid_ppl"] for r in csv.DictReader(f) if r.get("valid_ppl")})
    return curve


def check(point: str, straight: dict[str, str], work: Path, data_root: Path, extra: list[str]) -> dict[str, str]:
    killed = _spawn(point, work, data_root, extra)
    after_kill = _rows(work)
    partial = len(list(work.glob("runs/*/checkpoints/.*.tmp")))  # a checkpoint write the kill cut short
    resumed_rc = _spawn(None, work, data_root, extra, resume=True)
    rows = _rows(work)
    diffs = _same(straight, rows[-1]) if rows else ["no row after the resume"]
    if list(work.glob("runs/*/checkpoints/.*.tmp")):
        diffs.append("a cut-short checkpoint file is still there after the resume")
    curve, expected_curve = _valid_curve(work), _valid_curve(work.parent / "straight")
    if curve != expected_curve:
        diffs.append(f"valid_ppl per epoch in the CSV logs: {curve} vs {expected_curve}")
    ok = (killed == -signal.SIGKILL and len(after_kill) == (point == "results-row") and resumed_rc == 0
          and len(rows) == 1 and not diffs)
    return {"point": point, "killed": "SIGKILL" if killed == -signal.SIGKILL else f"exit {killed} (not killed)",
            "rows_after_kill": str(len(after_kill)), "partial_files": str(partial), "resume_exit": str(resumed_rc),
            "rows_after_resume": str(len(rows)),
            "test_ppl": f"{straight.get('test_ppl')} / {rows[-1].get('test_ppl') if rows else ''}",
            "differences": "; ".join(diffs) or "none", "verdict": "identical" if ok else "FAILED"}


def markdown(results: list[dict[str, str]], command: str, straight: dict[str, str]) -> str:
    lines = ["# Reliability: kill -9 at each point of a run, then --resume", "",
             "<!-- generated by scripts/reliability.py; do not edit -->",
             f"`{command}` (commit {straight.get('git_commit', '?')}, {straight.get('device', '?')}).", "",
             "Each point: a child `bench run` sends itself SIGKILL there, then the same command runs with `--resume`. "
             "*identical*: the resumed row equals the uninterrupted run's on every train/valid/test metric, the "
             "best-checkpoint metrics, steps, epochs and best epoch, its CSV logs hold the same validation perplexity "
             "for every epoch, and the results file held no row of the run between the kill and the resume "
             "(`results-row`: its one complete row, replaced on resume).", "",
             "| point | killed | rows after kill | cut-short files after kill | resume exit | rows after resume | "
             "test ppl: straight / resumed | differences | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['point']} | {r['killed']} | {r['rows_after_kill']} | {r['partial_files']} | "
              f"{r['resume_exit']} | {r['rows_after_resume']} | {r['test_ppl']} | {r['differences']} | "
              f"**{r['verdict']}** |" for r in results]
    return "\n".join(lines) + "\n"


def run_points(points: list[str], data_root: Path, extra: list[str],
               work: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    if _spawn(None, work / "straight", data_root, extra) != 0:
        raise SystemExit(f"the uninterrupted run failed: see {work / 'straight' / 'log-first.txt'}")
    straight = _rows(work / "straight")[-1]
    return straight, [check(p, straight, work / p, data_root, extra) for p in points]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        point = None if argv[1] == "none" else argv[1]
        return child(point, argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("RNNREG_DATA_ROOT", "data")))
    p.add_argument("--points", nargs="+", choices=POINTS, default=list(POINTS))
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="SECTION.KEY=VALUE",
                   help="preset overrides of the run (default: ptb/quick made small, see the module docstring)")
    p.add_argument("--lines", type=int, default=500,
                   help="the first LINES lines of each PTB split (default 500); 0: the whole files, in place")
    p.add_argument("--work-dir", type=Path, help="where the runs go (default: a temporary folder, removed after)")
    p.add_argument("--out", type=Path, help="write the table here (Markdown)")
    args = p.parse_args(argv)
    extra = SMALL if args.overrides is None else [x for o in args.overrides for x in ("--set", o)]
    with tempfile.TemporaryDirectory(prefix="rnnreg-reliability-") as tmp:
        work = args.work_dir or Path(tmp)
        data_root = args.data_root
        if args.lines:
            data_root = work / "data"
            (data_root / "ptb").mkdir(parents=True, exist_ok=True)
            for name in PTB_FILES:
                with open(args.data_root / "ptb" / name, encoding="utf-8") as f:
                    head = [line for _, line in zip(range(args.lines), f)]
                (data_root / "ptb" / name).write_text("".join(head), encoding="utf-8")
        straight, results = run_points(args.points, data_root, extra, work)
    command = shlex.join(["python", "scripts/reliability.py", *argv])
    text = markdown(results, command, straight)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if all(r["verdict"] == "identical" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
