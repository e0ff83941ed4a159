"""The benchmark layer: sweeps (tasks x dropout x seeds), resuming them, the leaderboard's plots,
W&B offline logging and model averaging."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.ensemble import run_ensemble
from benchmark.leaderboard import build
from benchmark.results import append_row, read_rows, write_rows_atomic
from tasks.nn.mixture import mixture_nll
from tests.conftest import find_run

TINY = ["--set", "model.hidden_size=8", "--set", "data.batch_size=4", "--set", "data.bptt=5",
        "--set", "trainer.max_epochs=2", "--set", "trainer.enable_progress_bar=false",
        "--set", "trainer.enable_model_summary=false"]


def bench(tmp_path, *args) -> int:
    return main(["run", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), *args])


def test_dry_run_prints_every_planned_config(tmp_path, capsys):
    assert bench(tmp_path, "--task", "ptb,speech", "--preset", "quick", "--dropout", "on,off", "--num-seeds", "2",
                 "--dry-run") == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("# ")]
    assert len(heads) == 2 * 2 * 2
    off1 = next(h for h in heads if h.startswith("# ptb/quick dropout=off seed=1 "))
    chash = off1.split("config_hash=")[1].split()[0]
    assert off1.endswith(f"-> {tmp_path / 'runs' / f'ptb-quick-{chash}-dropout_off-seed1'} (new)")
    on1 = next(h for h in heads if h.startswith("# ptb/quick dropout=on seed=1 "))
    assert f"config_hash={chash} " in on1  # on and off of one setting share a hash: they pair
    assert "  dropout: 0.0" in out and "  dropout: 0.5" in out  # off zeroes the rates, on keeps them
    assert not (tmp_path / "runs").exists()


def test_seeds_dropouts_and_loggers_parse(tmp_path, capsys):
    from benchmark.cli import build_parser

    args = build_parser().parse_args(["run", "--task", "all", "--dropout", "on,off", "--seeds", "0,3",
                                      "--logger", "csv,wandb"])
    assert (args.dropout, args.seeds, args.logger) == (("on", "off"), (0, 3), ("csv", "wandb"))
    assert build_parser().parse_args(["run", "--task", "ptb", "--num-seeds", "3"]).num_seeds == 3
    # A bare number in --seeds is a count, as in the commands older rows recorded, and says so.
    assert build_parser().parse_args(["run", "--task", "ptb", "--seeds", "3"]).seeds == (0, 1, 2)
    assert "--seeds 3 runs seeds 0..2" in capsys.readouterr().err
    for bad in (["--dropout", "on,maybe"], ["--seeds", "0"], ["--logger", "tensorboard"], ["--num-seeds", "0"],
                ["--seed", "1", "--seeds", "2"], ["--seeds", "0,1", "--num-seeds", "2"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--task", "ptb", *bad])
    assert bench(tmp_path, "--task", "ptb", "--dropout", "on,off", "--run-dir", str(tmp_path / "x")) == 2
    assert "--run-dir names one run's folder, but this command plans 2 runs" in capsys.readouterr().err


def test_list_shows_presets_with_their_numbers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "LSTM 2x650" in out and "test_ppl 82.7" in out  # ptb medium: size and the paper's number
    assert "quick" in out.split("translation:")[1]


def test_sweep_resumes_where_it_stopped(tmp_path, data_root, capsys):
    """Both dropout settings with one seed; a rerun with --resume skips the finished runs and adds no
    rows; an interrupted run (checkpoint, no result) continues from its checkpoint."""
    args = ("--task", "ptb", "--preset", "small", "--dropout", "on,off", "--data-root", str(data_root), *TINY)
    assert bench(tmp_path, *args) == 0
    rows = read_rows(tmp_path / "results" / "runs.csv")
    assert [(r["dropout"], r["seed"]) for r in rows] == [("on", "0"), ("off", "0")]
    assert "bench run: 2 runs in" in capsys.readouterr().out

    # "interrupt" the off run after its last checkpoint was written: its result marker is gone
    off = find_run(tmp_path / "runs", "ptb-small-dropout_off-seed0")
    (off / "result.json").unlink()
    assert bench(tmp_path, *args, "--resume") == 0
    out = capsys.readouterr().out
    assert "ptb-small-dropout_on-seed0" in out and "skipped (finished earlier)" in out
    before, rows = rows, read_rows(tmp_path / "results" / "runs.csv")
    # Resumed at its last epoch, it tests again and its row replaces the one it wrote before (same run_id).
    assert [(r["dropout"], r["run_id"]) for r in rows] == [(r["dropout"], r["run_id"]) for r in before]
    assert rows[-1]["epochs"] == "2" and rows[-1]["test_ppl"] == before[-1]["test_ppl"]
    assert bench(tmp_path, *args) == 2  # without --resume the folders are not overwritten
    assert "already holds an earlier run: pass --resume" in capsys.readouterr().err


def test_a_resumed_sweep_puts_skipped_runs_rows_into_a_new_results_folder(tmp_path, data_root, capsys):
    """`make bench RESULTS_DIR=elsewhere` after a finished `make bench` skips every run: their rows,
    outputs and curves still go to the folder named, once."""
    args = ("--task", "ptb", "--preset", "small", "--dropout", "on,off", "--data-root", str(data_root), *TINY)
    assert bench(tmp_path, *args) == 0
    first = read_rows(tmp_path / "results" / "runs.csv")
    other = ["--results-dir", str(tmp_path / "other"), "--resume"]
    for _ in range(2):
        assert bench(tmp_path, *args, *other) == 0
        assert "skipped (finished earlier)" in capsys.readouterr().out
        rows = read_rows(tmp_path / "other" / "runs.csv")
        assert [(r["run_id"], r["test_ppl"]) for r in rows] == [(r["run_id"], r["test_ppl"]) for r in first]
        assert all((tmp_path / "other" / r["curves"]).is_file() for r in rows)
    assert read_rows(tmp_path / "results" / "runs.csv") == first
    # A row moved from its own folder to an archive stays moved when the sweep is resumed there.
    write_rows_atomic(tmp_path / "results" / "runs.csv", first[1:], list(first[0]))
    assert bench(tmp_path, *args, "--resume") == 0
    assert read_rows(tmp_path / "results" / "runs.csv") == first[1:]
    # A result.json from before it recorded its folder could be the archived row's: nothing is copied.
    for done in (tmp_path / "runs").glob("*/result.json"):
        done.write_text(json.dumps({k: v for k, v in json.loads(done.read_text()).items() if k != "results_dir"}))
    assert bench(tmp_path, *args, "--results-dir", str(tmp_path / "third"), "--resume") == 0
    assert not (tmp_path / "third" / "runs.csv").exists()


def test_damaged_last_line_is_left_out_and_said(tmp_path, caplog):
    path = tmp_path / "runs.csv"
    path.write_text("task,test_ppl,seed\nptb,100.0,0\nptb,101.0,1\nptb,10")
    assert read_rows(path) == [{"task": "ptb", "test_ppl": "100.0", "seed": "0"},
                               {"task": "ptb", "test_ppl": "101.0", "seed": "1"}]
    assert "last line is damaged" in caplog.text
    path.write_text("task,test_ppl,seed\nptb,100\nptb,101.0,1\n")
    with pytest.raises(Exception, match="data line 1 has 2 fields"):
        read_rows(path)


def test_a_damaged_last_line_is_kept_aside_when_a_row_is_appended(tmp_path, caplog):
    path = tmp_path / "runs.csv"
    path.write_text("task,test_ppl,seed\nptb,100.0,0\nptb,101.0,1,hand-edited\n")
    append_row(tmp_path, {"task": "ptb", "test_ppl": "102.0", "seed": "2"})
    assert [r["seed"] for r in read_rows(path)] == ["0", "2"]
    assert (tmp_path / "runs.csv.damaged").read_text() == "ptb,101.0,1,hand-edited\n"  # not lost
    assert "kept in" in caplog.text and "runs.csv.damaged" in caplog.text


def test_a_row_with_an_empty_run_id_replaces_no_other_row(tmp_path):
    append_row(tmp_path, {"task": "ptb", "seed": "0", "run_id": "", "ensemble": "2"})
    append_row(tmp_path, {"task": "ptb", "seed": "1", "run_id": "abc"})
    append_row(tmp_path, {"task": "ptb", "seed": "2", "run_id": ""}, replaces="run_id")
    assert [r["seed"] for r in read_rows(tmp_path / "runs.csv")] == ["0", "1", "2"]
    append_row(tmp_path, {"task": "ptb", "seed": "3", "run_id": "abc"}, replaces="run_id")
    assert [r["seed"] for r in read_rows(tmp_path / "runs.csv")] == ["0", "2", "3"]


def test_a_diverged_seed_is_left_out_of_means_and_pairs_and_counted(tmp_path):
    """A run whose perplexity overflowed (inf, nan) cannot enter a mean or an interval: the board
    pools the finite seeds and says how many it left out, instead of a traceback."""
    rows = [("on", 0, "84.0"), ("on", 1, "86.0"), ("on", 2, "inf"), ("on", 3, "85.0"),
            ("off", 0, "90.0"), ("off", 1, "93.0"), ("off", 2, "91.0"), ("off", 3, "nan")]
    for dropout, seed, ppl in rows:
        append_row(tmp_path, {"task": "ptb", "preset": "medium", "config_hash": "h1", "dropout": dropout,
                              "seed": seed, "test_ppl": ppl, "finished_utc": f"2026-12-0{seed + 1}"})
    # A `bench eval` row of a checkpoint trained elsewhere has no seed; it is off the board and blocks nothing.
    append_row(tmp_path, {"task": "ptb", "preset": "medium", "seed": "", "evaluation": "test", "test_ppl": "88.0"})
    board = {r["dropout"]: r for r in read_rows(build(tmp_path, plots=False))}
    assert (board["on"]["mean"], board["on"]["seeds"], board["on"]["nonfinite"]) == ("85.00", "3", "1")
    assert (board["off"]["mean"], board["off"]["seeds"], board["off"]["nonfinite"]) == ("91.33", "3", "1")
    effect = next(r for r in read_rows(tmp_path / "effects.csv") if r["metric"] == "test_ppl")
    assert (effect["pairs"], effect["nonfinite_pairs"], effect["diff"]) == ("2", "2", "-6.50")  # seeds 0, 1
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "3 (+1 diverged: not finite)" in md and "2 more pair(s) left out" in md
    # The two pairs that remain cannot speak for the two left out: no claim, and no p-value for Holm.
    assert effect["verdict"].startswith("no claim: 2 paired seed(s) left out because a run diverged")
    assert effect["p_value"] == ""
    # Every pair with a diverged side: a row that says so, not silence.
    for seed in (0, 1):
        append_row(tmp_path, {"task": "ptb", "preset": "medium", "config_hash": "h1", "dropout": "on", "seed": seed,
                              "test_ppl": "nan", "finished_utc": "2026-12-09"})
    build(tmp_path, plots=False)
    effect = next(r for r in read_rows(tmp_path / "effects.csv") if r["metric"] == "test_ppl")
    assert (effect["pairs"], effect["nonfinite_pairs"], effect["diff"]) == ("0", "4", "")
    assert effect["verdict"] == "no finite pair: every paired seed has a run that diverged" and effect["env"] == ""
    assert "the pairs mix" not in (tmp_path / "LEADERBOARD.md").read_text()


def test_rows_from_before_settings_hashes_pair_with_no_claim(tmp_path):
    for dropout, ppls in (("on", ("80.0", "81.0", "82.0")), ("off", ("90.0", "91.0", "92.0"))):
        for seed, ppl in enumerate(ppls):
            append_row(tmp_path, {"task": "ptb", "preset": "medium", "dropout": dropout, "seed": seed,
                                  "test_ppl": ppl})
    effect = next(r for r in read_rows(build(tmp_path, plots=False).parent / "effects.csv")
                  if r["metric"] == "test_ppl")
    assert effect["pairs"] == "3" and effect["verdict"].startswith("no claim: rows from before settings hashes")
    assert effect["p_value"] == ""  # no claim, so nothing for a Holm family to count either


def test_a_newer_setting_run_one_way_says_where_the_effect_went(tmp_path):
    """The newest row sets a preset's current hash; run only with dropout after a preset edit, it
    leaves no effect on the board, and the board says the older hash has one."""
    for dropout, ppls in (("on", ("80.0", "81.5", "82.0")), ("off", ("90.0", "91.0", "92.5"))):
        for seed, ppl in enumerate(ppls):
            append_row(tmp_path, {"task": "ptb", "preset": "medium", "config_hash": "h1", "dropout": dropout,
                                  "seed": seed, "test_ppl": ppl, "finished_utc": f"2026-12-0{seed + 1}"})
    build(tmp_path, plots=False)
    assert "h1" not in "".join(hidden_lines(tmp_path))  # run both ways: its effect is on the board
    append_row(tmp_path, {"task": "ptb", "preset": "medium", "config_hash": "h2", "dropout": "on", "seed": 0,
                          "test_ppl": "79.0", "finished_utc": "2026-12-09"})
    build(tmp_path, plots=False)
    assert not [r for r in read_rows(tmp_path / "effects.csv") if r["config_hash"] == "h1"]
    assert hidden_lines(tmp_path) == ["medium: its newest setting `h2` has runs of one arm only, so no effect is "
                                      "shown for it; the superseded `h1` ran on and off (their rows stay in "
                                      "runs.csv): run the other arm to compare again"]


def hidden_lines(results: Path) -> list[str]:
    return [line for line in (results / "LEADERBOARD.md").read_text().splitlines() if "one arm only" in line]


def test_a_zero_width_interval_is_not_printed(tmp_path):
    for seed in range(3):  # every seed 2.0 apart: no spread, so no interval and no claim
        for dropout, ppl in (("on", 80.0 + seed), ("off", 82.0 + seed)):
            append_row(tmp_path, {"task": "ptb", "preset": "medium", "config_hash": "h1", "dropout": dropout,
                                  "seed": seed, "test_ppl": f"{ppl:.1f}", "finished_utc": f"2026-12-0{seed + 1}"})
    build(tmp_path, plots=False)
    line = next(x for x in (tmp_path / "LEADERBOARD.md").read_text().splitlines() if "`test_ppl`" in x)
    assert "95% CI" not in line and "no spread between the paired seeds" in line


def test_an_ensemble_row_pools_by_its_members_world_size():
    from benchmark.ensemble import _row

    members = [{"task": "ptb", "preset": "medium", "dropout": "on", "seed": s, "config_hash": "h1", "devices": "2"}
               for s in (0, 1)]
    row = _row("ptb", "medium", members, {"test_ppl": ([80.0, 81.0], 78.0)}, [Path("a"), Path("b")], 1.0, "bench")
    assert row["devices"] == "2"  # with config_hash h1: the pool h1@2 its members are in
    assert _row("ptb", "medium", [members[0], {**members[1], "devices": "1"}], {"test_ppl": ([80.0, 81.0], 78.0)},
                [Path("a"), Path("b")], 1.0, "bench")["devices"] == "mixed"


def write_metrics_csv(run_dir: Path, train: list[float], valid: list[float]) -> None:
    """Lightning's CSVLogger layout: step rows with train_loss, epoch rows with train/valid ppl."""
    (run_dir / "csv").mkdir(parents=True)
    with open(run_dir / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train_loss", "train_ppl", "valid_ppl"])
        for e, (t, v) in enumerate(zip(train, valid)):
            w.writerow([e, 10 * e + 5, 5.0, "", ""])
            w.writerow([e, 10 * e + 9, "", "", v])
            w.writerow([e, 10 * e + 9, "", t, ""])


# ptb/medium-variational's `--dropout on` trains Gal & Ghahramani's variational LSTM: its curve is the
# `on` one, and a `--regularizer zaremba` run of that preset is not drawn in its place.
@pytest.mark.parametrize("preset,on_row,blue", [
    ("quick", {}, True),
    ("medium-variational", {"regularizer": "variational", "dropout_rate": "dropout=0.0;embedding=0.2;hidden=0.2;locked=0.5"}, True),
    ("medium-variational", {"regularizer": "zaremba", "dropout_rate": "dropout=0.5"}, False)])
def test_learning_curves_plot_on_and_off_from_the_run_logs(tmp_path, preset, on_row, blue):
    import matplotlib.image

    for dropout, train, valid in (("off", [300, 120, 60, 30], [250, 180, 170, 200]),
                                  ("on", [400, 200, 140, 120], [280, 190, 160, 150])):
        run_dir = tmp_path / "runs" / f"ptb-{preset}-dropout_{dropout}-seed0"
        write_metrics_csv(run_dir, train, valid)
        append_row(tmp_path / "results", {"task": "ptb", "preset": preset, "dropout": dropout, "seed": "0",
                                          "overrides": "", "test_ppl": str(valid[-1]), "run_dir": str(run_dir),
                                          "finished_utc": "2026-11-26T10:00:00Z", **(on_row if dropout == "on" else {})})
    build(tmp_path / "results")
    png = tmp_path / "results" / f"curves-ptb-{preset}.png"
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.std() > 0.05  # a drawn figure, not a blank canvas
    # red (off) and blue (on) lines are both on it
    rgb = image[..., :3]
    assert ((rgb[..., 0] > 0.7) & (rgb[..., 2] < 0.3)).sum() > 200
    assert (((rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3)).sum() > 200) == blue


def test_curves_travel_with_the_results_rows(tmp_path, data_root):
    """A run copies its per-epoch train/valid metrics to <results>/curves/<run>.csv; with the run
    folder gone (a fresh clone of the results), the leaderboard still draws the curves."""
    import shutil

    for dropout in ("on", "off"):
        assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--dropout", dropout, "--data-root",
                     str(data_root), *TINY) == 0
    rows = read_rows(tmp_path / "results" / "runs.csv")
    curves = [tmp_path / "results" / r["curves"] for r in rows]
    with open(curves[0], newline="") as f:
        epochs = list(csv.DictReader(f))
    assert [e["epoch"] for e in epochs] == ["0", "1"] and all(e["train_ppl"] and e["valid_ppl"] for e in epochs)
    assert "train_loss" not in epochs[0]  # per-step numbers stay in the run folder
    shutil.rmtree(tmp_path / "runs")
    # As if made by the preset as named (the board draws only those; these are tiny --set runs).
    write_rows_atomic(tmp_path / "results" / "runs.csv", [{**r, "overrides": ""} for r in rows])
    png = tmp_path / "results" / "curves-ptb-quick.png"
    png.unlink(missing_ok=True)
    build(tmp_path / "results")
    assert png.is_file()


