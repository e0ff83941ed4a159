"""A run's folders and files: a results folder that cannot take the row fails before training, a
run folder taken by another process meanwhile is refused inside its lock, two runs of one name keep
their own files, a resume on another world size (or one refused by a bad setting) leaves the run as
it was, and `bench eval` / `bench ensemble` know the data a checkpoint was trained on."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from benchmark import results as results_module
from benchmark import runner, wandb_log
from benchmark.ensemble import run_ensemble
from benchmark.evaluate import evaluate
from benchmark.results import read_rows
from benchmark.runner import RunOptions, run
from tasks.nn.errors import ConfigError
from tests.conftest import find_run, tiny_preset
from tests.test_language_model import Crash

NAME = "ptb-small-dropout_on-seed0"


def opts(root: Path, data_root: Path, **kw) -> RunOptions:
    return RunOptions(dropout="on", data_root=data_root, results_dir=kw.pop("results_dir", root / "results"),
                      runs_dir=root / "runs", command=kw.pop("command", "test"), **kw)


def crashed_run(root: Path, data_root: Path) -> Path:
    """A run stopped in its second epoch (~78 steps each): its last.ckpt, config.yaml and csv/metrics.csv in place."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_preset(), opts(root, data_root, callbacks=[Crash(at_step=100)], command="first"))
    run_dir = find_run(root / "runs", NAME)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "csv" / "metrics.csv").is_file()
    return run_dir


