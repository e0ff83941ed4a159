"""Against the real PTB under RNNREG_DATA_ROOT (CI: ../shared/data); skipped where it is absent."""

from __future__ import annotations

import pytest

from benchmark.runner import RunOptions, run
from datamodules.download import sha256_of
from datamodules.ptb import PTBDataModule
from datamodules.sources import PTB
from tests.conftest import tiny_preset

pytestmark = pytest.mark.real_data


def test_files_match_the_publishers_sha256(real_data_root):
    for name, digest in PTB.sha256.items():
        assert sha256_of(real_data_root / "ptb" / name) == digest


def test_token_counts_and_vocabulary(real_data_root):
    dm = PTBDataModule(real_data_root, batch_size=20, bptt=20, download=False)
    dm.setup()
    assert len(dm.vocab) == 10_000
    assert {s: ids.numel() for s, ids in dm.ids.items()} == {"train": 929_589, "valid": 73_760, "test": 82_430}
    # 929,589 tokens in 20 columns: 46,479 rows, 2,323 full 20-step windows per epoch
    assert len(dm.train_dataloader()) == (929_589 // 20 - 1) // 20 == 2323


def test_a_few_steps_on_real_ptb_learn(tmp_path, real_data_root):
    preset = tiny_preset(hidden_size=32)
    preset.data.update(batch_size=20, bptt=20, train_tokens=40_000)
    preset.trainer.update(max_epochs=1, limit_val_batches=10, limit_test_batches=10, enable_progress_bar=True)
    row = run(preset, RunOptions(data_root=real_data_root, results_dir=tmp_path, runs_dir=tmp_path))
    # uniform guessing over 10k words is perplexity 10,000; one pass over 40k tokens gets far below it
    assert float(row["valid_ppl"]) < 1500 and float(row["train_ppl"]) < 3000