def test_mixture_nll_averages_distributions():
    p1 = torch.tensor([[0.7, 0.2, 0.1]]).log()
    p2 = torch.tensor([[0.1, 0.6, 0.3]]).log()
    y = torch.tensor([1])
    members, mix = mixture_nll([p1, p2], y)
    torch.testing.assert_close(members, torch.tensor([-math.log(0.2), -math.log(0.6)]))
    torch.testing.assert_close(mix, torch.tensor(-math.log(0.4)))
    _, same = mixture_nll([p1, p1], y)  # an ensemble of one model twice is that model
    torch.testing.assert_close(same, torch.tensor(-math.log(0.2)))


def test_ensemble_of_two_runs_scores_members_as_their_own_test_did(tmp_path, data_root, capsys):
    for seed in (0, 1):
        assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--dropout", "on", "--seed", str(seed),
                     "--data-root", str(data_root), *TINY) == 0
    runs = [find_run(tmp_path / "runs", f"ptb-small-dropout_on-seed{s}") for s in (0, 1)]
    # Given in the other order: the same ensemble, its members in seed order.
    assert main(["ensemble", "--task", "ptb", "--runs", *map(str, runs[::-1]), "--data-root", str(data_root),
                 "--results-dir", str(tmp_path / "results")]) == 0
    assert "test_ppl: ensemble of 2" in capsys.readouterr().out
    single, ens = read_rows(tmp_path / "results" / "runs.csv")[:2], read_rows(tmp_path / "results" / "runs.csv")[2]
    members = [float(x) for x in ens["members_test_ppl"].split()]
    for m, row in zip(members, single):  # the same protocol as each run's own test: one column, state carried
        assert m == pytest.approx(float(row["test_ppl"]), rel=1e-4)
    # Averaging distributions never does worse than the members' geometric mean (Jensen).
    assert float(ens["test_ppl"]) <= math.sqrt(members[0] * members[1]) + 1e-6
    assert (ens["ensemble"], ens["seed"], ens["dropout"], ens["checkpoint"]) == ("2", "0+1", "on", "last")
    assert ens["members_git_commit"] == f"{single[0]['git_commit']} {single[1]['git_commit']}"
    with pytest.raises(Exception, match="neither a checkpoint file nor a run folder"):
        run_ensemble("ptb", [tmp_path, runs[0]], data_root, tmp_path / "results")