def files_of(run_dir: Path) -> dict[str, bytes]:
    """The run's config and logs, byte for byte."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in [run_dir / "config.yaml", *sorted((run_dir / "csv").iterdir())]}


def edit_run_info(ckpt: Path, **changes) -> None:
    data = torch.load(ckpt, weights_only=True)
    for key, value in changes.items():
        if value is None:
            data["rnnreg_run"].pop(key, None)
        else:
            data["rnnreg_run"][key] = value
    torch.save(data, ckpt)


class Started:
    """Records whether a run got as far as training."""

    def __init__(self) -> None:
        import lightning as L

        outer = self
        self.fits = 0

        class Callback(L.Callback):
            def on_fit_start(self, trainer, pl_module):
                outer.fits += 1

        self.callback = Callback()


# ---- 1. an unwritable results folder fails before training ----------------------------------------

def test_a_results_folder_that_cannot_be_made_fails_before_training(tmp_path, data_root):
    (tmp_path / "a-file").write_text("not a folder")
    started = Started()
    with pytest.raises(ConfigError, match=r"a-file/results: cannot be made .*--results-dir"):
        run(tiny_preset(), opts(tmp_path, data_root, results_dir=tmp_path / "a-file" / "results",
                                callbacks=[started.callback]))
    assert started.fits == 0 and not (tmp_path / "runs").exists()  # refused before plan(): no run folder at all


def test_an_unwritable_outputs_folder_or_lock_file_fails_before_training(tmp_path, data_root, monkeypatch):
    results = tmp_path / "results"
    (results / "outputs").mkdir(parents=True)
    real_mkstemp = results_module.tempfile.mkstemp

    def refuse_outputs(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).name == "outputs":
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    started = Started()
    monkeypatch.setattr(results_module.tempfile, "mkstemp", refuse_outputs)
    with pytest.raises(ConfigError, match=r"results/outputs: cannot be written \(Permission denied\)"):
        run(tiny_preset(), opts(tmp_path, data_root, callbacks=[started.callback]))
    monkeypatch.undo()
    (results / "runs.csv").write_text("task\n")
    (results / "runs.csv.lock").write_text("")
    real_access = results_module.os.access
    # As a non-root user sees files another user left: runs.csv is rewritten by rename (the folder is
    # enough), the lock file is opened in place (it must be writable itself).
    monkeypatch.setattr(results_module.os, "access",
                        lambda path, mode: not str(path).endswith(("runs.csv", ".lock")) and real_access(path, mode))
    with pytest.raises(ConfigError, match=r"runs.csv.lock: not writable by you .*; delete it"):
        run(tiny_preset(), opts(tmp_path, data_root, callbacks=[started.callback]))
    assert started.fits == 0 and (results / "runs.csv").read_text() == "task\n"
    (results / "runs.csv.lock").unlink()
    runner.check_results_dir(results)  # a runs.csv not writable in place, in a folder that is: fine


@pytest.mark.skipif(getattr(os, "geteuid", lambda: 1)() != 0, reason="giving a file to another user needs root")
def test_another_users_file_in_a_shared_folder_with_the_sticky_bit_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                                             capsys):
    """Only a file's owner, the folder's or root may replace it by rename there (runs.csv, the board's files)."""
    from benchmark.cli import main

    results = tmp_path / "results"
    results.mkdir(mode=0o1777)
    results.chmod(0o1777)
    (results / "runs.csv").write_text("task\n")
    os.chown(results / "runs.csv", 4242, -1)
    monkeypatch.setattr(results_module.os, "geteuid", lambda: 4343)
    with pytest.raises(ConfigError, match=r"runs.csv: another user's, in a shared folder \(sticky bit\)"):
        runner.check_results_dir(results)
    (results / "leaderboard.csv").write_text("")
    os.chown(results / "leaderboard.csv", 4242, -1)
    assert main(["leaderboard", "--results-dir", str(results), "--logger", "csv"]) == 2
    assert "leaderboard.csv: another user's, in a shared folder (sticky bit)" in capsys.readouterr().err
    os.chown(results / "leaderboard.csv", 4343, -1)
    (results / "wandb-dashboard.json").write_text("{}")
    os.chown(results / "wandb-dashboard.json", 4242, -1)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["dashboard", "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "wandb-dashboard.json: another user's, in a shared folder (sticky bit)" in capsys.readouterr().err
    monkeypatch.setattr(results_module.os, "geteuid", lambda: 4242)
    runner.check_results_dir(results)  # the file's owner may
    os.chown(results, 5000, -1)
    monkeypatch.setattr(results_module.os, "geteuid", lambda: 5000)
    runner.check_results_dir(results)  # so may the folder's
    results.chmod(0o777)
    monkeypatch.setattr(results_module.os, "geteuid", lambda: 4343)
    runner.check_results_dir(results)  # and anyone, without the sticky bit


def test_a_lock_or_damaged_lines_file_already_there_is_opened_without_o_creat(tmp_path, monkeypatch):
    """In a shared folder with the sticky bit, fs.protected_regular refuses an O_CREAT open of another
    user's file, root included: a file already there is opened without it."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs.csv").write_text("task,seed\nptb,0\nptb\n")  # a damaged last line: it goes aside
    (results / "runs.csv.lock").write_text("")
    (results / "runs.csv.damaged").write_text("")
    real_open = results_module.os.open

    def protected_regular(path, flags, *args):
        assert not (flags & os.O_CREAT and Path(path).exists()), path
        return real_open(path, flags, *args)

    monkeypatch.setattr(results_module.os, "open", protected_regular)
    results_module.append_row(results, {"task": "ptb", "seed": "1"})
    assert (results / "runs.csv.damaged").read_text() == "ptb\n"
    assert [r["seed"] for r in results_module.read_rows(results / "runs.csv")] == ["0", "1"]


def test_eval_and_ensemble_check_their_results_folder_before_any_work(tmp_path, monkeypatch):
    from benchmark import ensemble, trained

    (tmp_path / "a-file").write_text("not a folder")
    loaded = []
    monkeypatch.setattr(trained, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError, match="a-file/evals: cannot be made"):
        evaluate(tmp_path / "some-run", "last", tmp_path, tmp_path / "a-file" / "evals")
    monkeypatch.setattr(ensemble, "_member", lambda *a: loaded.append(a))
    with pytest.raises(ConfigError, match="a-file/evals: cannot be made"):
        run_ensemble("ptb", [tmp_path / "a", tmp_path / "b"], tmp_path, tmp_path / "a-file" / "evals")
    assert loaded == []  # neither loaded a model first


# ---- 2. the started check is repeated inside the folder lock ---------------------------------------

def test_a_run_started_by_another_process_after_plan_is_refused_inside_the_lock(tmp_path, data_root, monkeypatch):
    """Two processes can both pass plan()'s look before either takes the folder's lock; the second
    to get it finds the first's run there, and neither trains over it nor deletes it."""
    real = runner.only_process

    @contextmanager
    def other_process_ran_first(run_dir, *args, **kwargs):
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the other process's checkpoint")
        with real(run_dir, *args, **kwargs):
            yield

    started = Started()
    monkeypatch.setattr(runner, "only_process", other_process_ran_first)
    with pytest.raises(ConfigError, match="already holds an earlier run"):
        run(tiny_preset(), opts(tmp_path, data_root, callbacks=[started.callback]))
    last = find_run(tmp_path / "runs", NAME) / "checkpoints" / "last.ckpt"
    assert started.fits == 0 and last.read_bytes() == b"the other process's checkpoint"


# ---- 3. two runs of one name into one results folder -----------------------------------------------

def test_two_runs_of_one_name_keep_their_own_curves_in_one_results_folder(tmp_path, data_root):
    results = tmp_path / "results"
    rows = [run(tiny_preset(), opts(tmp_path / machine, data_root, results_dir=results)) for machine in ("a", "b")]
    assert [r["run_id"] for r in read_rows(results / "runs.csv")] == [r["run_id"] for r in rows]
    names = [Path(r["curves"]).name for r in rows]
    run_dir = find_run(tmp_path / "a" / "runs", NAME)
    assert names[0] == f"{run_dir.name}-{rows[0]['run_id']}.csv" and names[0] != names[1]
    assert all((results / r["curves"]).is_file() for r in rows)
    # A finished run skipped by --resume into another results folder takes its files there by the same names.
    again = run(tiny_preset(), opts(tmp_path / "a", data_root, results_dir=tmp_path / "elsewhere", resume=True))
    (copied,) = read_rows(tmp_path / "elsewhere" / "runs.csv")
    assert again["skipped"] is True and copied["curves"] == rows[0]["curves"]
    assert (tmp_path / "elsewhere" / copied["curves"]).is_file()


# ---- 4 and 7. a resume refused leaves the run as it was ---------------------------------------------

def test_a_resume_on_another_world_size_is_refused_and_leaves_the_run_as_it_was(tmp_path, data_root):
    run_dir = crashed_run(tmp_path, data_root)
    last = run_dir / "checkpoints" / "last.ckpt"
    info = torch.load(last, weights_only=True)["rnnreg_run"]
    assert info["world_size"] == 1
    edit_run_info(last, world_size=2)  # as if trained on two GPUs
    before = files_of(run_dir)
    with pytest.raises(ConfigError, match=r"world size 2 .* this run has 1; resume with the same --devices/num_nodes"):
        run(tiny_preset(), opts(tmp_path, data_root, resume=True, command="second"))
    assert files_of(run_dir) == before  # config.yaml not rewritten, metrics.csv not set aside
    edit_run_info(last, world_size=None)  # a checkpoint from before runs kept it: let through
    row = run(tiny_preset(), opts(tmp_path, data_root, resume=True, command="second"))
    assert row["epochs"] == 2 and (run_dir / "csv" / "metrics.part-1.csv").read_bytes() == before["csv/metrics.csv"]
    assert "command: second" in (run_dir / "config.yaml").read_text()


def test_a_build_failure_finishes_the_loggers_and_leaves_the_run_as_it_was(tmp_path, data_root, monkeypatch):
    run_dir = crashed_run(tmp_path, data_root)
    before = files_of(run_dir)
    finished = []
    monkeypatch.setattr(wandb_log, "finish", lambda loggers, summary=None, failed=False: finished.append(
        (len(loggers), failed)))
    # A placement setting: the same settings hash, so the same folder, and Lightning rejects it.
    with pytest.raises(ConfigError, match="bad trainer setting"):
        run(tiny_preset(), opts(tmp_path, data_root, resume=True, command="second", trainer={"strategy": "bogus"}))
    assert finished == [(1, True)] and files_of(run_dir) == before


# ---- 5 and 6. bench eval and bench ensemble know what a checkpoint was trained on -------------------

@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("seeds")
    rows = [run(tiny_preset(), opts(root, data_root, seed=seed)) for seed in (0, 1)]
    return root, rows, [find_run(root / "runs", f"ptb-small-dropout_on-seed{s}") for s in (0, 1)]


def test_checkpoints_carry_the_data_files_and_eval_rows_steps_and_where_a_run_began(two_seeds, data_root, tmp_path,
                                                                                    caplog):
    root, rows, (run_dir, _) = two_seeds
    info = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["rnnreg_run"]
    dm = runner.make_datamodule(tiny_preset(), data_root)
    assert info["data_files"] == runner.data_fingerprint(dm, data_root)
    ev = evaluate(run_dir, "last", data_root, tmp_path / "evals")
    assert ev["test_ppl"] == rows[0]["test_ppl"] and ev["eval_data"] == "the preset's test sets"
    assert ev["steps"] == rows[0]["steps"] and "resumed_from_commit" not in ev
    # Other data files under the data root: the row says so, and a warning.
    other = tmp_path / "other-data"
    shutil.copytree(data_root, other)
    with open(other / "ptb" / "ptb.train.txt", "a") as f:
        f.write(" the market rose \n")
    ev = evaluate(run_dir, "last", other, tmp_path / "evals")
    assert ev["eval_data"] == "the preset's test sets (data files differ from its training run's)"
    assert "differ from those its run trained on" in caplog.text
    # A run resumed after the code changed: its eval row names where it began, as its training row does.
    (tmp_path / "copy").mkdir()
    ckpt = tmp_path / "copy" / "last.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", ckpt)
    edit_run_info(ckpt, resumed_from_commit="0123456789ab", data_files=None)
    ev = evaluate(ckpt, "last", other, tmp_path / "evals")
    assert ev["resumed_from_commit"] == "0123456789ab" and ev["steps"] == rows[0]["steps"]
    assert ev["eval_data"] == "the preset's test sets"  # no fingerprint kept: nothing to compare


def test_an_ensemble_refuses_members_trained_on_other_data_files(two_seeds, data_root, tmp_path):
    root, rows, run_dirs = two_seeds
    copies = []
    for run_dir in run_dirs:  # copies, so that the module's runs stay as they are
        copies.append(tmp_path / run_dir.name)
        shutil.copytree(run_dir, copies[-1])
    edit_run_info(copies[1] / "checkpoints" / "last.ckpt", data_files="0" * 64)
    with pytest.raises(ConfigError, match="trained on other data files"):
        run_ensemble("ptb", copies, data_root, tmp_path / "results")
    edit_run_info(copies[1] / "checkpoints" / "last.ckpt", data_files=None)  # an older checkpoint: let through
    row = run_ensemble("ptb", copies, data_root, tmp_path / "results")
    assert row["ensemble"] == 2 and row["seed"] == "0+1"


def test_an_eval_test_folders_digest_leaves_hidden_files_out(tmp_path):
    """`eval_data` names a --test folder by its files' sha256: a cache or .DS_Store written beside
    them later must not make the same test set look like another."""
    from benchmark.evaluate import digest

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "sub" / "b.txt").write_text("b\n")
    before = digest(tmp_path)
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "feats.pt").write_bytes(b"x")
    assert digest(tmp_path) == before
    (tmp_path / "sub" / "b.txt").write_text("c\n")
    assert digest(tmp_path) != before


