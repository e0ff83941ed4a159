"""Bad flags, presets and data give one clear line (exit 2) and write no results row."""

from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.config import apply_dropout, apply_regularizer, load_preset, overrides_of
from benchmark.leaderboard import COLUMNS, build
from benchmark.results import append_row, read_rows
from tasks.nn.errors import ConfigError

FAST = ["--set", "model.hidden_size=8", "--set", "data.batch_size=4", "--set", "data.bptt=5",
        "--max-steps", "2", "--set", "trainer.limit_val_batches=1", "--set", "trainer.limit_test_batches=1",
        "--set", "trainer.enable_progress_bar=false", "--set", "trainer.enable_model_summary=false"]


def bench(tmp_path, *args) -> int:
    return main(["run", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), *args])


def test_unknown_preset_lists_the_known_ones(tmp_path, capsys):
    assert bench(tmp_path, "--task", "ptb", "--preset", "huge") == 2
    err = capsys.readouterr().err
    assert "unknown preset 'huge'" in err and "large, large-variational, medium, medium-awd, medium-variational, paper, quick, small" in err


def test_unknown_task(tmp_path, capsys):
    assert bench(tmp_path, "--task", "chess") == 2
    assert "unknown task(s) chess; known: captioning, ptb, speech, translation or all" in capsys.readouterr().err
    assert bench(tmp_path, "--task", "ptb,chess,speech") == 2  # a list fails as a whole, before any training
    assert "unknown task(s) chess" in capsys.readouterr().err


def test_unknown_flag_and_bad_values_exit_2(tmp_path, capsys):
    for args in (["--task", "ptb", "--frobnicate"], ["--task", "ptb", "--dropout", "maybe"],
                 ["--task", "ptb", "--max-epochs", "0"]):
        with pytest.raises(SystemExit) as exit_:
            bench(tmp_path, *args)
        assert exit_.value.code == 2
    assert "--max-epochs: must be >= 1" in capsys.readouterr().err


def test_bad_set_override(tmp_path, capsys):
    assert bench(tmp_path, "--task", "ptb", "--set", "hidden_size=3") == 2
    assert "expected model.KEY=VALUE" in capsys.readouterr().err


def test_set_and_presets_read_1e_3_as_a_number(tmp_path):
    """PyYAML follows YAML 1.1, where a float needs a dot: `1e-3` would reach the optimizer as text."""
    assert load_preset("ptb", "quick", ["model.lr=1e-3"]).model["lr"] == 0.001
    assert load_preset("ptb", "quick", ["model.lr='1e-3'"]).model["lr"] == "1e-3"  # quoted: a string
    (tmp_path / "mine.yaml").write_text("model:\n  lr: 1e-3\n  weight_decay: 5E-5\n")
    assert load_preset("ptb", str(tmp_path / "mine.yaml")).model == {"lr": 0.001, "weight_decay": 5e-5}


def test_bad_presets_and_set_values_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"--set 'model.lr=\[1,2': '\[1,2' is not a YAML value"):
        load_preset("ptb", "quick", ["model.lr=[1,2"])
    (tmp_path / "typo.yaml").write_text("extends: smal\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: `extends: smal`: no .*smal\.yaml; known: .*typo"):
        load_preset("ptb", str(tmp_path / "typo.yaml"))
    (tmp_path / "flat.yaml").write_text("model: 5\n")
    with pytest.raises(ConfigError, match=r"flat\.yaml: `model:` must hold KEY: VALUE lines, got 5"):
        load_preset("ptb", str(tmp_path / "flat.yaml"))


def test_resume_into_an_older_folder_of_other_settings_is_refused(tmp_path, data_root, capsys):
    """A folder from before config.yaml was kept: its results row says what it ran."""
    other = tmp_path / "older"
    (other / "checkpoints").mkdir(parents=True)
    (other / "result.json").write_text('{"row": {"task": "ptb", "config_hash": "deadbeef00", "seed": "0", '
                                       '"dropout": "on", "test_ppl": "1.0"}}\n')
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--seed", "0", "--dropout", "on", "--data-root",
                 str(data_root), "--run-dir", str(other), "--resume") == 2
    err = capsys.readouterr().err
    assert f"{other} holds a run of other settings (config_hash 'deadbeef00' there" in err and "seed" not in err