def test_an_ensemble_refuses_one_model_counted_twice_and_members_of_other_arms(tmp_path, data_root, capsys):
    import shutil

    for dropout, seed in (("on", 0), ("off", 1)):
        assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--dropout", dropout, "--seed", str(seed),
                     "--data-root", str(data_root), *TINY) == 0
    on0, off1 = find_run(tmp_path / "runs", "ptb-small-dropout_on-seed0"), find_run(tmp_path / "runs",
                                                                                   "ptb-small-dropout_off-seed1")
    again = tmp_path / "seed0-again"  # the same training in another folder: another run_id, the same model
    assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--dropout", "on", "--seed", "0", "--data-root",
                 str(data_root), "--run-dir", str(again), *TINY) == 0
    shutil.copytree(on0, tmp_path / "copy")
    shutil.copytree(on0, tmp_path / "two-ranks")  # as if trained on 2 devices: rows pool by the world size
    record = json.loads((tmp_path / "two-ranks" / "result.json").read_text())
    record["row"]["devices"] = "2"
    (tmp_path / "two-ranks" / "result.json").write_text(json.dumps(record))
    capsys.readouterr()
    for runs, why in (([on0, on0], "the same checkpoint as"),
                      ([on0, tmp_path / "two-ranks"], "different settings or arms"),
                      ([on0, on0 / "checkpoints" / "last.ckpt"], "the same checkpoint as"),
                      ([on0, tmp_path / "copy"], "the same run (run_id "),
                      ([on0, again], "seed 0 of the same settings"),
                      ([on0, off1], "different settings or arms")):  # one hash: on and off pair, never mix
        assert main(["ensemble", "--task", "ptb", "--runs", *map(str, runs), "--data-root", str(data_root),
                     "--results-dir", str(tmp_path / "results")]) == 2
        assert why in capsys.readouterr().err, runs
    # --checkpoint best picks within a run folder; a last.ckpt given by path is not a best one.
    assert main(["eval", str(on0 / "checkpoints" / "last.ckpt"), "--checkpoint", "best", "--data-root",
                 str(data_root), "--results-dir", str(tmp_path / "results")]) == 2
    assert "not a best-*.ckpt" in capsys.readouterr().err
    # PTB's valid layout is the run's own (its batch's columns): another batch would be another metric.
    assert main(["eval", str(on0), "--batch-size", "8", "--data-root", str(data_root), "--results-dir",
                 str(tmp_path / "results")]) == 2
    assert "takes no other batch" in capsys.readouterr().err
    assert [r.get("ensemble", "") for r in read_rows(tmp_path / "results" / "runs.csv")] == [""] * 3  # none added


