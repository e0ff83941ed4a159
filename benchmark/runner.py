"""One benchmark run: preset -> DataModule + LightningModule -> Trainer.fit/test -> a results row."""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException

from benchmark import allocator, environment, identity, wandb_log
from benchmark.callbacks import EpochSeed, GradNorm, TokenThroughput
from benchmark.checkpoints import AtomicCheckpointIO, FollowMovedRunFolder, best_epoch_and_version, check_checkpoint
from benchmark.config import Preset, apply_dropout, overrides_of, paper_numbers, regularizer_tag
from benchmark.results import (
    CSV_LOG,
    RUNS_FILE,
    append_row,
    check_writable,
    last_logged,
    read_rows,
    save_curves,
    set_log_aside,
)
from benchmark.trainer_args import check_trainer_types
from tasks import registry
from tasks.base import RUN_INFO_KEY, TaskModule
from tasks.nn import backbone
from tasks.nn.errors import BenchError, ConfigError, RunInterrupted

log = logging.getLogger("benchmark")
PROJECT_DIR = Path(__file__).resolve().parent.parent
CODE_PATHS = ("benchmark", "tasks", "datamodules", "configs", "scripts", "pyproject.toml", "requirements.lock")
RESULT_FILE = "result.json"  # in the run folder: the run finished and its row is in runs.csv
SKIPPED_FILE = "skipped_records.txt"  # in the run folder: the bad records a large corpus skipped
RUN_ID_FILE = "run_id"  # in the run folder: the run's identity across resumes
CONFIG_FILE = "config.yaml"  # in the run folder: the resolved settings it ran with
LOCK_FILE = ".lock"  # in the run folder: held (flock) by the process running it