def test_resume_into_an_older_unfinished_folder_of_other_settings_is_refused(tmp_path, data_root, capsys):
    """Neither config.yaml nor a results row: the checkpoint's own record of its run says what it trained."""
    import torch

    other = tmp_path / "older"
    (other / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "loops": {}, "epoch": 0, "rnnreg_run": {"task": "ptb", "config_hash": "deadbeef00",
                                                                         "seed": 0, "dropout": "on"}},
               other / "checkpoints" / "last.ckpt")
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--seed", "0", "--dropout", "on", "--data-root",
                 str(data_root), "--run-dir", str(other), "--resume") == 2
    assert f"{other} holds a run of other settings (config_hash 'deadbeef00' there" in capsys.readouterr().err


def test_resume_into_a_folder_of_other_settings_is_refused(tmp_path, data_root, capsys):
    """--run-dir can name any folder: --resume must not hand back a result of other settings as this run's."""
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.yaml").write_text("task: ptb\nconfig_hash: deadbeef00\nseed: 7\ndropout: 'off'\n")
    (other / "result.json").write_text('{"task": "ptb", "test_ppl": "1.0", "config_hash": "deadbeef00"}\n')
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--seed", "0", "--dropout", "on", "--data-root",
                 str(data_root), "--run-dir", str(other), "--resume") == 2
    err = capsys.readouterr().err
    assert f"{other} holds a run of other settings (config_hash 'deadbeef00' there" in err
    assert "seed 7 there, 0 here" in err and not (tmp_path / "results").exists()


def test_unknown_model_key_names_the_preset_file(tmp_path, data_root, capsys):
    assert bench(tmp_path, "--task", "ptb", "--data-root", str(data_root), "--set", "model.hiden_size=3") == 2
    err = capsys.readouterr().err
    assert "configs/ptb/small.yaml: bad `model` section" in err and "hiden_size" in err
    assert not (tmp_path / "results").exists() and not any((tmp_path / "runs").glob("*"))  # no empty run folder


def test_bad_model_value_names_where_it_came_from(tmp_path, data_root, capsys):
    assert bench(tmp_path, "--task", "ptb", "--data-root", str(data_root), "--dropout", "on",
                 "--set", "model.dropout=1.5") == 2
    err = capsys.readouterr().err
    assert "--set model.dropout: a dropout rate is a number in [0, 1), got 1.5" in err  # with the preset, before data
    assert "Traceback" not in err and not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_a_rejected_setting_leaves_a_folder_that_was_there_as_it_was(tmp_path, data_root, capsys):
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    assert bench(tmp_path, "--task", "ptb", "--data-root", str(data_root), "--run-dir", str(kept),
                 "--dropout", "on", "--set", "model.hiden_size=3") == 2
    assert "bad `model` section" in capsys.readouterr().err
    assert (kept / "notes.txt").read_text() == "mine\n"  # not the run's own folder to remove


def test_missing_data_says_what_to_fetch_and_writes_no_row(tmp_path, monkeypatch, capsys):
    import dataclasses

    from datamodules import sources

    monkeypatch.setattr(sources, "PTB", dataclasses.replace(sources.PTB, url="file:///nowhere/simple-examples.tgz"))
    assert bench(tmp_path, "--task", "ptb", "--data-root", str(tmp_path / "empty"), *FAST) == 2
    err = capsys.readouterr().err
    assert "could not download ptb" in err and str(tmp_path / "empty" / "ptb" / "ptb.valid.txt") in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("dropout", ["on", "off"])
def test_a_rate_given_by_set_is_an_override_in_both_arms_and_the_preset_as_named_has_none(dropout):
    """A `--set model.dropout=0.3` run is another setting (its own hash): were it "the preset as named",
    the leaderboard would take its hash as the current one and show the preset's own rows as superseded."""
    changed = load_preset("speech", "quick", ["model.dropout=0.3"])
    apply_dropout(changed, dropout)
    assert overrides_of(changed, {}) == "model.dropout=0.3"
    as_named = load_preset("speech", "quick")
    apply_dropout(as_named, dropout)
    assert overrides_of(as_named, {}) == "" and as_named.hashed_model["dropout"] == 0.5
    regularized = load_preset("speech", "quick")
    apply_regularizer(regularized, "locked")
    apply_dropout(regularized, dropout)
    assert overrides_of(regularized, {}) == ""
    # 1 is not 1.0 to the settings hash (JSON), so not to the overrides either
    integer = load_preset("ptb", "medium", ["model.lr=1"])
    apply_dropout(integer, dropout)
    assert overrides_of(integer, {}) == "model.lr=1"