def test_wandb_offline_run_holds_config_steps_summary_and_the_leaderboard(tmp_path, data_root, monkeypatch, caplog):
    """--logger csv,wandb with no account: one offline run per training run (no run attaches to the
    one before it), then the leaderboard as a table artifact."""
    from benchmark import wandb_log

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setattr(wandb_log, "_told_offline", False)
    assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--dropout", "off,on", "--data-root",
                 str(data_root), "--logger", "csv,wandb", "--set", "trainer.log_every_n_steps=1", *TINY) == 0
    assert caplog.text.count("logging offline") == 1  # said once for the whole sweep
    files = {}
    for dropout in ("off", "on"):
        run_dir = find_run(tmp_path / "runs", f"ptb-small-dropout_{dropout}-seed0")
        assert (run_dir / "csv" / "metrics.csv").is_file()
        found = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(found) == 1
        files[dropout] = found[0]
    keys = wandb_log.offline_run_keys(files["off"], wait_s=60)
    assert {"task", "preset", "dropout", "seed", "model", "data", "trainer", "paper", "git_commit"} <= keys["config"]
    assert {"train_loss", "lr-SGD", "grad_norm", "tok/s", "train_ppl", "valid_ppl", "test_ppl"} <= keys["history"]
    assert {"test_ppl", "valid_ppl", "paper/test_ppl"} <= keys["summary"]  # small without dropout: Table 1
    on_summary = wandb_log.offline_run_keys(files["on"], wait_s=60)["summary"]
    assert "test_ppl" in on_summary and "paper/test_ppl" not in on_summary

    assert main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--logger", "wandb",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    board = list((tmp_path / "runs" / "leaderboard").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(board) == 1
    keys = wandb_log.offline_run_keys(board[0], wait_s=60)
    assert "leaderboard" in keys["artifacts"] and any(k.startswith("leaderboard") for k in keys["history"])
    assert json.loads((find_run(tmp_path / "runs", "ptb-small-dropout_on-seed0") / "result.json").read_text())["row"]


