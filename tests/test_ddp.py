"""DDP on CPU: every task runs with 2 gloo ranks; PTB's 2 ranks, each reading half of the B columns,
train to the parameters of 1 rank."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from benchmark.config import apply_dropout, load_preset
from benchmark.runner import make_datamodule
from tasks import registry

BENCH = [sys.executable, "-m", "benchmark.cli"]


def bench_run(tmp: Path, data_root: Path, devices: int) -> Path:
    run_dir = tmp / f"ddp{devices}"
    cmd = [*BENCH, "run", "--task", "ptb", "--preset", "small", "--dropout", "off", "--data-root", str(data_root),
           "--results-dir", str(tmp / "results"), "--run-dir", str(run_dir),
           "--accelerator", "cpu", "--devices", str(devices), "--max-steps", "6", "--threads", "1",
           "--set", "model.hidden_size=16", "--set", "data.batch_size=4", "--set", "data.bptt=5",
           "--set", "trainer.limit_val_batches=2", "--set", "trainer.limit_test_batches=2",
           "--set", "trainer.enable_progress_bar=false"]
    if devices > 1:
        cmd += ["--strategy", "ddp"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_two_gloo_ranks_match_one_rank(tmp_path, data_root):
    one = torch.load(bench_run(tmp_path, data_root, 1), weights_only=False)
    two = torch.load(bench_run(tmp_path, data_root, 2), weights_only=False)
    assert one["global_step"] == two["global_step"] == 6
    for key, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], value, atol=1e-5, rtol=1e-4)
    # Same weights would also come from every rank reading all 4 columns (the gradient mean of equal
    # gradients); the token count (rank-local tokens x world size) tells the two apart.
    for ckpt in (one, two):
        assert ckpt["callbacks"]["TokenThroughput"]["tokens"] == 6 * 5 * 4
    rows = (tmp_path / "results" / "runs.csv").read_text().splitlines()
    header = rows[0].split(",")
    devices = [r.split(",")[header.index("devices")] for r in rows[1:]]
    assert devices == ["1", "2"]


def _run_ddp(cmd: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _ddp_flags(tmp_path: Path) -> list[str]:
    return ["--results-dir", str(tmp_path / "results"), "--run-dir", str(tmp_path / "run"), "--accelerator", "cpu",
            "--devices", "2", "--strategy", "ddp", "--max-epochs", "1", "--threads", "1",
            "--set", "trainer.enable_progress_bar=false", "--set", "trainer.enable_model_summary=false"]


def run_on_two_ranks_and_alone(tmp_path: Path, task: str, preset_name: str, overrides: list[str]) -> tuple[dict, dict]:
    """Train on 2 gloo ranks, then test the run's last checkpoint (the weights its own test scored)
    on one process: every test number of the 2-rank row must be the one-process number. Returns the
    2-rank row and the one-process metrics, both as the row prints them."""
    _run_ddp([*BENCH, "run", "--task", task, "--preset", preset_name, "--dropout", "on", "--data-root", str(tmp_path),
              *_ddp_flags(tmp_path), *(f for o in overrides for f in ("--set", o))])
    with open(tmp_path / "results" / "runs.csv") as f:
        row = next(csv.DictReader(f))
    assert row["devices"] == "2"
    preset = load_preset(task, preset_name, overrides)
    apply_dropout(preset, "on")
    dm = make_datamodule(preset, tmp_path)
    dm.setup("fit")
    model = registry.load_class(preset.module)(**preset.model, **dm.model_kwargs())
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path / "alone")
    results = trainer.test(model, datamodule=dm, ckpt_path=tmp_path / "run" / "checkpoints" / "last.ckpt",
                           weights_only=True, verbose=False)
    alone = {k: f"{float(v):.4f}" for d in results for k, v in d.items()}
    scored = sorted(k for k in alone if k in row and row[k])
    assert scored
    for k in scored:  # counts, accuracies, BLEU: to the printed digit; perplexity: its float sums ran in another order
        assert float(row[k]) == pytest.approx(float(alone[k]), rel=1e-5) if k.endswith("_ppl") else row[k] == alone[k], k
    return row, alone


def same_outputs(tmp_path: Path, stream: str) -> list[dict]:
    """The 2 ranks' test outputs, gathered: line for line the one-process outputs."""
    two, one = (tmp_path / d / "outputs" / f"{stream}.jsonl" for d in ("run", "alone"))
    assert two.read_text() == one.read_text()
    return [json.loads(line) for line in two.read_text().splitlines()]


