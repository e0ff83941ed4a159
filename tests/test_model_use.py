"""Using a trained model: `bench eval` on test sets given by path, the inference commands, and
ensembles, for every task, from the checkpoint alone (the training data moved out of reach).

Each task trains one tiny model once (module fixtures); the checks compare what the model use
commands print with what the run's own test wrote."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from benchmark.cli import main
from benchmark.config import load_preset
from benchmark.ensemble import run_ensemble
from benchmark.leaderboard import groups
from benchmark.results import read_rows
from benchmark.runner import RunOptions, run
from tests.conftest import find_run, tiny_preset, write_ptb
from tests.test_captioning import tiny_caption_preset, write_coco
from tests.test_speech import an4_tree
from tests.test_translation import EN, FR, tiny_translation_preset, write_tab


def _train(data_root: Path, preset, task: str) -> tuple[dict, Path]:
    """Train at `data_root`; the run folder goes beside it, out of the way of `_gone`."""
    out = data_root.parent
    opts = RunOptions(dropout="on", data_root=data_root, results_dir=out / "results", runs_dir=out / "runs",
                      command="test")
    row = run(preset, opts)
    return row, find_run(out / "runs", f"{task}-{preset.name}-dropout_on-seed0")


def _gone(root: Path) -> Path:
    """The training data moved away: what follows must need only the checkpoint."""
    shutil.move(root / "data", root / "moved")
    return root / "moved"


def _outputs(folder: Path, stream: str) -> list[dict]:
    return [json.loads(line) for line in (folder / "outputs" / f"{stream}.jsonl").read_text().splitlines()]


def _eval(run_dir: Path, root: Path, *args: str) -> dict:
    assert main(["eval", str(run_dir), "--data-root", str(root / "nowhere"), "--results-dir", str(root / "evals"),
                 *args]) == 0
    return read_rows(root / "evals" / "runs.csv")[-1]


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    root = tmp_path_factory.mktemp("translation")
    data = root / "data"
    write_tab(data / "tab.txt")
    (data / "news.en").write_text("\n".join(EN) + "\n")
    (data / "news.fr").write_text("\n".join(FR) + "\n")
    row, run_dir = _train(data, tiny_translation_preset(data), "translation")
    return root, row, run_dir, _gone(root)


def test_translation_eval_by_path_matches_the_runs_own_test(translation):
    root, row, run_dir, data = translation
    ev = _eval(run_dir, root, "--test", str(data / "news.en"), str(data / "news.fr"))
    for key in ("test_news_bleu", "test_news_bleu_tok", "test_news_chrf", "test_news_ppl", "test_news_bleu_greedy"):
        assert ev[key] == row[key], key
    assert ev["evaluation"] == "last checkpoint" and (ev["preset"], ev["dropout"], ev["seed"]) == ("tatoeba-quick", "on", "0")
    assert f"{data / 'news.en'} sha256:" in ev["eval_data"] and ev["config_hash"] == row["config_hash"]
    assert (ev["regularizer"], ev["trained_run_id"]) == (row["regularizer"], row["run_id"]) and row["run_id"]
    # The training row's outputs are named by its run_id too: another run of this name keeps its own.
    assert row["outputs"] == f"outputs/{run_dir.name}-{row['run_id']}.jsonl.gz"
    assert ev["steps"] == str(row["steps"])  # the checkpoint's, as its training row has them
    # Evaluated again: a row of its own with outputs of its own; the first row's file stays as it was.
    first = root / "evals" / ev["outputs"]
    kept = first.read_bytes()
    again = _eval(run_dir, root, "--test", str(data / "news.en"), str(data / "news.fr"))
    assert again["outputs"] != ev["outputs"] and (root / "evals" / again["outputs"]).is_file()
    assert first.read_bytes() == kept
    # The evaluation's outputs are the run's, hypothesis for hypothesis.
    assert _outputs(next((run_dir / "eval").glob("last-news-*")), "test_news") == _outputs(run_dir, "test_news")
    # A folder of the user's that holds outputs (here the run's own) is refused, not cleared.
    before = sorted(p.read_bytes() for p in (run_dir / "outputs").glob("*.jsonl"))
    assert main(["eval", str(run_dir), "--data-root", str(root / "nowhere"), "--results-dir", str(root / "evals"),
                 "--test", str(data / "news.en"), str(data / "news.fr"), "--out", str(run_dir)]) == 2
    assert sorted(p.read_bytes() for p in (run_dir / "outputs").glob("*.jsonl")) == before and before


def test_bench_translate_prints_what_the_run_wrote_and_reports_empty_lines(translation, tmp_path, capsys):
    root, row, run_dir, data = translation
    hyp_of = {tuple(x["refs"]): x["hyp"] for x in _outputs(run_dir, "test_news")}
    src = tmp_path / "in.txt"
    src.write_text("\n".join([EN[0], "", *EN[1:]]) + "\n")
    capsys.readouterr()
    assert main(["translate", "--model", str(run_dir), str(src)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[1] == "" and "line 2: empty" in err  # kept aligned with the input
    assert [lines[0], *lines[2:]] == [hyp_of[(fr,)] for fr in FR]
    assert main(["translate", "--model", str(run_dir), "--beam", "1", str(src)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(EN) + 1


def test_an_ensemble_of_one_translation_model_twice_is_that_model(translation):
    root, row, run_dir, data = translation
    shutil.copytree(data, root / "data")  # the preset's own test split needs the corpus back
    try:
        ens = run_ensemble("translation", [run_dir, run_dir], root / "data", root / "ens", repeats_ok=True)
    finally:
        shutil.rmtree(root / "data")
    assert ens["members_test_bleu"] == f"{float(row['test_bleu']):.4f} {float(row['test_bleu']):.4f}"
    assert ens["test_bleu"] == f"{float(row['test_bleu']):.4f}"  # the mean of one distribution is itself


@pytest.fixture(scope="module")
def captioning(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioning")
    write_coco(root / "c", n=20)
    write_coco(root / "o", n=4, split_field=False)
    row, run_dir = _train(root / "c", tiny_caption_preset(root), "captioning")
    return root, row, run_dir


def test_captioning_eval_caption_and_ensemble(captioning, tmp_path, capsys):
    root, row, run_dir = captioning
    ev = _eval(run_dir, root, "--test", str(root / "o" / "captions.json"), str(root / "o" / "images"))
    assert ev["test_captions_bleu4"] == row["test_other_bleu4"] and ev["test_captions_ppl"] == row["test_other_ppl"]
    images = sorted((root / "o" / "images").iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    capsys.readouterr()
    assert main(["caption", "--model", str(run_dir), str(broken), *map(str, images)]) == 1  # one skipped
    out, err = capsys.readouterr()
    assert "broken.jpg: not a decodable image" in err
    captions = [line.split("\t")[1] for line in out.splitlines()]
    assert captions[0] == "" and Counter(captions[1:]) == Counter(x["hyp"] for x in _outputs(run_dir, "test_other"))
    assert main(["caption", "--model", str(run_dir), *map(str, images[:1])]) == 0
    assert capsys.readouterr().out.split("\t")[1].strip() == captions[1]
    ens = run_ensemble("captioning", [run_dir, run_dir], root, root / "ens", repeats_ok=True)
    assert ens["test_bleu4"] == f"{float(row['test_bleu4']):.4f}" == ens["members_test_bleu4"].split()[0]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    an4_tree(root / "data", vary=True)
    preset = load_preset("speech", "quick")
    preset.model.update(hidden_size=16, num_layers=1)
    preset.data.update(valid_speakers=["mdef"], batch_size=2, cache_dir=str(root / "cache"), bad_records=None)
    preset.trainer.update(max_epochs=2, enable_progress_bar=False, enable_model_summary=False)
    row, run_dir = _train(root / "data", preset, "speech")
    return root, row, run_dir


def test_speech_eval_by_folder_phones_and_ensemble(speech, capsys):
    root, row, run_dir = speech
    test_folder = root / "data" / "an4" / "wav" / "an4test_clstk"
    ev = _eval(run_dir, root, "--test", str(test_folder))
    for metric in ("frame_acc", "per", "per_smoothed"):
        assert ev[f"test_an4test_clstk_{metric}"] == row[f"test_{metric}"], metric
    frames = _outputs(run_dir, "test")
    assert frames == [{**x, "stream": "test"} for x in _outputs(next((run_dir / "eval").glob("last-an4test_clstk-*")),
                                                                "test_an4test_clstk")]
    first = sorted(test_folder.rglob("*.flac"))[0]
    capsys.readouterr()
    assert main(["phones", "--model", str(run_dir), "--frames", str(first), str(root / "missing.wav")]) == 1
    out, err = capsys.readouterr()
    path, seq, labels = out.splitlines()[0].split("\t")
    # The frames the test scored (those with a reference label) are the frames `bench phones` prints.
    assert labels.split()[: len(frames[0]["hyp_frames"].split())] == frames[0]["hyp_frames"].split()
    assert set(seq.split()) <= set(labels.split()) and "missing.wav: unreadable" in err
    # Audio the model cannot read: another sample rate, shorter than one frame; named, and skipped.
    other_rate, short = root / "8k.wav", root / "short.wav"
    sf.write(other_rate, np.zeros(8000, dtype=np.float32), 8000)
    sf.write(short, np.zeros(100, dtype=np.float32), 16000)
    assert main(["phones", "--model", str(run_dir), str(other_rate), str(short), str(first)]) == 1
    out, err = capsys.readouterr()
    assert "8k.wav: 8000 Hz audio; the model was trained on 16000 Hz" in err
    assert "short.wav: 100 samples, shorter than one 25 ms frame" in err and out.splitlines()[2].split("\t")[1] == seq
    assert main(["phones", "--model", str(run_dir), str(first)]) == 0 and capsys.readouterr().out.split("\t")[1].strip() == seq
    ens = run_ensemble("speech", [run_dir, run_dir], root / "data", root / "ens", repeats_ok=True)
    assert ens["test_frame_acc"] == row["test_frame_acc"] == ens["members_test_frame_acc"].split()[0]


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptb")
    write_ptb(root / "data" / "ptb")
    row, run_dir = _train(root / "data", tiny_preset(), "ptb")
    return root, row, run_dir, _gone(root)


def test_ptb_eval_score_sample_and_a_checkpoint_that_says_what_it_is(ptb, capsys):
    root, row, run_dir, data = ptb
    test_file = data / "ptb" / "ptb.test.txt"
    ev = _eval(run_dir, root, "--test", str(test_file))
    assert ev["test_ptb_ppl"] == row["test_ppl"]  # the same file, read as the run's test read it
    capsys.readouterr()
    assert main(["score", "--model", str(run_dir), str(test_file)]) == 0
    assert f"perplexity {float(row['test_ppl']):.2f} over" in capsys.readouterr().out
    samples = []
    for _ in range(2):
        assert main(["sample", "--model", str(run_dir), "--words", "30", "--seed", "3"]) == 0
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] and len(samples[0].split()) >= 20  # a seed repeats; <eos> ends a line
    # Without --test: the preset's own test streams, from the data root, as the run tested them.
    assert main(["eval", str(run_dir), "--data-root", str(data), "--results-dir", str(root / "evals")]) == 0
    own = read_rows(root / "evals" / "runs.csv")[-1]
    assert (own["test_ppl"], own["test_ppl_b4"]) == (row["test_ppl"], row["test_ppl_b4"])
    # Evaluation rows stay off the leaderboard: beside the training row, only the training row counts.
    as_named = [{**r, "overrides": ""} for r in (row, own)]  # as if both were of the preset as named
    assert [rows for rows in groups(as_named).values()] == [[as_named[0]]]
    # A file whose name looks like the B-column stream's metric, with blank lines: `bench eval` and
    # `bench score` read it alike (a blank line is an <eos>, as PTB's reader has it).
    odd = root / "b4.txt"
    odd.write_text(test_file.read_text().replace("\n", "\n\n", 3))
    ev = _eval(run_dir, root, "--test", str(odd))
    assert "test_b4_ppl" in ev and ev["test_ppl_b4"] == ""
    capsys.readouterr()
    assert main(["score", "--model", str(run_dir), str(odd)]) == 0
    assert f"perplexity {float(ev['test_b4_ppl']):.2f} over" in capsys.readouterr().out
    assert main(["translate", "--model", str(run_dir), str(test_file)]) == 2
    assert "a ptb model; this command needs a translation model" in capsys.readouterr().err
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["task"], config["seed"], config["dropout"], config["config_hash"]) == (
        "ptb", 0, "on", row["config_hash"])
    assert config["model"]["dropout"] == 0.5 and config["data"]["bptt"] == 5


def test_settings_a_checkpoint_carries_are_plain_data(tmp_path):
    """Paths and sets given by a Python caller, however deep, become text and lists: torch's
    weights_only loader reads the checkpoint back."""
    import torch

    from datamodules.ptb import PTBDataModule

    write_ptb(tmp_path / "ptb")
    dm = PTBDataModule(tmp_path, batch_size=4, bptt=5, test_sets={"extra": tmp_path / "ptb" / "ptb.test.txt"})
    dm.setup()
    torch.save({"dm": dm.state_dict()}, tmp_path / "x.ckpt")
    state = torch.load(tmp_path / "x.ckpt", weights_only=True)["dm"]
    assert state["settings"]["test_sets"] == {"extra": str(tmp_path / "ptb" / "ptb.test.txt")}
    assert state["itos"] == dm.vocab.itos


def test_ptb_model_use_meets_odd_input_with_a_line(ptb, capsys, tmp_path):
    import torch

    root, row, run_dir, data = ptb
    # A file ending in a blank line: that line is an <eos> to `bench score` as to `bench eval`.
    trailing = tmp_path / "trailing.txt"
    trailing.write_text("".join((data / "ptb" / "ptb.test.txt").read_text().splitlines(True)[:5]) + "\n")
    ev = _eval(run_dir, root, "--test", str(trailing))
    capsys.readouterr()
    assert main(["score", "--model", str(run_dir), str(trailing)]) == 0
    assert f"perplexity {float(ev['test_trailing_ppl']):.2f} over" in capsys.readouterr().out
    # A checkpoint moved out of its run folder still says what it is, its dropout rates included.
    moved = tmp_path / "moved" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", moved)
    assert _eval(moved, root, "--test", str(trailing))["dropout_rate"] == row["dropout_rate"] != ""
    lfs, number = tmp_path / "lfs.ckpt", tmp_path / "number.ckpt"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 9\n")
    torch.save(5, number)
    for args, says in ((["sample", "--model", str(run_dir), "--temperature", "nan"], "--temperature must be a number of at least 1e-30"),
                       (["score", "--model", str(lfs), str(trailing)], f"{lfs}: not a checkpoint"),
                       (["score", "--model", str(number), str(trailing)], "not a Lightning training checkpoint"),
                       (["eval", str(run_dir), "--test", str(trailing), "--accelerator", "tpuu"], "--accelerator tpuu")):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