def test_paper_numbers_for_both_dropout_settings():
    from benchmark.config import load_preset
    from benchmark.runner import paper_numbers

    tr = load_preset("translation", "paper")
    assert paper_numbers(tr, "on") == {"test_ppl": 5.0, "test_bleu_tok": 29.03}  # the paper scored tokenized text
    assert paper_numbers(tr, "off") == {"test_ppl": 5.8, "test_bleu_tok": 25.9}  # YAML's bare `off:` is not False
    small = load_preset("ptb", "small")  # one setting: the numbers belong to the preset's default_dropout
    assert paper_numbers(small, "off")["test_ppl"] == 114.5 and paper_numbers(small, "on") == {}


def test_paper_numbers_belong_to_the_presets_own_regularizer():
    """Gal & Ghahramani's 79.7 is their variational LSTM's: a `--regularizer zaremba` run of the same
    preset is not compared with it, in the run's summary or on the leaderboard."""
    from benchmark.config import load_preset, paper_numbers
    from benchmark.leaderboard import board_rows

    medium = load_preset("ptb", "medium-variational")
    assert paper_numbers(medium, "on") == paper_numbers(medium, "on", "variational") == {"test_ppl": 79.7}
    assert paper_numbers(medium, "on", "zaremba") == {}
    row = {"task": "ptb", "preset": "medium-variational", "config_hash": "h", "dropout": "on", "seed": "0",
           "test_ppl": "81.0", "ensemble": "", "overrides": ""}
    board = {r["regularizer"]: r for r in board_rows([{**row, "regularizer": "variational"},
                                                        {**row, "regularizer": "zaremba", "seed": "1"}])}
    assert board["variational"]["paper"] == 79.7 and board["variational"]["diff"] == "1.30"
    assert board["zaremba"]["paper"] == "" and board["zaremba"]["diff"] == ""