@dataclass
class RunOptions:
    dropout: str = "on"
    seed: int = 0
    data_root: Path = Path("data")
    results_dir: Path = Path("results")
    runs_dir: Path = Path("runs")
    run_dir: Path | None = None
    resume: bool = False  # continue from last.ckpt; a finished run is skipped
    loggers: tuple[str, ...] = ("csv",)  # csv and/or wandb
    wandb_mode: str = "auto"  # auto | online | offline
    wandb_project: str = wandb_log.PROJECT
    wandb_entity: str | None = None  # a W&B user or team; None: WANDB_ENTITY or the account's default
    trainer: dict[str, Any] = field(default_factory=dict)  # CLI pass-throughs, over the preset's
    callbacks: list[L.Callback] = field(default_factory=list)  # extra (tests inject failures here)
    command: str = ""


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Only what a run executes makes a commit "dirty": code, configs, the dependency pins (not
        # results/, README or tests).
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
                               cwd=PROJECT_DIR, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(trainer: L.Trainer) -> str:
    return device_label(trainer.strategy.root_device)


def device_label(root: torch.device) -> str:
    """The GPU's name, or the CPU's model and the thread count torch uses."""
    if root.type == "cuda":
        return torch.cuda.get_device_name(root)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def run_name(preset: Preset, dropout: str, seed: int, chash: str) -> str:
    """The run's folder: its settings hash is part of it, so a `--set` run or a changed preset
    never lands in (or resumes from) another setting's folder. A regularizer other than the paper's
    names itself and a hash of its rates in place of `dropout_on`; `off` is the same run for all."""
    tag = regularizer_tag(preset) if dropout == "on" else ""
    return f"{preset.task}-{preset.name}-{chash}-{tag or f'dropout_{dropout}'}-seed{seed}"


def regularizer_of(r: "Run") -> str:
    """The row's `regularizer`: the one it trained with, "none" for `--dropout off`."""
    return r.preset.regularizer if r.opts.dropout == "on" else "none"


def make_datamodule(preset: Preset, data_root: Path) -> L.LightningDataModule:
    dm_cls = registry.load_class(preset.datamodule)
    try:
        return dm_cls(data_root=data_root, **preset.data)
    except TypeError as err:
        raise ConfigError(f"{preset.path}: bad `data` section for {preset.datamodule} ({err})") from err


def settings_hash(preset: Preset, dm: L.LightningDataModule, cli_trainer: dict[str, Any], data_root: Path,
                  fingerprint: str | None = None) -> str:
    """`config_hash` of this run (benchmark/identity.py), from the preset before `--dropout off`
    zeroes its rates: on and off runs of one setting share it. `fingerprint`: the data files'
    (data_fingerprint), when the caller has it already."""
    trainer = {**preset.trainer, **{k: v for k, v in cli_trainer.items() if v is not None}}
    fingerprint = fingerprint or data_fingerprint(dm, data_root)
    return identity.config_hash(preset.module, preset.datamodule, preset.hashed_model, preset.data, trainer,
                                fingerprint)


def data_fingerprint(dm: L.LightningDataModule, data_root: Path) -> str:
    """The fingerprint of the files `dm` reads (identity.data_fingerprint): part of the settings
    hash, and kept in each checkpoint so that `bench eval` and `bench ensemble` can tell the data
    a model was trained on."""
    return identity.data_fingerprint(dm.data_files(), Path(data_root))


def check_results_dir(results_dir: Path, fix: str = "give --results-dir a folder you can write") -> None:
    """The results folder takes runs.csv (and its lock), the outputs, curves and package lists:
    a read-only one fails now, in one line, not once a run has trained."""
    check_writable(Path(results_dir), fix, (f"{RUNS_FILE}.lock", f"{RUNS_FILE}.damaged", "outputs", "curves",
                                            environment.ENV_DIR), replaced=(RUNS_FILE,))


def code_changed_since(commit: str) -> bool:
    """Whether the code, configs or pins a finished run was made with differ from what would run
    now. A clean commit compares with the working tree; a `-dirty` one (made from uncommitted
    edits, unknowable now) only says whether the committed code moved on since; an unknown one
    (no git) cannot be told."""
    sha = commit.removesuffix("-dirty")
    if not sha or sha == "unknown":
        return False
    against = ["HEAD"] if commit.endswith("-dirty") else []
    try:
        result = subprocess.run(["git", "diff", "--quiet", sha, *against, "--", *CODE_PATHS], cwd=PROJECT_DIR,
                                capture_output=True)
    except OSError:  # no git here: nothing to compare with
        return False
    # 1: they differ; 128: a commit this checkout does not hold (another clone's): it cannot be
    # told, and is said to differ, since the code it ran cannot be shown to be this one.
    return result.returncode != 0


def make_loggers(run_dir: Path, opts: RunOptions, preset: Preset, config: dict) -> list[Logger]:
    unknown = set(opts.loggers) - {"csv", "wandb"}
    if unknown:
        raise ConfigError(f"--logger: unknown {sorted(unknown)}; choose csv, wandb or csv,wandb")
    loggers: list[Logger] = []
    if "csv" in opts.loggers:
        # Its file is made at the first log: build() sets a resumed run's metrics.csv aside before
        # that, once the resume is known to go ahead.
        loggers.append(CSVLogger(run_dir, name="", version=CSV_LOG))
    if "wandb" in opts.loggers:
        wandb = wandb_log.make_logger(
            run_dir, name=run_dir.name, group=preset.task, config=config,
            tags=[preset.task, preset.name, f"dropout_{opts.dropout}", f"regularizer_{config['regularizer']}"],
            project=opts.wandb_project,
            mode=opts.wandb_mode, entity=opts.wandb_entity)
        loggers += [wandb] if wandb is not None else []
    return loggers


def progress_bar() -> L.Callback:
    """Lightning's rich bar on a terminal; in a log file a bar redrawn every step would flood it, so
    there the plain bar prints every 200 steps."""
    if sys.stdout.isatty():
        return RichProgressBar()
    return TQDMProgressBar(refresh_rate=200)


def finished_row(run_dir: Path) -> dict[str, Any] | None:
    record = _result_record(run_dir)
    return None if record is None else record["row"]


def _result_record(run_dir: Path) -> dict[str, Any] | None:
    """result.json: the row, the data settings and (since 2026-12-03) the results folder it went to."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "row" not in record:
            raise ValueError("no results row in it")
        return record
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); delete it to run {run_dir} again") from err


@dataclass
class Run:
    """One run's state, from the resolved preset to its results row. `plan` fills the first part,
    `build` the Lightning objects."""

    preset: Preset  # its dropout rates already set for `opts.dropout`
    opts: RunOptions
    spec: registry.TaskSpec
    dm: L.LightningDataModule
    chash: str  # config_hash: settings and data files
    rates: dict[str, float]  # the dropout rates this run trains with
    run_dir: Path
    cli_trainer: dict[str, Any]  # trainer settings from the command line, over the preset's
    resume_from: str | None = None  # last.ckpt of an interrupted run
    resumed_info: dict[str, Any] = field(default_factory=dict)  # that last.ckpt's run_info
    data_files: str = ""  # the data files' fingerprint (data_fingerprint)
    commit: str = ""
    run_id: str = ""
    resumed_from_commit: str = ""  # the commit whose code trained its first epochs, when not this one
    model: L.LightningModule | None = None
    trainer: L.Trainer | None = None
    best: ModelCheckpoint | None = None
    throughput: TokenThroughput = field(default_factory=TokenThroughput)
    loggers: list[Logger] = field(default_factory=list)

    @property
    def name(self) -> str:
        return run_name(self.preset, self.opts.dropout, self.opts.seed, self.chash)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def run(preset: Preset, opts: RunOptions) -> dict[str, Any] | None:
    """Train and test one preset. Returns the results row (rank 0) or None (other ranks)."""
    read_rows(Path(opts.results_dir) / RUNS_FILE)  # an unreadable results file fails now, before any folder is made
    # And one that cannot take the row, before the data is prepared (or fetched). Not for --resume
    # yet: a finished run it only skips writes nothing (its results folder may be an archived,
    # read-only one); a run with work to do is checked once finished() says so.
    if _is_rank_zero() and not opts.resume:
        check_results_dir(opts.results_dir)
    r = plan(preset, opts)
    fresh = not r.run_dir.exists()
    with only_process(r.run_dir):
        # Again, now that the folder is this process's: another one may have run it since plan() looked.
        check_not_started(r)
        if opts.resume and (done := finished(r)) is not None:
            return done
        try:
            if _is_rank_zero() and opts.resume:
                check_results_dir(opts.results_dir)
            build(r)
        except BaseException as err:
            wandb_log.finish(r.loggers, failed=True)  # a W&B run begun by make_loggers ends, marked failed
            if isinstance(err, BenchError) and fresh and _is_rank_zero():
                shutil.rmtree(r.run_dir, ignore_errors=True)  # rejected before training: no folder holding only a run_id
            raise
        try:
            row = fit_and_test(r)
        except BaseException:
            wandb_log.finish(r.loggers, failed=True)
            raise
    paper = paper_numbers(preset, opts.dropout, preset.regularizer)
    wandb_log.finish(r.loggers, summary=row and {
        **{k: float(v) for k, v in row.items()
           if k.startswith(("train_", "valid_", "test_", "best_test_")) and _is_number(v)},
        **{f"paper/{k}": v for k, v in paper.items()}})
    return row


@contextmanager
def only_process(run_dir: Path, doing: str = "is running this run now",
                 then: str = "then rerun with --resume") -> Iterator[None]:
    """One process at a time in a run folder. A second one (`make bench` typed again while the first
    still trains, or a run left training by a `--jobs` sweep that was killed) would delete the first's
    checkpoint writes as "cut short" and move its log aside. The kernel drops the lock when its
    holder ends, by kill -9 too. Other DDP ranks share rank 0's folder and take no lock."""
    if not _is_rank_zero():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = open(run_dir / LOCK_FILE, "a+")
    except PermissionError:  # another user's folder, or a read-only one (a finished run --resume skips)
        try:
            lock = open(run_dir / LOCK_FILE)  # flock needs no write
        except OSError:
            yield  # nothing here can be written, so nothing a second process could spoil either
            return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise ConfigError(f"{run_dir}: another process (pid {pid}) {doing}; wait for it to end (or stop "
                              f"it), {then}") from None
        except OSError as err:  # a file system without flock: run as before, unguarded
            log.warning("%s: cannot lock %s (%s): a second process in this folder would not be kept out",
                        run_dir, LOCK_FILE, err.strerror or err)
        else:
            if lock.writable():
                lock.truncate(0)
                lock.write(f"{os.getpid()}\n")
                lock.flush()
        yield


def plan(preset: Preset, opts: RunOptions) -> Run:
    """The data (downloaded first: the settings hash covers its files), the hash, the folder."""
    check_trainer_types({**preset.trainer, **{k: v for k, v in opts.trainer.items() if v is not None}},
                        f"{preset.path} or the command line")  # before any data work, not at L.Trainer(...)
    dm = make_datamodule(preset, opts.data_root)
    dm.prepare_data()
    cli_trainer = {k: v for k, v in opts.trainer.items() if v is not None}
    fingerprint = data_fingerprint(dm, opts.data_root)
    chash = settings_hash(preset, dm, cli_trainer, opts.data_root, fingerprint)
    rates = apply_dropout(preset, opts.dropout)
    run_dir = Path(opts.run_dir or Path(opts.runs_dir) / run_name(preset, opts.dropout, opts.seed, chash))
    r = Run(preset, opts, registry.get(preset.task), dm, chash, rates, run_dir, cli_trainer, data_files=fingerprint)
    check_not_started(r)
    return r


def check_not_started(r: Run) -> None:
    """A folder that holds a run (a checkpoint, a result) is taken up only with --resume, and one
    named by --run-dir only if its run has these settings."""
    started = any(r.ckpt_dir.glob("*.ckpt")) or (r.run_dir / RESULT_FILE).exists()
    if started and not r.opts.resume:
        raise ConfigError(f"{r.run_dir} already holds an earlier run: pass --resume to continue it (a finished "
                          f"run is skipped), or --run-dir to start a new run elsewhere")
    if started and r.opts.run_dir:  # a folder named by run_name() carries the hash, seed and arm already
        check_same_settings(r)


def check_same_settings(r: Run) -> None:
    """--resume continues or skips a started run only if it has these very settings. A folder named
    for its hash always holds one; `--run-dir` can name any folder, and a result of other settings (or a
    checkpoint trained with them) must not come back under this run's name."""
    path = r.run_dir / CONFIG_FILE
    if path.is_file():
        try:
            stored = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: unreadable ({err}); delete {r.run_dir} to run it again") from err
    else:  # a folder from before runs kept their config.yaml: its results row says as much, or its last.ckpt
        last = r.ckpt_dir / "last.ckpt"
        stored = finished_row(r.run_dir) or (check_checkpoint(last).get(RUN_INFO_KEY) or {} if last.is_file() else {})
    here = {"task": r.preset.task, "config_hash": r.chash, "seed": r.opts.seed, "dropout": r.opts.dropout,
            "regularizer": regularizer_of(r), "dropout_rates": r.rates}
    # A results row holds text ("0"), config.yaml typed values (0).
    differ = [f"{k} {stored[k]!r} there, {v!r} here" for k, v in here.items()
              if stored.get(k) not in (None, "") and stored[k] != v and str(stored[k]) != str(v)]
    if differ:
        raise ConfigError(f"{r.run_dir} holds a run of other settings ({'; '.join(differ)}): --resume would "
                          f"hand back its result; give another --run-dir, or delete that folder to start over")


def finished(r: Run) -> dict[str, Any] | None:
    """--resume: a finished run's row (kept even when the code has changed since, with a warning);
    otherwise None, and an interrupted run continues from its last.ckpt."""
    record = _result_record(r.run_dir) or {}
    done = record.get("row")
    if done is not None:
        stale = code_changed_since(done.get("git_commit", ""))
        if stale:
            log.warning("%s finished at commit %s and the code has changed since: its result is kept, not "
                        "rerun; delete the folder (or use another --runs-dir) to run it with this code",
                        r.run_dir, done.get("git_commit"))
        else:
            log.info("%s finished earlier (its row is in %s): skipped", r.run_dir, RUNS_FILE)
        if _is_rank_zero():
            _row_into(r, done, record.get("results_dir"))
        return {**done, "skipped": "older code" if stale else True}
    last = r.ckpt_dir / "last.ckpt"
    for partial in r.ckpt_dir.glob(".*.tmp"):  # a checkpoint write the kill cut short; last.ckpt is whole
        log.info("%s: removing %s, a checkpoint write that was cut short", r.ckpt_dir, partial.name)
        partial.unlink(missing_ok=True)
    if last.exists():
        ckpt = check_checkpoint(last)
        if _is_rank_zero():
            _drop_orphan_best(r.ckpt_dir, ckpt)
        r.resume_from = str(last)
        info = r.resumed_info = dict(ckpt.get(RUN_INFO_KEY) or {})
        began = str(info.get("resumed_from_commit") or info.get("git_commit") or "")
        if began and code_changed_since(began):
            # The epochs so far ran other code than the rest will: the row says so, not only the new commit.
            log.warning("%s was started at commit %s and the code has changed since: it continues with this code, "
                        "and its row records both (resumed_from_commit); delete the folder to run it whole with "
                        "this code", r.run_dir, began)
            r.resumed_from_commit = began
    else:
        if _is_rank_zero():
            _drop_orphan_best(r.ckpt_dir, {})  # the first attempt died before its first last.ckpt
        log.info("%s holds no last.ckpt: starting %s from scratch", r.ckpt_dir, r.name)
    return None


def _row_into(r: Run, row: dict[str, Any], wrote_to: str | None) -> None:
    """A finished run skipped by --resume into another results folder than the one its row went to
    (`make bench RESULTS_DIR=elsewhere` after a `make bench`) gets its row, outputs and curves there
    too. Not into its own folder: a row moved from there to an archive stays moved."""
    results = Path(r.opts.results_dir)
    if not wrote_to or Path(wrote_to) == results.resolve() or not row.get("run_id"):
        # A result.json from before 2026-12-03 does not say where its row went: copying it could
        # bring back a row archived from that folder, so it is left out.
        return
    if any(x.get("run_id") == row["run_id"] for x in read_rows(results / RUNS_FILE)):
        return
    check_results_dir(results)
    stem = f"{r.name}-{row['run_id']}"  # as fit_and_test names them (a copy of an older run's too)
    outputs = save_outputs(r.run_dir, results, stem)
    curves = save_curves(r.run_dir, results, stem)
    row = {**row, "outputs": outputs.relative_to(results).as_posix() if outputs else "",
           "curves": curves.relative_to(results).as_posix() if curves else ""}
    append_row(results, row, replaces="run_id")
    log.info("%s: its row was not in %s, added", r.run_dir, results / RUNS_FILE)


def _drop_orphan_best(ckpt_dir: Path, last: dict[str, Any]) -> None:
    """Delete best-*.ckpt files that last.ckpt's checkpoint callback does not know: a kill after the
    best of epoch E was saved and before last.ckpt was leaves one. Kept, the replayed epoch's best
    would be saved beside it as best-epochE-v1, and the eval commands, which take the last best-*
    by name, could load the abandoned attempt's weights."""
    known = {Path(state["best_model_path"]).name for state in (last.get("callbacks") or {}).values()
             if isinstance(state, dict) and state.get("best_model_path")}
    for path in ckpt_dir.glob("best-*.ckpt"):
        if path.name not in known:
            log.info("%s: removing %s, saved by the attempt that was stopped before its last.ckpt", ckpt_dir, path.name)
            path.unlink(missing_ok=True)


def _is_rank_zero() -> bool:
    """Before the Trainer exists, from what the launcher set, in Lightning's order: torchrun's RANK,
    SLURM's (srun starts every task itself), LSF's, then Lightning's own launcher (LOCAL_RANK within
    a node, NODE_RANK across nodes)."""
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if var in os.environ:
            return os.environ[var] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def run_id(run_dir: Path) -> str:
    """The run's identity across resumes, made when it first starts and kept in its folder: its
    results row replaces only a row of the same run (one killed after writing it)."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    rid = uuid.uuid4().hex[:16]
    if _is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, rid + "\n")
    return rid


def build(r: Run) -> None:
    """Seed, model, loggers and Trainer."""
    preset, opts = r.preset, r.opts
    r.commit = git_commit()  # the code that trains, not what the tree holds when the run ends
    r.run_id = run_id(r.run_dir)
    allocator.keep_freed_memory()  # before the first large tensor: no page faults in every step
    L.seed_everything(opts.seed, workers=True, verbose=False)
    r.dm.setup("fit")
    module_cls = registry.load_class(preset.module)
    if not issubclass(module_cls, TaskModule):  # fail before training, not at the results row
        raise ConfigError(f"{preset.module} must subclass tasks.base.TaskModule (task {preset.task})")
    try:
        r.model = module_cls(**preset.model, **r.dm.model_kwargs())
    except (TypeError, ValueError) as err:  # an unknown key, or a value the module rejects
        raise ConfigError(f"{preset.path}: bad `model` section for {preset.module} ({err})") from err
    r.model.use_test_streams(r.dm.stream_names())
    r.model.run_info = {"task": preset.task, "preset": preset.name, "dropout": opts.dropout,
                        "regularizer": regularizer_of(r), "seed": opts.seed,
                        "dropout_rate": ";".join(f"{k}={v}" for k, v in r.rates.items()),
                        "config_hash": r.chash, "overrides": overrides_of(preset, r.cli_trainer),
                        "git_commit": r.commit, "run_id": r.run_id, "data_files": r.data_files}
    if r.resumed_from_commit:  # kept in every later checkpoint: a second resume still knows where it began
        r.model.run_info["resumed_from_commit"] = r.resumed_from_commit
    trainer_kwargs = {**preset.trainer, **r.cli_trainer}
    r.model.run_info["precision"] = str(trainer_kwargs.get("precision") or "32-true")  # what its test ran under
    r.loggers = make_loggers(r.run_dir, opts, preset, {
        "task": preset.task, "preset": preset.name, "dropout": opts.dropout, "dropout_rates": r.rates,
        "regularizer": regularizer_of(r), "seed": opts.seed, "config_hash": r.chash, "model": preset.model, "data": preset.data,
        "trainer": trainer_kwargs, "paper": preset.paper, "config_file": str(preset.path), "git_commit": r.commit,
        "command": opts.command})
    r.best = ModelCheckpoint(dirpath=r.ckpt_dir, filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
                             monitor=r.spec.monitor[0], mode=r.spec.monitor[1])
    try:
        r.trainer = L.Trainer(
            default_root_dir=r.run_dir, callbacks=callbacks(r, trainer_kwargs), logger=r.loggers or False,
            plugins=[AtomicCheckpointIO()],
            # PTB and translation lay out their own per-rank batches; the others take Lightning's sampler.
            use_distributed_sampler=not r.spec.can(registry.Can.OWN_RANK_LAYOUT),
            **trainer_kwargs,
        )
    except (TypeError, ValueError, MisconfigurationException) as err:
        raise ConfigError(f"bad trainer setting in {preset.path} or the command line: {err}") from err
    r.model.run_info["world_size"] = r.trainer.world_size  # devices x nodes: known once the Trainer is
    check_same_world_size(r)
    # Only now, the resume going ahead: a refused one leaves the run's config.yaml and logs as they were.
    if _is_rank_zero():
        write_config(r, trainer_kwargs)
        if "csv" in opts.loggers:
            set_log_aside(r.run_dir)  # a resumed run's earlier epochs stay in metrics.part-N.csv


def check_same_world_size(r: Run) -> None:
    """A resumed run goes on with the world size it began with: each rank's share of the data and
    the effective batch follow from it, so the rest would train another setting. A checkpoint from
    before runs kept their world size is let through."""
    began = r.resumed_info.get("world_size")
    if r.resume_from and began is not None and int(began) != r.trainer.world_size:
        raise ConfigError(f"{r.resume_from}: trained with world size {began} (devices x nodes), this run has "
                          f"{r.trainer.world_size}; resume with the same --devices/num_nodes, or start over "
                          f"with another --run-dir")


def write_config(r: Run, trainer_kwargs: dict[str, Any]) -> Path:
    """<run>/config.yaml: the run's resolved settings (the preset after --set and --dropout, the
    command line's trainer settings over the preset's), as Lightning's CLI records a run's config."""
    preset = r.preset
    resolved = {"task": preset.task, "preset": preset.name, "config_file": str(preset.path),
                "dropout": r.opts.dropout, "regularizer": regularizer_of(r), "dropout_rates": r.rates,
                "seed": r.opts.seed, "config_hash": r.chash,
                "git_commit": r.commit, "command": r.opts.command, "model": preset.model, "data": preset.data,
                "trainer": trainer_kwargs, "paper": preset.paper}
    r.run_dir.mkdir(parents=True, exist_ok=True)
    path = r.run_dir / CONFIG_FILE
    plain = json.loads(json.dumps(resolved, default=str))  # paths as text
    _write_atomic(path, yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))
    return path


def callbacks(r: Run, trainer_kwargs: dict[str, Any]) -> list[L.Callback]:
    step_stats = [LearningRateMonitor(logging_interval="step"), GradNorm()] if r.loggers else []
    bar = [progress_bar()] if trainer_kwargs.get("enable_progress_bar", True) else []
    return [
        r.best,  # first: ddp_spawn hands back only the first checkpoint callback's paths
        # last.ckpt after every epoch, whatever the metric did (what --resume reads); Lightning's
        # save_last alone only writes it when a top-k checkpoint is saved.
        ModelCheckpoint(dirpath=r.ckpt_dir, filename="last", enable_version_counter=False, every_n_epochs=1),
        FollowMovedRunFolder(),  # a run folder moved before --resume keeps its best checkpoint's record
        EpochSeed(r.opts.seed),
        r.throughput,
        *step_stats,
        *bar,
        *r.opts.callbacks,
    ]


def _is_number(text: Any) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def fit_and_test(r: Run) -> dict[str, Any] | None:
    """Fit, test the last epoch and the best checkpoint, and record the row (rank 0)."""
    start = time.perf_counter()
    _fit(r)
    fit_metrics = {k: float(v) for k, v in r.trainer.callback_metrics.items()}
    if r.resume_from and not any(k.startswith("valid_") for k in fit_metrics):
        # Resumed after training had ended (killed during test): the last epoch's train and valid
        # numbers are in the CSV logs of the attempt that trained, not in this fit.
        logged = last_logged(r.run_dir, ("train_", "valid_"))
        if not logged:
            log.warning("%s: resumed after training ended, and no CSV log holds the last epoch's train and valid "
                        "metrics (--logger without csv?): the row has test metrics only", r.run_dir)
        fit_metrics = {**logged, **fit_metrics}
    last_epoch = r.trainer.current_epoch  # 1-based once fit ends
    with _stops_as_interrupted(r, f"run stopped while testing; training has ended and its checkpoints are in "
                                  f"{r.ckpt_dir}: rerun with --resume to test it (no results row was written)"):
        test_metrics = _test(r.trainer, r.model, r.dm, None, "")
        _check_sigterm(r)
        best_epoch, best_metrics = _best_epoch(r.best), {}
        if best_epoch not in (None, last_epoch) and not Path(r.best.best_model_path).is_file():
            # Lightning deletes the old best when it saves a new one; a kill before last.ckpt followed
            # leaves last.ckpt naming the deleted file, and a resumed epoch that did not beat it saved none.
            log.warning("%s: the best checkpoint %s is gone (a kill between saving a new best and last.ckpt); "
                        "the row has no best_* numbers", r.run_dir, r.best.best_model_path)
            best_epoch = None
        # The best-by-validation checkpoint too: the headline scores the last epoch (the paper's fixed
        # schedules), and the best shows how much of the gap early stopping would close.
        if best_epoch is not None and best_epoch != last_epoch:
            best_metrics = _test_best(r)
            _check_sigterm(r)
        elif best_epoch is not None:
            best_metrics = {f"best_{k}": v for k, v in test_metrics.items()}
    wall = time.perf_counter() - start
    if not r.trainer.is_global_zero:
        return None
    row = {**results_row(r, {**fit_metrics, **test_metrics, **best_metrics}, wall),
           "config_hash": r.chash, "best_epoch": "" if best_epoch is None else best_epoch, "host": platform.node(),
           "run_id": r.run_id}
    skipped = getattr(r.dm, "skipped", [])
    row["skipped_records"] = len(skipped)
    if skipped:  # the bad records a large corpus skipped (datamodules/bad_records.py), one per line
        _write_atomic(r.run_dir / SKIPPED_FILE, "".join(f"{s}\n" for s in skipped))
    else:
        (r.run_dir / SKIPPED_FILE).unlink(missing_ok=True)
    env, pkgs = environment.fingerprint(r.trainer.strategy.root_device)
    environment.save_package_list(Path(r.opts.results_dir), env["env_packages"], pkgs)
    row.update(env)
    # Named by run_id too: another run of this name (another machine's, a --run-dir elsewhere, one
    # begun again after its folder was deleted) into this results folder keeps its own files.
    stem = f"{r.name}-{r.run_id}"
    outputs = save_outputs(r.run_dir, Path(r.opts.results_dir), stem)
    row["outputs"] = outputs.relative_to(r.opts.results_dir).as_posix() if outputs else ""
    curves = save_curves(r.run_dir, Path(r.opts.results_dir), stem)
    row["curves"] = curves.relative_to(r.opts.results_dir).as_posix() if curves else ""
    path = append_row(r.opts.results_dir, row, replaces="run_id")
    # The row plus the data settings it ran with: what `--resume` skips on and `bench ensemble` rebuilds from.
    _write_atomic(r.run_dir / RESULT_FILE, json.dumps({"row": row, "data": r.preset.data, "results_dir": str(
        Path(r.opts.results_dir).resolve())}, indent=1) + "\n")
    log.info("results row appended to %s", path)
    return row


def _fit(r: Run) -> None:
    with _stops_as_interrupted(r, f"run interrupted; its last epoch checkpoint is in {r.ckpt_dir}: rerun with "
                                  f"--resume to continue (no results row was written)"):
        r.trainer.fit(r.model, datamodule=r.dm, ckpt_path=r.resume_from, weights_only=True)
        _check_sigterm(r)


def _check_sigterm(r: Run) -> None:
    """Lightning raises on SIGTERM only between batches; one that came during the last batch or
    the epoch's end lets the stage finish, and the next trainer.test() forgets it: ask now."""
    if r.trainer.received_sigterm:
        r.trainer.state.status = TrainerStatus.INTERRUPTED
        raise SIGTERMException  # what Lightning raises between batches; _stops_as_interrupted answers it


