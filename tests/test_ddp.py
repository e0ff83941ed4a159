"""DDP on CPU: every task runs with 2 gloo ranks; PTB's 2 ranks, each reading half of the B columns,
train to the parameters of 1 rank."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.mark.slow
def test_translation_on_two_gloo_ranks_scores_every_sentence(tmp_path):
    """Each rank decodes its own length buckets; BLEU and the samples cover the whole test set."""
    from tests.test_translation import EN, FR, write_tab

    write_tab(tmp_path / "tab.txt", n=300)
    (tmp_path / "news.en").write_text("\n".join(EN) + "\n")
    (tmp_path / "news.fr").write_text("\n".join(FR) + "\n")
    cmd = [*BENCH, "run", "--task", "translation", "--preset", "quick", "--dropout", "on", "--data-root", str(tmp_path),
           "--results-dir", str(tmp_path / "results"), "--run-dir", str(tmp_path / "run"),
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max-epochs", "1", "--threads", "1",
           "--set", "data.train={tab: tab.txt}", "--set", "data.test_sets={news: {src: news.en, ref: news.fr}}",
           "--set", "data.split={valid: 0.2, test: 0.2, salt: t}", "--set", "data.train_pairs=null",
           "--set", "model.hidden_size=16", "--set", "model.emb_size=16",
           "--set", "data.batch_size=8", "--set", "trainer.enable_progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results" / "runs.csv") as f:
        row = next(csv.DictReader(f))
    assert row["devices"] == "2" and float(row["test_news_ppl"]) > 1
    samples = (tmp_path / "run" / "samples" / "test_news.txt").read_text()
    # num_samples (5) of the 10 news sentences, gathered from both ranks in rank order
    assert samples.count("source:") == 5


def _run_ddp(cmd: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _ddp_flags(tmp_path: Path) -> list[str]:
    return ["--results-dir", str(tmp_path / "results"), "--run-dir", str(tmp_path / "run"), "--accelerator", "cpu",
            "--devices", "2", "--strategy", "ddp", "--max-epochs", "1", "--threads", "1",
            "--set", "trainer.enable_progress_bar=false", "--set", "trainer.enable_model_summary=false"]


@pytest.mark.slow
def test_speech_on_two_gloo_ranks(tmp_path):
    from tests.test_speech import an4_tree

    an4_tree(tmp_path, speakers=("fabc", "mdef", "fghi", "mjkl"))
    _run_ddp([*BENCH, "run", "--task", "speech", "--preset", "an4-quick", "--dropout", "on", "--data-root",
              str(tmp_path), *_ddp_flags(tmp_path), "--set", "data.valid_speakers=[mdef]",
              "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.batch_size=2",
              "--set", "model.hidden_size=16"])
    with open(tmp_path / "results" / "runs.csv") as f:
        row = next(csv.DictReader(f))
    assert row["devices"] == "2" and 0 <= float(row["test_frame_acc"]) <= 1
    samples = (tmp_path / "run" / "samples" / "test.txt").read_text()  # phone sequences, both ranks' utterances
    assert samples.count("reference: SIL AA SIL") == 2 and samples.count("predicted:") == 2


@pytest.mark.slow
def test_captioning_on_two_gloo_ranks(tmp_path):
    from tests.test_captioning import write_coco

    write_coco(tmp_path / "c", n=20)
    _run_ddp([*BENCH, "run", "--task", "captioning", "--preset", "quick", "--dropout", "on", "--data-root",
              str(tmp_path), *_ddp_flags(tmp_path), "--set", "data.images=c/images",
              "--set", "data.captions=c/captions.json", "--set", "data.test_sets=null",
              "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.image_size=64",
              "--set", "data.min_count=1", "--set", "data.batch_size=8", "--set", "model.hidden_size=16",
              "--set", "model.emb_size=16", "--set", "model.beam=2"])
    with open(tmp_path / "results" / "runs.csv") as f:
        row = next(csv.DictReader(f))
    assert row["devices"] == "2" and float(row["test_ppl"]) > 1 and 0 <= float(row["test_bleu4"]) <= 100


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