def test_wandb_mode_disabled_turns_wandb_off(tmp_path, data_root, monkeypatch):
    """W&B's own switch: WANDB_MODE=disabled means no W&B at all (not an offline run), whatever
    --logger asks for; the CSV log and the results row are as always."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--dropout", "on", "--data-root", str(data_root),
                 "--logger", "csv,wandb", *TINY) == 0
    run_dir = find_run(tmp_path / "runs", "ptb-small-dropout_on-seed0")
    assert not (run_dir / "wandb").exists() and (run_dir / "csv" / "metrics.csv").is_file()
    assert main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--logger", "wandb",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    assert not (tmp_path / "runs" / "leaderboard").exists()


def test_the_older_wandb_flag_still_parses_so_recorded_commands_rerun(tmp_path, capsys):
    assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--wandb", "off", "--dry-run") == 0
    assert "# ptb/small dropout=off seed=0" in capsys.readouterr().out


def test_ctrl_c_stops_the_whole_sweep(tmp_path, monkeypatch, capsys):
    from benchmark import sweep
    from tasks.nn.errors import RunInterrupted

    calls = []

    def interrupted(preset, opts):
        calls.append(opts.dropout)
        raise RunInterrupted("run interrupted; rerun with --resume")

    monkeypatch.setattr(sweep, "run", interrupted)
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--dropout", "on,off") == 2
    assert calls == ["on"]  # the off run never started
    assert "sweep stopped at ptb-quick-dropout_on-seed0 (0 of 2 runs done)" in capsys.readouterr().err


@pytest.mark.slow
def test_jobs_run_side_by_side_with_the_numbers_of_the_same_runs_alone(tmp_path, data_root, capsys):
    """`--jobs 2`: each run in its own process with the threads shared out, its output in a log
    file; its row holds the numbers the same run gives alone at that thread count."""
    args = ("--task", "ptb", "--preset", "small", "--dropout", "on,off", "--data-root", str(data_root), *TINY)
    threads = torch.get_num_threads()
    each = max(1, threads // 2)
    try:
        assert main(["run", "--results-dir", str(tmp_path / "alone"), "--runs-dir", str(tmp_path / "alone-runs"),
                     "--threads", str(each), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    assert bench(tmp_path, *args, "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert f"2 runs, 2 at a time, {each} thread" in out and "started ptb-small-dropout_off-seed0" in out
    assert "bench run: 2 runs in" in out and out.count("done in") == 2
    key = ("dropout", "seed", "test_ppl", "valid_ppl", "train_ppl", "config_hash")
    alone = sorted(tuple(r[k] for k in key) for r in read_rows(tmp_path / "alone" / "runs.csv"))
    side_by_side = read_rows(tmp_path / "results" / "runs.csv")
    assert sorted(tuple(r[k] for k in key) for r in side_by_side) == alone
    assert all(f"({each} threads)" in r["device"] for r in side_by_side)  # the row says how it ran
    logs = sorted(p.name for p in (tmp_path / "runs" / "logs").iterdir())
    assert logs == ["ptb-small-dropout_off-seed0.log", "ptb-small-dropout_on-seed0.log"]
    assert "test_ppl=" in (tmp_path / "runs" / "logs" / logs[0]).read_text()
    # Again with --resume: both finished, both skipped, nothing trains.
    assert bench(tmp_path, *args, "--jobs", "2", "--resume") == 0
    assert capsys.readouterr().out.count("skipped (finished earlier)") == 2
    # One run failing (its folder holds a finished run, and no --resume) fails alone; the other trains.
    one_more = ["off" if a == "on,off" else a for a in args]
    assert bench(tmp_path, *one_more, "--seeds", "0,1", "--jobs", "2") == 2
    out, err = capsys.readouterr()
    assert "bench: error: ptb-small-dropout_off-seed0: " in err and "already holds an earlier run" in err
    assert "1 of 2 runs failed (ptb-small-dropout_off-seed0)" in err and "ptb-small-dropout_off-seed1" in out
    assert [r["seed"] for r in read_rows(tmp_path / "results" / "runs.csv")].count("1") == 1


def test_jobs_refuses_runs_that_span_processes_already(tmp_path, capsys):
    assert bench(tmp_path, "--task", "ptb", "--jobs", "2", "--devices", "2", "--dry-run") == 2
    assert "leave --jobs at 1" in capsys.readouterr().err


def test_jobs_counts_the_gpus_devices_auto_would_take(tmp_path, capsys, monkeypatch):
    """A preset that leaves devices to Lightning ("auto") runs DDP over every GPU of the machine."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert bench(tmp_path, "--task", "ptb", "--jobs", "2", "--dry-run") == 2
    assert "leave --jobs at 1" in capsys.readouterr().err
    assert bench(tmp_path, "--task", "ptb", "--jobs", "2", "--accelerator", "cpu", "--dry-run") == 0