@pytest.mark.slow
def test_translation_on_two_gloo_ranks_scores_every_sentence_once(tmp_path):
    """Each rank decodes one block of the length buckets; BLEU, perplexity and the outputs cover the
    whole test set once, as on one process."""
    from tests.test_translation import EN, FR, write_tab

    write_tab(tmp_path / "tab.txt", n=300)
    (tmp_path / "news.en").write_text("\n".join(EN[:9]) + "\n")
    (tmp_path / "news.fr").write_text("\n".join(FR[:9]) + "\n")
    row, _ = run_on_two_ranks_and_alone(tmp_path, "translation", "tatoeba-quick", [
        "data.train={tab: tab.txt}", "data.test_sets={news: {src: news.en, ref: news.fr}}",
        "data.split={valid: 0.2, test: 0.2, salt: t}", "data.train_pairs=null", "model.hidden_size=16",
        "model.emb_size=16", "data.batch_size=8"])
    assert float(row["test_news_ppl"]) > 1
    assert sorted(x["refs"][0] for x in same_outputs(tmp_path, "test_news")) == sorted(FR[:9])
    samples = (tmp_path / "run" / "samples" / "test_news.txt").read_text()
    assert samples == (tmp_path / "alone" / "samples" / "test_news.txt").read_text()
    assert samples.count("source:") == 5  # num_samples of the 9, gathered from both ranks


@pytest.mark.slow
def test_speech_on_two_gloo_ranks_scores_every_frame_once(tmp_path):
    from tests.test_speech import an4_tree

    an4_tree(tmp_path, speakers=("fabc", "mdef", "fghi", "mjkl"), per_speaker=3, vary=True)  # 3 test utterances: odd
    row, _ = run_on_two_ranks_and_alone(tmp_path, "speech", "an4-quick", [
        "data.valid_speakers=[mdef]", f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=2",
        "model.hidden_size=16"])
    assert row["test_frames"] == f"{3 * 98:.4f}"  # 3 one-second utterances of 98 frames, each scored once
    samples = (tmp_path / "run" / "samples" / "test.txt").read_text()  # phone sequences, both ranks' utterances
    assert samples.count("reference: SIL AA SIL") == 3 and samples.count("predicted:") == 3


@pytest.mark.slow
def test_captioning_on_two_gloo_ranks_scores_every_image_once(tmp_path):
    from tests.test_captioning import write_coco

    write_coco(tmp_path / "c", n=25)  # every 5th image is a test image: 5, odd
    run_on_two_ranks_and_alone(tmp_path, "captioning", "quick", [
        "data.images=c/images", "data.captions=c/captions.json", "data.test_sets=null",
        f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=64", "data.min_count=1", "data.batch_size=8",
        "model.hidden_size=16", "model.emb_size=16", "model.beam=2"])
    assert len(same_outputs(tmp_path, "test")) == 5


@pytest.mark.slow
def test_a_sweep_runs_under_ddp(tmp_path, data_root):
    """Both dropout settings in one command on 2 ranks: every rank walks the same plan, rank 0 writes."""
    _run_ddp([*BENCH, "run", "--task", "ptb", "--preset", "small", "--dropout", "on,off", "--data-root",
              str(data_root), "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
              "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max-steps", "3", "--threads", "1",
              "--set", "model.hidden_size=8", "--set", "data.batch_size=4", "--set", "data.bptt=5",
              "--set", "trainer.enable_progress_bar=false"])
    with open(tmp_path / "results" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dropout"], r["devices"]) for r in rows] == [("on", "2"), ("off", "2")]


def test_evaluation_blocks_cover_every_item_once_in_one_process_order():
    from datamodules.parallel import LengthBuckets
    from datamodules.shards import EvalBlocks, balanced_block
    from tasks.nn.errors import ConfigError

    for n, world in [(7, 2), (9, 4), (4, 4)]:
        shares = [list(EvalBlocks(range(n), rank, world)) for rank in range(world)]
        assert all(shares) and [i for share in shares for i in share] == list(range(n))
    lengths = [3, 1, 2, 3, 1, 2, 2, 5, 4, 9, 9]
    alone = list(LengthBuckets(lengths, batch_size=2, shuffle=False))  # 1 1 | 2 2 | 2 | 3 3 | 4 | 5 | 9 9
    shares = [list(LengthBuckets(lengths, 2, shuffle=False, rank=rank, world_size=2)) for rank in range(2)]
    assert shares[0] + shares[1] == alone
    assert [sum(lengths[i] for b in share for i in b) for share in shares] == [23, 18]  # the words, about halved
    assert [list(balanced_block([1, 1, 1, 100], r, 3)) for r in range(3)] == [[0, 1], [2], [3]]
    with pytest.raises(ConfigError, match="the test set has 1 items, fewer than the 2 ranks"):
        EvalBlocks(range(1), 0, 2, "the test set")