@contextmanager
def _stops_as_interrupted(r: Run, message: str) -> Iterator[None]:
    """Lightning answers Ctrl+C with a graceful shutdown and sys.exit(1), and SIGTERM (a cluster's
    time limit, `kill`) with SIGTERMException, a SystemExit of status 0: either is this run stopped,
    which the sweep reports and exits non-zero for, never a success."""
    try:
        yield
    except SystemExit:
        if r.trainer.interrupted:
            raise RunInterrupted(message) from None
        raise
    if r.trainer.interrupted:
        raise RunInterrupted(message)


def _test_best(r: Run) -> dict[str, float]:
    # Loading a checkpoint also restores the callbacks' state (the throughput counters would go
    # back to the best epoch's), and the loggers hold the last epoch's test: keep both as they are.
    counted, loggers = r.throughput.state_dict(), r.trainer.loggers
    r.trainer.loggers = []
    try:
        return _test(r.trainer, r.model, r.dm, r.best.best_model_path, "best_")
    finally:
        r.trainer.loggers = loggers
        r.throughput.load_state_dict(counted)


def _test(trainer: L.Trainer, model: L.LightningModule, dm: L.LightningDataModule, ckpt_path: str | None,
          prefix: str) -> dict[str, float]:
    """Test the model as it is (ckpt_path None) or as a checkpoint left it; metric names get `prefix`,
    and so do the files of test outputs the task writes (`model.output_prefix`)."""
    model.output_prefix = prefix
    try:
        results = trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    finally:
        model.output_prefix = ""
    return {f"{prefix}{k}": float(v) for d in results for k, v in d.items()}