def test_a_broken_link_or_an_unreachable_folder_on_the_way_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "dangling").symlink_to(tmp_path / "unmounted")
    with pytest.raises(ConfigError, match=r"dangling/results: cannot be made \(.*dangling is a broken link\); fix"):
        results_module.check_writable(tmp_path / "dangling" / "results", "fix")
    real_exists = Path.exists

    def locked(self, *args, **kwargs):  # as a non-root user sees a folder of mode 0700 not theirs
        if self.name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", locked)
    with pytest.raises(ConfigError, match=r"cannot be reached \(Permission denied\); fix"):
        results_module.check_writable(tmp_path / "locked" / "x" / "results", "fix")


def test_resume_of_a_finished_run_skips_it_into_a_read_only_results_folder(tmp_path, data_root, monkeypatch):
    """--resume of finished runs writes nothing (an archived results folder may be read-only); one
    with work to do is still refused before it trains."""
    first = run(tiny_preset(), opts(tmp_path, data_root))
    real_mkstemp = results_module.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(tmp_path / "results"):
            raise OSError(30, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(results_module.tempfile, "mkstemp", read_only)
    again = run(tiny_preset(), opts(tmp_path, data_root, resume=True))
    assert again["skipped"] is True and again["run_id"] == first["run_id"]
    started = Started()
    with pytest.raises(ConfigError, match=r"results: cannot be written \(Read-only file system\)"):
        run(tiny_preset(), opts(tmp_path, data_root, resume=True, seed=1, callbacks=[started.callback]))
    assert started.fits == 0
