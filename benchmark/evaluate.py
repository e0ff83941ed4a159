"""`bench eval`: score a saved model on its preset's test sets or on others given by path.

The model is tested by the same Lightning `test` hooks its training run used, so a test set scored
both ways gets the same numbers. Each evaluation appends a row to runs.csv with an `evaluation`
column (the leaderboard never pools these with training runs) that names the checkpoint and, for
test sets given by path, every file read with its sha256.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException

from benchmark import environment, identity, trained
from benchmark.config import test_set_name
from benchmark.results import RUNS_FILE, append_row, check_writable, read_rows
from benchmark.runner import (
    check_results_dir,
    data_fingerprint,
    device_name,
    git_commit,
    only_process,
    precision_label,
    progress_bar,
    save_outputs,
)
from datamodules.download import sha256_of
from tasks.nn.errors import ConfigError

log = logging.getLogger(__name__)
EVAL_DIR = "eval"  # <run>/eval/<checkpoint>-<test sets>/: an evaluation's outputs and samples


def test_set_spec(parts: tuple[str, ...], paths: list[Path], task: str) -> tuple[str, Any]:
    """(name, the DataModule's `test_sets` entry) of one `--test PATH...`."""
    if len(paths) != len(parts):
        raise ConfigError(f"--test for {task} takes {len(parts)} path(s), {' and '.join(parts).upper()}; "
                          f"got {len(paths)}: {' '.join(map(str, paths))}")
    for part, path in zip(parts, paths):
        if not path.exists():
            raise ConfigError(f"{path}: not found (given as the test set's {part})")
    name = test_set_name(paths[0])
    if len(parts) == 1:
        return name, str(paths[0].resolve())
    return name, {part: str(path.resolve()) for part, path in zip(parts, paths)}


def digest(path: Path) -> str:
    """sha256 of a file; of a folder, over each data file's relative path and sha256, in sorted order
    (not its hidden files: a cache written beside the audio must not make the same test set another)."""
    if path.is_file():
        return sha256_of(path)
    h = hashlib.sha256()
    for file in identity.data_files_under(path):
        h.update(f"{file.relative_to(path).as_posix()}\0{digest(file)}\n".encode())
    return h.hexdigest()


def _preset_data(t: trained.Trained, dm: L.LightningDataModule, data_root: Path) -> str:
    """The row's `eval_data` for the preset's own test sets; marked, with a warning, when the data
    files differ from those its run trained on (checkpoints from before runs kept them: unmarked)."""
    trained_on = t.info.get("data_files")
    if not trained_on or data_fingerprint(dm, data_root) == trained_on:
        return "the preset's test sets"
    log.warning("%s: the data files under %s differ from those its run trained on (names or sizes); its "
                "row says so in eval_data", t.path, data_root)
    return "the preset's test sets (data files differ from its training run's)"


def evaluate(path: Path, which: str, data_root: Path, results_dir: Path, tests: list[list[Path]] | None = None,
             out_dir: Path | None = None, accelerator: str = "auto", batch_size: int | None = None,
             precision: str | None = None, command: str = "") -> dict[str, Any]:
    read_rows(Path(results_dir) / RUNS_FILE)  # a damaged results file fails now, not after the scoring
    check_results_dir(results_dir)  # and so does one that cannot take the row
    t = trained.load(path, which)
    spec = t.spec
    given = dict(test_set_spec(spec.test_set_parts, list(map(Path, paths)), spec.name) for paths in tests or [])
    if tests and len(given) < len(tests):
        raise ConfigError("two --test sets share a name (their first file's name): rename one")
    ckpt_name = t.path.stem
    files = [Path(p) for spec_ in given.values() for p in ([spec_] if isinstance(spec_, str) else spec_.values())]
    sums = {f: digest(f) for f in files}
    # Beside the run's own outputs; a checkpoint outside a run folder gets a folder beside it. Named
    # for the files' contents too: two test sets of one file name (a/test.en, b/test.en) keep apart.
    home = t.path.parent.parent if t.path.parent.name == "checkpoints" else t.path.parent
    data_id = f"{'+'.join(given)}-{hashlib.sha256(''.join(sums.values()).encode()).hexdigest()[:8]}" if given else "preset"
    out = Path(out_dir).resolve() if out_dir else home / EVAL_DIR / f"{ckpt_name}-{data_id}"
    # Now, not after the scoring: the outputs are written at its end.
    check_writable(out / "outputs", "give another --out" if out_dir else "give --out DIR")
    (out / "outputs").mkdir(parents=True, exist_ok=True)
    # The precision its run tested under, unless asked otherwise: the same numbers need the same arithmetic.
    precision = precision or t.info.get("precision", "32-true")
    try:  # before the data: a bad --accelerator fails in a line, not after minutes of features
        trainer = L.Trainer(default_root_dir=out, logger=False, enable_checkpointing=False, enable_model_summary=False,
                            accelerator=accelerator, devices=1, callbacks=[progress_bar()], num_sanity_val_steps=0,
                            precision=precision)
    except (TypeError, ValueError, MisconfigurationException) as err:
        raise ConfigError(f"--accelerator {accelerator} / --precision {precision}: {err}") from err
    # Two evaluations of the same checkpoint and files would share this folder: the second is refused
    # rather than delete, or bundle, the first's outputs.
    with only_process(out, doing="is using this folder now", then="then rerun (or give --out another folder)"):
        earlier = sorted((out / "outputs").glob("*.jsonl"))  # they would be bundled with this evaluation's
        if earlier and out_dir:  # a folder the user named may be a run's own: never cleared
            raise ConfigError(f"--out {out}: already holds outputs ({earlier[0]}); give a folder of its own, or "
                              f"delete {out / 'outputs'}")
        for stale in earlier:  # this evaluation's own folder: an earlier evaluation of the same files
            stale.unlink()
        dm = t.datamodule(data_root, given or None, batch_size)
        dm.prepare_data()
        eval_data = "; ".join(f"{f} sha256:{sums[f]}" for f in files) or _preset_data(t, dm, data_root)
        dm.setup("test")
        t.model.use_test_streams(dm.stream_names())
        start = time.perf_counter()
        results = trainer.test(t.model, datamodule=dm, verbose=False, weights_only=True)
        seconds = time.perf_counter() - start
        metrics = {k: float(v) for d in results for k, v in d.items()}
        info, row_of_run = t.info, trained.run_row(t.path)
        # As a training row has it: the commit whose code trained its first epochs, when not the last one's.
        began = info.get("resumed_from_commit") or row_of_run.get("resumed_from_commit")
        finished = datetime.now(timezone.utc)
        row = {
            "task": spec.name,
            "preset": info.get("preset", row_of_run.get("preset", "")),
            "dropout": info.get("dropout", row_of_run.get("dropout", "")),
            "regularizer": info.get("regularizer", row_of_run.get("regularizer", "")),
            "dropout_rate": info.get("dropout_rate", row_of_run.get("dropout_rate", "")),
            "seed": info.get("seed", row_of_run.get("seed", "")),
            # Not `run_id`: a training row replaces the rows holding its run_id (benchmark.results.append_row).
            "trained_run_id": info.get("run_id", row_of_run.get("run_id", "")),
            "evaluation": f"{ckpt_name} checkpoint",
            "overrides": info.get("overrides", row_of_run.get("overrides", "")),
            "config_hash": info.get("config_hash", row_of_run.get("config_hash", "")),
            **{k: f"{v:.4f}" for k, v in sorted(metrics.items())},
            **t.model.row_info(),
            "eval_data": eval_data,
            "steps": "" if t.global_step is None else t.global_step,
            **({"resumed_from_commit": began} if began else {}),
            "wall_s": f"{seconds:.1f}",
            "device": device_name(trainer),
            "precision": precision_label(trainer),  # what it ran in: Lightning makes 16-mixed bf16 on a CPU
            "devices": 1,
            "host": platform.node(),
            "git_commit": git_commit(),
            "trained_commit": info.get("git_commit", row_of_run.get("git_commit", "")),
            "finished_utc": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "run_dir": str(t.path),
            "command": command,
        }
        env, pkgs = environment.fingerprint(trainer.strategy.root_device)
        environment.save_package_list(Path(results_dir), env["env_packages"], pkgs)
        row.update(env)
        # One file per evaluation: a later one of the same checkpoint and files (another precision, newer
        # code) must not replace the hypotheses an earlier row points at.
        saved = save_outputs(out, Path(results_dir), f"eval-{home.name}-{out.name}-{finished:%Y%m%dT%H%M%S}-"
                                                     f"{uuid.uuid4().hex[:6]}")
        row["outputs"] = saved.relative_to(results_dir).as_posix() if saved else ""
        append_row(results_dir, row)
        return row