def _best_epoch(best: ModelCheckpoint) -> int | None:
    """The 1-based epoch of the best-by-validation checkpoint (its file name holds the 0-based one)."""
    if not best.best_model_path:
        return None
    found = best_epoch_and_version(best.best_model_path)
    return found[0] + 1 if found else None


def save_outputs(run_dir: Path, results_dir: Path, name: str) -> Path | None:
    """Copy the run's test outputs (hypotheses beside references, what the tasks that decode write
    under <run>/outputs/) to <results>/outputs/<name>.jsonl.gz (the row's `outputs` names it): the
    leaderboard's paired bootstrap reads them there, so they travel with the results rows they belong to."""
    files = sorted((run_dir / "outputs").glob("*.jsonl"))
    if not files:
        return None
    out = results_dir / "outputs" / f"{name}.jsonl.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for path in files:
            f.write(path.read_text(encoding="utf-8"))
    os.replace(tmp, out)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def precision_label(trainer: L.Trainer) -> str:
    """The precision a trainer really ran in: Lightning turns `16-mixed` into bf16 on a CPU, and
    there an LSTM without a oneDNN kernel for the type stays in fp32."""
    precision = str(trainer.precision)
    if precision.startswith(("bf16", "16")) and trainer.strategy.root_device.type == "cpu":
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        if not backbone.cpu_lstm_supports(dtype):
            precision += " (LSTM in fp32: no oneDNN kernel)"
    return precision


