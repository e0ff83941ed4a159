"""A sweep: the runs one command plans (tasks x dropout x seeds), one after another or, with
`--jobs N`, N at a time in their own processes. One run's failure is reported and the others go
on; Ctrl+C stops the sweep, and `--resume` picks it up."""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmark import wandb_log
from benchmark.config import ZAREMBA, Preset, apply_dropout
from benchmark.logs import configure_logging
from benchmark.runner import RunOptions, finished_row, make_datamodule, run, run_name, settings_hash
from tasks.nn.errors import BenchError, RunInterrupted

__all__ = ["RunOptions", "describe", "run_all"]


def describe(preset: Preset, dropout: str, seed: int, trainer: dict[str, Any], data_root: Path, runs_dir: Path,
             run_dir: Path | None) -> str:
    """`--dry-run`: the run's settings hash, folder and state, and its resolved config."""
    dm = make_datamodule(preset, data_root)
    chash = settings_hash(preset, dm, trainer, data_root)
    absent = [p for p in dm.data_files() if not p.exists()]
    apply_dropout(preset, dropout)
    run_dir = run_dir or runs_dir / run_name(preset, dropout, seed, chash)
    state = ("finished: skipped with --resume" if finished_row(run_dir) else
             "resumes from last.ckpt" if (run_dir / "checkpoints" / "last.ckpt").exists() else "new")
    if absent:
        state += f"; {absent[0]} not downloaded yet: the hash changes once it is"
    resolved = {"config_file": str(preset.path), "model": preset.model, "data": preset.data,
                "trainer": {**preset.trainer, **{k: v for k, v in trainer.items() if v is not None}},
                "paper": preset.paper or None}
    reg = f" regularizer={preset.regularizer}" if dropout == "on" and preset.regularizer != ZAREMBA else ""
    return (f"# {preset.task}/{preset.name} dropout={dropout}{reg} seed={seed} config_hash={chash} -> {run_dir} "
            f"({state})\n" + yaml.safe_dump(resolved, sort_keys=False))


def label(preset: Preset, dropout: str) -> str:
    """`dropout_off`, `dropout_on` (the paper's), or the regularizer `dropout on` trains with."""
    return f"dropout_{dropout}" if dropout == "off" or preset.regularizer == ZAREMBA else preset.regularizer


def run_all(plan: list[tuple[Preset, str, int]], options: RunOptions, jobs: int = 1) -> int:
    """Every planned run with `options` (its dropout and seed set per run); 2 if any failed."""
    if jobs > 1 and len(plan) > 1:
        return _run_parallel(plan, options, jobs)
    outcomes: list[tuple[str, str]] = []  # (run, status)
    start = time.perf_counter()
    for preset, dropout, seed in plan:
        name = run_label(preset, dropout, seed)
        try:
            line, status = _one(preset, dataclasses.replace(options, dropout=dropout, seed=seed))
        except (KeyboardInterrupt, RunInterrupted):
            if len(plan) > 1:  # the user stopped the whole sweep, not one run
                print(_stopped(name, len(outcomes), len(plan)), file=sys.stderr)
            raise
        except Exception as err:  # noqa: BLE001 - a sweep reports one run's failure and goes on
            if len(plan) == 1:  # a lone run's error is the command's: the CLI prints it
                raise
            if not isinstance(err, BenchError):
                logging.getLogger("benchmark").exception("%s failed", name)
            print(f"bench: error: {name}: {err}", file=sys.stderr)
            line, status = None, "FAILED"
        if line:
            print(line)
        if status is not None:
            outcomes.append((name, status))
    return _report(outcomes, len(plan), time.perf_counter() - start)


def run_label(preset: Preset, dropout: str, seed: int) -> str:
    """How the sweep names a run in what it prints (the folder adds the settings hash)."""
    return f"{preset.task}-{preset.name}-{label(preset, dropout)}-seed{seed}"


def _stopped(where: str, done: int, planned: int) -> str:
    return (f"bench: sweep stopped at {where} ({done} of {planned} runs done); the same command with --resume "
            f"skips the finished runs and continues the stopped ones")