def test_the_offline_notice_is_said_once_per_process(monkeypatch, caplog):
    """A parallel sweep's parent says it for its runs (their own output goes to log files)."""
    from benchmark import wandb_log

    monkeypatch.setattr(wandb_log, "_told_offline", False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_log.say_offline("auto", "runs/bench-quick")
    wandb_log.say_offline("auto")
    assert caplog.text.count("logging offline") == 1
    assert "`wandb sync runs/bench-quick/*/wandb/offline-run-*`" in caplog.text  # where the sweep put them
    monkeypatch.setattr(wandb_log, "_told_offline", False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb_log.say_offline("auto")
    assert caplog.text.count("logging offline") == 1  # disabled: nothing to upload, nothing said


@pytest.mark.slow
def test_jobs_stop_when_only_the_parent_gets_sigint(tmp_path, data_root):
    """`kill -INT` (or a scheduler) signals the sweep's own process, not its runs: the sweep passes
    it on, each run stops at its checkpoint, the sweep exits 2 with the --resume hint, and no row
    is written. Without that the parent waited for runs that trained on to their end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "benchmark.cli", "run", "--task", "ptb", "--preset", "small", "--dropout", "on,off",
            "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--logger", "csv", "--jobs", "2", *TINY, "--set", "trainer.max_epochs=100000"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=Path(__file__).resolve().parent.parent,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # pytest may ignore it
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "runs").glob("*/checkpoints/last.ckpt"))) < 2:  # both runs are training
            assert proc.poll() is None, f"the sweep ended early ({proc.returncode})"
            assert time.monotonic() < deadline, "the runs wrote no checkpoint within 120 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)  # the parent alone, as `kill -INT` does
        out, err = proc.communicate(timeout=90)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # runs that outlived the sweep too: never left training
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    assert proc.returncode == 2, err
    assert "sweep stopped at ptb-small-dropout_" in err and "--resume" in err
    assert not (tmp_path / "results" / "runs.csv").exists()
    assert not list((tmp_path / "runs").glob("*/result.json"))


def test_commands_that_would_do_other_than_asked_are_refused(tmp_path, capsys):
    from benchmark.cli import build_parser

    for bad in (["--seed", "-1"], ["--seed", str(2**32)], ["--seeds", "0,-3"], ["--devices", "gpu0"],
                ["--devices", "-2"], ["--devices", "0,x"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--task", "ptb", *bad])
    assert build_parser().parse_args(["run", "--task", "ptb", "--devices", "0,1"]).devices == [0, 1]
    # -1 (every device) may be several processes: not beside --jobs either.
    assert bench(tmp_path, "--task", "ptb", "--jobs", "2", "--devices", "-1", "--dry-run") == 2
    assert "leave --jobs at 1" in capsys.readouterr().err
    # ptb/small trains without dropout unless asked: a regularizer named alone would run nowhere.
    assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--regularizer", "zaremba", "--dry-run") == 2
    assert "add --dropout on" in capsys.readouterr().err
    # A test set that no task of the list takes is not dropped without a word.
    src = tmp_path / "t.en"
    src.write_text("a\n")
    assert bench(tmp_path, "--task", "ptb,speech", "--test-src", str(src), "--test-ref", str(src), "--dry-run") == 2
    assert "--test-src/--test-ref apply to translation, which --task ptb,speech does not name" in capsys.readouterr().err
    # A dropout rate that is not one fails with the preset, naming where it came from.
    assert bench(tmp_path, "--task", "ptb", "--set", "model.dropout=0,5", "--dry-run") == 2
    assert "--set model.dropout: a dropout rate is a number in [0, 1), got '0,5'" in capsys.readouterr().err
    from benchmark.config import load_preset
    from tasks.nn.errors import ConfigError

    for text, why in (("default_dropout: maybe\nmodel: {dropout: 0.5}\n", "default_dropout must be on or off"),
                      ("model: {dropout: 1.0}\n", "model.dropout: a dropout rate is a number in [0, 1), got 1.0"),
                      ("model: {dropout: 0.5, emb_dropout: yes}\n", "model.emb_dropout: a dropout rate")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"bad.yaml: {why}")):
            load_preset("ptb", str(tmp_path / "bad.yaml"))


def test_a_second_process_is_kept_out_of_a_run_folder(tmp_path, data_root, capsys):
    """`make bench` typed again while the first still trains (or a run left going by a killed sweep)
    would delete the first's checkpoint writes; it stops at once instead, naming the holder."""
    import os

    from benchmark.runner import only_process
    from tasks.nn.errors import ConfigError

    with only_process(tmp_path / "r"):
        with pytest.raises(ConfigError, match=rf"another process \(pid {os.getpid()}\) is running this run now"):
            with only_process(tmp_path / "r"):
                pass
        assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--data-root", str(data_root), "--logger", "csv",
                     "--run-dir", str(tmp_path / "r"), *TINY) == 2
        assert "is running this run now" in capsys.readouterr().err
        assert not list((tmp_path / "r").glob("checkpoints/*"))
    with only_process(tmp_path / "r"):  # free again once its holder is done
        pass


def test_only_rank_zero_takes_the_run_folder_whatever_launched_it(monkeypatch):
    """srun starts every task of a job itself: before the Trainer exists only SLURM_PROCID tells
    them apart, and all but one would find the run folder locked."""
    from benchmark.runner import _is_rank_zero

    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert _is_rank_zero()
    for env, zero in (({"SLURM_PROCID": "3"}, False), ({"SLURM_PROCID": "0"}, True), ({"RANK": "1", "SLURM_PROCID": "0"}, False),
                      ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False), ({"LOCAL_RANK": "1"}, False)):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert _is_rank_zero() == zero, env


def test_a_run_ends_when_the_sweep_that_started_it_is_killed(tmp_path):
    """kill -9 of a `--jobs` sweep passes nothing on: its runs must not train on, unseen."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")

    child = ("import sys, time; from benchmark.sweep import _end_with; _end_with(int(sys.argv[1])); "
             "print('ready', flush=True); time.sleep(120)")
    parent = (f"import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())]); "
              "print(p.pid, flush=True); p.wait()")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), "the run outlived its sweep"