def results_row(r: Run, metrics: dict[str, float], wall: float) -> dict[str, Any]:
    """One line of results/runs.csv: what ran, where, how fast, and the command to repeat it."""
    trainer, opts = r.trainer, r.opts
    return {
        "task": r.preset.task,
        "preset": r.preset.name,
        "dropout": opts.dropout,
        "regularizer": regularizer_of(r),
        "dropout_rate": ";".join(f"{k}={v}" for k, v in r.rates.items()),
        "seed": opts.seed,
        "overrides": overrides_of(r.preset, r.cli_trainer),
        **{k: f"{v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(r.spec.result_keys)},
        **r.model.row_info(),  # e.g. the BLEU signature, the encoder
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_s": f"{wall:.1f}",
        "tokens_per_s": f"{r.throughput.tokens_per_second:.0f}",  # PTB: words; speech: frames
        "train_s_per_epoch": f"{r.throughput.seconds / max(trainer.current_epoch, 1):.1f}",
        "device": device_name(trainer),
        "precision": precision_label(trainer),
        "devices": trainer.world_size,
        "git_commit": r.commit,
        **({"resumed_from_commit": r.resumed_from_commit} if r.resumed_from_commit else {}),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_dir": str(r.run_dir),
        "command": opts.command or shlex.join(["bench", *sys.argv[1:]]),
    }