def _one(preset: Preset, opts: RunOptions) -> tuple[str | None, str | None]:
    """One run of the sweep: its summary line and status, or (None, None) on a DDP rank other than 0."""
    t0 = time.perf_counter()
    row = run(preset, opts)
    if row is None:
        return None, None
    shown = {k: v for k, v in row.items() if k.startswith(("train_", "valid_", "test_")) and k != "train_loss"}
    line = (f"{preset.task}/{preset.name} {label(preset, opts.dropout)} seed {opts.seed}: "
            + ", ".join(f"{k}={v}" for k, v in shown.items()))
    skipped = row.get("skipped")
    return line, (f"skipped (finished earlier, at {skipped})" if isinstance(skipped, str) else
                  "skipped (finished earlier)" if skipped else f"done in {time.perf_counter() - t0:.0f} s")


# --jobs N: whole runs side by side. The quick presets' matrices are too small for two threads to
# share one product well: two 1-thread runs on two cores trained 1.14-1.32x the tokens/s of one
# 2-thread run (results/throughput-jobs.csv). Each run is its own spawned process (a crash or an
# out-of-memory kill fails that run only), its output in RUNS_DIR/logs/<run>.log and one line here.

def _run_parallel(plan: list[tuple[Preset, str, int]], options: RunOptions, jobs: int) -> int:
    jobs = min(jobs, len(plan))
    threads = max(1, torch.get_num_threads() // jobs)
    logs = Path(options.runs_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")  # not fork: the parent's OpenMP threads do not survive a fork
    pending = list(plan)
    running: dict[int, tuple[BaseProcess, str, Connection]] = {}  # process sentinel -> (process, run, its pipe)
    outcomes: list[tuple[str, str]] = []
    stopped: str | None = None
    terminated: list[bool] = []

    def on_sigterm(*_: Any) -> None:  # stop as on Ctrl+C, which the runs (unlike SIGTERM) receive as well
        terminated.append(True)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, on_sigterm), signal.getsignal(signal.SIGINT)
    start = time.perf_counter()
    try:
        _warm_data(plan, options)
        if "wandb" in options.loggers:
            wandb_log.say_offline(options.wandb_mode, options.runs_dir)
        print(f"bench run: {len(plan)} runs, {jobs} at a time, {threads} thread{'s' if threads > 1 else ''} each; "
              f"each run's output goes to {logs}/<run>.log", flush=True)
        while running or (pending and stopped is None):
            while pending and stopped is None and len(running) < jobs:
                preset, dropout, seed = pending.pop(0)
                name = run_label(preset, dropout, seed)
                receive, send = ctx.Pipe(duplex=False)
                opts = dataclasses.replace(options, dropout=dropout, seed=seed)
                proc = ctx.Process(target=_child, args=(preset, opts, threads, logs / f"{name}.log", send, os.getpid()),
                                   name=name)
                proc.start()
                send.close()
                running[proc.sentinel] = (proc, name, receive)
                print(f"  started {name}", flush=True)
            for sentinel in wait(list(running)):
                stopped = _collect(*running.pop(sentinel), outcomes) or stopped
    except KeyboardInterrupt:  # the runs stop too; --resume continues each from its last epoch checkpoint
        # Stopping: a second Ctrl+C or SIGTERM (people press twice) must not cut short the reporting.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped = stopped or next((name for _, name, _ in running.values()), run_label(*pending[0]) if pending else "")
        for proc in multiprocessing.active_children():  # a run being started when the signal came too
            if terminated:
                proc.terminate()  # Lightning stops a run gracefully on SIGTERM
            else:
                _pass_on_ctrl_c(proc)
        for sentinel in list(running):
            _collect(*running.pop(sentinel), outcomes)
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
    if stopped is not None:
        print(_stopped(stopped, len(outcomes), len(plan)), file=sys.stderr)
        raise RunInterrupted("sweep stopped; rerun with --resume")
    return _report(outcomes, len(plan), time.perf_counter() - start)


def _pass_on_ctrl_c(proc: BaseProcess) -> None:
    """A Ctrl+C at a terminal reaches every process of the sweep; a SIGINT sent to the parent alone
    (`kill -INT`, a scheduler) reaches none of the runs, which would train on to their end. So each
    run gets one from here; a run that had its own already ignores it (`_stop_once`)."""
    try:
        os.kill(proc.pid, signal.SIGINT)
    except ProcessLookupError:  # ended since
        pass


def _stop_once(*_: Any) -> None:
    """A run's SIGINT handler: the first stops it (KeyboardInterrupt, as Python's own handler), a
    later one (the sweep passing on a Ctrl+C the run had already) is ignored so that the run's
    shutdown, checkpoint and W&B included, is not cut short. Lightning ignores SIGINT only while it
    handles the first, then puts this handler back."""
    if not _stopping:
        _stopping.append(True)
        raise KeyboardInterrupt


_stopping: list[bool] = []


def _collect(proc: BaseProcess, name: str, receive: Connection, outcomes: list[tuple[str, str]]) -> str | None:
    """Wait for one run's process and report its outcome; its name if it was stopped."""
    proc.join()
    kind, text, status = receive.recv() if receive.poll() else (
        "failed", f"its process ended with exit code {proc.exitcode} without a result (see its log)", "")
    receive.close()
    proc.close()
    if kind == "stopped":
        return name
    if kind == "failed":
        print(f"bench: error: {name}: {text}", file=sys.stderr, flush=True)
        status = "FAILED"
    elif text:
        print(text, flush=True)
    outcomes.append((name, status))
    return None


def _warm_data(plan: list[tuple[Preset, str, int]], options: RunOptions) -> None:
    """Download each task's data and fill its feature caches once, here, with all threads, before
    the runs start: two runs reading one empty cache would each compute all of it. Data whose runs
    --resume would all skip is left alone. Data that is not ready is only warned about: its runs
    fail with the same error and say it."""
    log = logging.getLogger("benchmark")
    prepared: dict[tuple[str, str], Any] = {}  # data settings -> its DataModule after prepare_data (None: failed)
    needed: dict[tuple[str, str], tuple[str, Any]] = {}  # those a run still needs: (task, DataModule)
    for preset, dropout, seed in plan:
        key = (preset.datamodule, yaml.safe_dump(preset.data, sort_keys=True))
        if key not in prepared:
            try:
                prepared[key] = make_datamodule(preset, options.data_root)
                prepared[key].prepare_data()
            except BenchError as err:
                log.warning("%s data not ready (%s): its runs will fail", preset.task, err)
                prepared[key] = None
        dm = prepared[key]
        if dm is None or key in needed:
            continue
        chash = settings_hash(preset, dm, options.trainer, options.data_root)
        named = copy.deepcopy(preset)
        apply_dropout(named, dropout)  # as runner.plan() does before naming the folder
        try:
            done = options.resume and finished_row(Path(options.runs_dir) / run_name(named, dropout, seed, chash))
        except BenchError:  # an unreadable result.json: that run fails and says so, the others go on
            done = False
        if not done:
            needed[key] = (preset.task, dm)
    for task, dm in needed.values():
        try:
            dm.setup("fit")
        except BenchError as err:
            log.warning("%s data not ready (%s): its runs will fail", task, err)


def _child(preset: Preset, opts: RunOptions, threads: int, log_path: Path, result: Connection, parent: int) -> None:
    """One run of a parallel sweep, in its own process; what it prints goes to `log_path`, and its
    outcome, (kind, text, status), back through `result` (short: a long message would fill the pipe)."""
    with open(log_path, "ab") as out:
        os.dup2(out.fileno(), 1)  # the file descriptors, so that Lightning's bars and C++ warnings go there too
        os.dup2(out.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    configure_logging()
    _end_with(parent)
    signal.signal(signal.SIGINT, _stop_once)
    torch.set_num_threads(threads)
    try:
        line, status = _one(preset, opts)
        print(line)
        result.send(("done", (line or "")[:4000], status))
    except (KeyboardInterrupt, RunInterrupted, SystemExit) as err:
        result.send(("stopped", str(err)[:1000], ""))
    except BaseException as err:  # noqa: BLE001 - reported to the sweep, which goes on with the others
        if not isinstance(err, BenchError):
            logging.getLogger("benchmark").exception("%s failed", log_path.stem)
        result.send(("failed", f"{str(err)[:1000]} (see {log_path})", ""))


def _end_with(parent: int) -> None:
    """A run stops (as on SIGTERM: its last epoch checkpoint kept) when the sweep that started it
    dies without passing anything on (kill -9, the out-of-memory killer), instead of training on
    unseen beside the next sweep. Linux's PR_SET_PDEATHSIG; elsewhere the run folder's lock still
    keeps a second process out of its folder."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _report(outcomes: list[tuple[str, str]], planned: int, seconds: float) -> int:
    if planned > 1 and outcomes:
        print(f"\nbench run: {planned} runs in {seconds:.0f} s")
        for name, status in outcomes:
            print(f"  {name:<48} {status}")
    failed = [n for n, status in outcomes if status == "FAILED"]
    if failed:
        print(f"bench: error: {len(failed)} of {planned} runs failed ({', '.join(failed)}); the others kept "
              f"their results; rerun with --resume to retry only those", file=sys.stderr)
        return 2
    return 0
