"""scripts/dry_run_paper.py's tables: what a step shows and what a full run would cost."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def dry():
    path = Path(__file__).parents[1] / "scripts" / "dry_run_paper.py"
    spec = importlib.util.spec_from_file_location("dry_run_paper", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dry_run_paper"] = module
    spec.loader.exec_module(module)
    return module


def result(nlls, seconds, tokens=1000):
    steps = [{"step": i + 1, "items": 64, "lr": 0.7, "loss": n * 30, "nll": n, "scale": 30.0, "grad_norm": 6.0,
              "clipped": True, "seconds": s, "tokens": tokens} for i, (n, s) in enumerate(zip(nlls, seconds))]
    return {"preset": "translation/paper", "model": {"num_layers": 4, "hidden_size": 1000, "dropout": 0.2},
            "batch_size": 128, "bptt": None, "sizes": {"src_vocab_size": 160000}, "clip": 5, "params": 3.8e8,
            "peak_rss_gib": 9.5, "loss_scale_rule": "sentence", "steps": steps, "epochs": 8,
            "epoch_tokens": 1e9, "epoch_source": "a test"}


def test_a_table_shows_each_step_and_whether_the_loss_falls(dry):
    text = "\n".join(dry.table(result([11.0, 10.5, 10.0, 9.8], [9.0, 2.0, 2.0, 4.0])))
    assert "| 3 | 64 | 0.7 | 300.000 | 10.0000 | 30.00 | 6.000 | yes | 2.00 |" in text
    assert "**falls**" in text and "Median step 2.00 s" in text
    # Steps 2-4: 3,000 tokens in 8 s; 8e9 tokens at 375 tokens/s.
    assert "Throughput 375 target tokens/s" in text and f"**{8e9 / 375 / 86400:,.1f} days**" in text
    assert "**does NOT fall**" in "\n".join(dry.table(result([10.0, 10.5, 10.4], [1.0, 1.0, 1.0])))


def test_vocabularies_are_filled_to_the_papers_sizes(dry):
    assert dry.filled(["<pad>", "a"], 5) == ["<pad>", "a", "<unused0>", "<unused1>", "<unused2>"]