def test_run_appends_one_row_with_its_overrides(tmp_path, data_root):
    for dropout in ("on", "off"):
        assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--dropout", dropout,
                     "--data-root", str(data_root), *FAST) == 0
    rows = read_rows(tmp_path / "results" / "runs.csv")
    assert [r["dropout"] for r in rows] == ["on", "off"]
    assert rows[0]["overrides"] == ("model.hidden_size=8 data.batch_size=4 data.bptt=5 trainer.limit_test_batches=1 "
                                    "trainer.limit_val_batches=1 trainer.max_steps=2")
    assert rows[0]["command"].startswith("bench run --results-dir")
    # shortened runs stay off the leaderboard
    assert main(["leaderboard", "--results-dir", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "leaderboard.csv").read_text().strip() == ",".join(COLUMNS)


def test_leaderboard_sets_the_paper_beside_the_setting_it_ran(tmp_path):
    rows = (("off", "0", "999.0"), ("off", "0", "116.0"), ("off", "1", "118.0"), ("on", "0", "100.0"))
    for dropout, seed, ppl in rows:  # as `bench run` writes them; seed 0 of `off` ran twice
        append_row(tmp_path, {"task": "ptb", "preset": "small", "dropout": dropout, "seed": seed, "overrides": "",
                              "train_ppl": "40.0", "valid_ppl": "120.0", "test_ppl": ppl,
                              "finished_utc": f"2026-11-26T10:0{seed}:00Z", "command": "bench run --task ptb"})
    append_row(tmp_path, {"task": "ptb", "preset": "small", "dropout": "off", "seed": "1",
                          "overrides": "trainer.max_steps=2", "test_ppl": "900.0"})
    append_row(tmp_path, {"task": "ptb", "preset": "small", "dropout": "off", "seed": "0+1", "ensemble": "2",
                          "overrides": "", "test_ppl": "105.0", "command": "bench ensemble --task ptb"})
    board = {(r["dropout"], r["ensemble"]): r for r in read_rows(build(tmp_path))}
    off = board[("off", "")]
    assert (off["metric"], off["mean"], off["std"], off["seeds"]) == ("test_ppl", "117.00", "1.41", "2")
    assert (off["paper"], off["diff"], off["diff_pct"]) == ("114.5", "2.50", "+2.2")
    assert (off["split_metric"], off["train"], off["valid"], off["test"]) == ("ppl", "40.00", "120.00", "117.00")
    assert board[("on", "")]["paper"] == "" and board[("on", "")]["std"] == ""  # the paper ran small without dropout
    assert board[("off", "2")]["mean"] == "105.00" and board[("off", "2")]["seeds"] == "1"
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## ptb: Word-level perplexity on the Penn Tree Bank (Sec. 4.1, Table 1)" in md
    assert "| small (legacy: before settings hashes) | off | none | 2 | **117.00 ± 1.41** |  | 114.5 | 2.50 | 40.00 | 120.00 | 117.00 |" in md
    # one paired seed (0) is a smoke test, not a claim
    assert "on − off = **-16.00** over 1 paired seed(s): one seed: a smoke test, no claim." in md
    assert "| small (ensemble of 2) (legacy: before settings hashes) | off | none | 1 | **105.00** |" in md


def test_an_ensemble_has_no_paper_figure_and_its_last_and_best_checkpoints_pool_apart(tmp_path):
    base = {"task": "ptb", "preset": "medium", "config_hash": "h1", "dropout": "on", "overrides": ""}
    append_row(tmp_path, {**base, "seed": "0", "test_ppl": "84.0"})
    for checkpoint, ppl in (("last", "80.0"), ("best", "78.0")):
        append_row(tmp_path, {**base, "seed": "0+1", "ensemble": "2", "checkpoint": checkpoint, "test_ppl": ppl})
    # An older row: no `checkpoint` column, best files named in run_dir, members in the other order.
    append_row(tmp_path, {**base, "seed": "1+0", "ensemble": "2", "test_ppl": "77.0", "finished_utc": "2026-12-04",
                          "run_dir": "b/checkpoints/best-epoch010.ckpt a/checkpoints/best-epoch011.ckpt"})
    board = {r["ensemble"]: r for r in read_rows(build(tmp_path, plots=False))}
    assert board[""]["paper"] == "82.7"  # Table 1's medium regularized LSTM: one model, beside one model
    assert (board["2"]["mean"], board["2"]["paper"], board["2"]["diff"]) == ("80.00", "", "")
    # 1+0 is 0+1 (one set of members, the latest row), and its files say best though no column does.
    assert (board["2, best checkpoints"]["mean"], board["2, best checkpoints"]["seeds"]) == ("77.00", "1")


def test_leaderboard_names_the_line_of_a_value_that_is_not_a_number(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text("task,preset,config_hash,dropout,seed,test_ppl\n"
                                       "ptb,medium,h1,on,0,84.0\nptb,medium,h1,on,1,n/a\n")
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--logger", "csv"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'runs.csv'}: data line 2 has test_ppl = 'n/a', not a number" in err and "Traceback" not in err
    assert not (tmp_path / "leaderboard.csv").exists()


@pytest.mark.parametrize("line, says", [("ptb,medium,h1,On,1,84.0", "has dropout 'On', not on or off"),
                                         ("ptb,medium,h1,on,1+2,84.0", "has seed '1+2', not a whole number")])
def test_leaderboard_refuses_a_row_that_would_quietly_leave_its_pair(tmp_path, capsys, line, says):
    """A hand-typed `On` would make an arm of its own and take a seed out of the paired effect; a
    `1+2` seed belongs to an ensemble row alone."""
    (tmp_path / "runs.csv").write_text("task,preset,config_hash,dropout,seed,test_ppl\n"
                                       f"ptb,medium,h1,off,1,90.0\n{line}\n")
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--logger", "csv"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'runs.csv'}: data line 2 {says}" in err and "Traceback" not in err


def test_an_emptied_runs_file_leaves_the_board_as_it_was(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text("task,preset,config_hash,dropout,seed,test_ppl\nptb,medium,h1,on,0,84.0\n")
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--logger", "csv"]) == 0
    board = (tmp_path / "LEADERBOARD.md").read_text()
    for emptied in ("", "task,preset,config_hash,dropout,seed,test_ppl\n"):
        (tmp_path / "runs.csv").write_text(emptied)
        assert main(["leaderboard", "--results-dir", str(tmp_path), "--logger", "csv"]) == 2
        assert "no runs in it" in capsys.readouterr().err
        assert (tmp_path / "LEADERBOARD.md").read_text() == board


def test_leaderboard_of_a_folder_without_runs_says_so_and_writes_nothing(tmp_path, capsys):
    assert main(["leaderboard", "--results-dir", str(tmp_path / "reslts"), "--logger", "csv"]) == 2
    assert f"{tmp_path / 'reslts' / 'runs.csv'}: not found" in capsys.readouterr().err
    assert not (tmp_path / "reslts").exists()


def test_a_rewritten_results_file_keeps_its_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = append_row(tmp_path, {"task": "ptb", "seed": "0", "test_ppl": "100.0"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a new file: what the umask gives, not mkstemp's 0600
        path.chmod(0o664)  # a group's shared folder
        append_row(tmp_path, {"task": "ptb", "seed": "1", "test_ppl": "101.0"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_small_preset_on_uses_a_rate_marked_not_from_the_paper():
    preset = load_preset("ptb", "small")
    assert preset.default_dropout == "off" and "NOT from the paper" in preset.notes
    assert apply_dropout(preset, "on") == {"dropout": 0.5}
    medium = load_preset("ptb", "medium")
    assert apply_dropout(medium, "off") == {"dropout": 0.0} and medium.model["dropout"] == 0.0
    with pytest.raises(ConfigError):
        apply_dropout(load_preset("ptb", "large"), "sometimes")


def test_paper_hyperparameters_in_presets():
    small, medium, large = (load_preset("ptb", p) for p in ("small", "medium", "large"))
    assert (small.model["hidden_size"], small.data["bptt"], small.trainer["max_epochs"], small.model["init_scale"]) == (200, 20, 13, 0.1)
    assert (medium.model["hidden_size"], medium.data["bptt"], medium.trainer["max_epochs"], medium.model["dropout"]) == (650, 35, 39, 0.5)
    assert (large.model["hidden_size"], large.trainer["gradient_clip_val"], large.model["dropout"]) == (1500, 10, 0.65)
    assert {p.data["batch_size"] for p in (small, medium, large)} == {20}


def test_unreadable_results_file_fails_before_training(tmp_path, data_root, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs.csv").write_bytes(b"task,preset\n\xff\xfe\x00broken")
    assert bench(tmp_path, "--task", "ptb", "--data-root", str(data_root), *FAST) == 2
    assert "runs.csv: not a readable results CSV" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    assert (tmp_path / "results" / "runs.csv").read_bytes().endswith(b"broken")  # left as it was


def test_extra_translation_test_files_by_path(tmp_path, capsys):
    (tmp_path / "news.en").write_text("Hello.\n")
    assert bench(tmp_path, "--task", "translation", "--preset", "quick", "--test-src", str(tmp_path / "news.en")) == 2
    assert "--test-src and --test-ref go together" in capsys.readouterr().err
    assert bench(tmp_path, "--task", "ptb", "--test-src", "a", "--test-ref", "b") == 2
    assert "apply to translation presets, not ptb/small" in capsys.readouterr().err
    assert bench(tmp_path, "--task", "translation", "--test-src", str(tmp_path / "news.en"),
                 "--test-ref", str(tmp_path / "news.fr")) == 2
    assert "news.fr: not found (given with --test-src/--test-ref)" in capsys.readouterr().err


def test_a_test_set_by_path_hashes_by_its_contents_not_where_it_lies(tmp_path, data_root, capsys):
    """The same command in another checkout (or with the files copied elsewhere) pools with the first."""
    hashes = []
    for folder, reference in (("a", "Bonjour."), ("b", "Bonjour."), ("c", "Salut.")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "news.en").write_text("Hello.\n")
        (tmp_path / folder / "news.fr").write_text(f"{reference}\n")
        assert bench(tmp_path, "--task", "translation", "--preset", "quick", "--data-root", str(data_root),
                     "--test-src", str(tmp_path / folder / "news.en"), "--test-ref", str(tmp_path / folder / "news.fr"),
                     "--dropout", "on", "--dry-run") == 0
        hashes.append(capsys.readouterr().out.split("config_hash=")[1].split()[0])
    assert hashes[0] == hashes[1] != hashes[2]


def test_fetch_lists_every_data_set():
    from benchmark.cli import build_parser
    from datamodules.sources import SOURCES

    assert set(SOURCES) == {"ptb", "an4", "timit-sample", "tatoeba", "multi30k", "wmt-dev", "wmt14", "coco2014", "flickr8k"}
    assert all(spec.name for spec in SOURCES.values())
    assert build_parser().parse_args(["fetch", "flickr8k"]).dataset == "flickr8k"
    assert build_parser().parse_args(["fetch", "an4"]).dataset == "an4"  # 64 MB: no --yes needed
    assert build_parser().parse_args(["fetch", "coco2014", "--yes"]).yes


def test_task_all_reports_a_task_without_data_and_runs_on(tmp_path, monkeypatch, capsys):
    from datamodules import download as fetch
    from tasks import registry
    from tasks.nn.errors import DataError

    def offline(ds, root, timeout=60.0):
        raise DataError(f"could not download {ds.name}: no network")

    monkeypatch.setattr(registry, "names", lambda: ["captioning", "translation"])
    monkeypatch.setattr(fetch, "download", offline)
    assert bench(tmp_path, "--task", "all", "--preset", "quick", "--data-root", str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert "captioning-quick-dropout_on-seed0:" in err and "flickr8k/images: image folder not found" in err
    assert "translation-quick-dropout_on-seed0: could not download multi30k: no network" in err
    assert "2 of 2 runs failed" in err and "rerun with --resume to retry only those" in err
    assert not (tmp_path / "results" / "runs.csv").exists()


def test_each_log_message_is_printed_once():
    """In a fresh process, as the CLI runs: Lightning's console handler and the root's both exist."""
    import subprocess
    import sys

    code = ("import logging, lightning; from benchmark.cli import configure_logging; configure_logging(); "
            "logging.getLogger('lightning.pytorch.utilities.rank_zero').info('a lightning message'); "
            "logging.getLogger('benchmark.runner').info('a project message')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.count("a lightning message") == 1 and err.count("a project message") == 1, err


def test_a_ptb_run_needs_no_audio_or_text_extras(tmp_path, data_root):
    """The GPU image that runs scripts/gpu_check.sh has torch and lightning but not soundfile,
    sacremoses, jiwer or wandb: a PTB run with the CSV logger must not import them (soundfile was
    imported by the CLI through the data sources and stopped every GPU stage)."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent("""
        import importlib.abc, sys
        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {"soundfile", "sacremoses", "jiwer", "wandb"}:
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, Missing())
        from benchmark.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    args = ["run", "--task", "ptb", "--data-root", str(data_root), "--logger", "csv", "--dropout", "on",
            "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), *FAST]
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_rows(tmp_path / "results" / "runs.csv")) == 1
