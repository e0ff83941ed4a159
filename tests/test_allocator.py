"""benchmark/allocator.py: freed memory kept in the process gives the same numbers with far fewer page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark import allocator
from tests.test_cli import FAST

PROJECT = Path(__file__).resolve().parent.parent
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Training steps of PTB small's shape (real data: 10,000 words, so 16 MB logits, which glibc serves
# with mmap by default) in a fresh process; prints the losses and the weights' sum bit for bit.
STEPS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from benchmark import allocator
    from benchmark.config import load_preset
    from datamodules.ptb import PTBDataModule
    from tasks.language_model import LanguageModel
    applied = allocator.keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    preset = load_preset("ptb", "small")
    dm = PTBDataModule(Path(sys.argv[1]), download=False, **preset.data)
    dm.setup("fit")
    model = LanguageModel(**{**preset.model, "dropout": 0.5}, **dm.model_kwargs()).train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    losses, batches = [], iter(dm.train_dataloader())
    for _ in range(8):
        loss = model._nll(next(batches), "train")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item().hex())
    weights = sum(p.double().sum().item() for p in model.parameters()).hex()
    print(json.dumps({"applied": applied, "losses": losses, "weights": weights}))
""")

# A 40 MB block allocated, written and freed again and again: glibc never serves a block over
# 32 MB from its heap by itself, so as it ships every round maps and zero-fills 10,240 fresh pages;
# with freed memory kept the heap settles within a few rounds and then faults no page at all. (A
# training step's count also falls, but how far varies from one process to the next.)
ROUNDS = textwrap.dedent("""
    import resource, torch
    from benchmark import allocator
    allocator.keep_freed_memory()
    for i in range(30):
        if i == 25:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(10 << 20).fill_(1.0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
""")


def _run(code: str, malloc: str, *args: str) -> str:
    env = {**allocator.without_other_settings(os.environ), allocator.ENV: malloc}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=PROJECT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@glibc_only
def test_kept_memory_trains_to_the_same_bits(real_data_root):
    kept, default = (json.loads(_run(STEPS, m, str(real_data_root))) for m in ("keep", "default"))
    assert (kept["applied"], default["applied"]) == (True, False)
    assert kept["losses"] == default["losses"] and kept["weights"] == default["weights"]


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@glibc_only
@pytest.mark.skipif(_huge_pages_always(), reason="with transparent huge pages always on, a 40 MB map faults 2 MB "
                                                 "pages, not the 10,240 4 KB pages counted here")
def test_kept_memory_reuses_freed_blocks_instead_of_mapping_fresh_pages():
    kept, default = (int(_run(ROUNDS, m)) for m in ("keep", "default"))
    assert default >= 5 * 10_000 and kept < 100, (kept, default)


@pytest.mark.parametrize("value", ["default", "sometimes"])
def test_anything_but_keep_leaves_malloc_alone(monkeypatch, value, caplog):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV, value)
    assert allocator.keep_freed_memory() is False
    assert (allocator.ENV in caplog.text) == (value == "sometimes")


@glibc_only
def test_bench_run_keeps_freed_memory(tmp_path, data_root):
    code = ("import sys; from benchmark.cli import main; from benchmark import allocator; "
            "assert main(sys.argv[1:]) == 0; print('applied', allocator._applied)")
    args = ["run", "--task", "ptb", "--data-root", str(data_root), "--results-dir", str(tmp_path / "results"),
            "--runs-dir", str(tmp_path / "runs"), *FAST]
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=PROJECT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "applied True" in done.stdout
