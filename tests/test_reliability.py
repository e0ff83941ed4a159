"""kill -9 at points of a run, then --resume: the short form of scripts/reliability.py (the full form
covers every point and writes results/reliability.md), and the atomic checkpoint write under it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchmark.checkpoints import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import reliability  # noqa: E402

TINY = ["--set", "model.hidden_size=16", "--set", "data.batch_size=4", "--set", "data.bptt=5",
        "--set", "trainer.max_epochs=3"]


@pytest.mark.slow
def test_kill_9_mid_checkpoint_write_and_in_test_each_resume_to_the_same_numbers(data_root, tmp_path):
    straight, results = reliability.run_points(["checkpoint-write", "test"], data_root, TINY, tmp_path)
    for r in results:
        assert r["killed"] == "SIGKILL" and r["rows_after_kill"] == "0" and r["rows_after_resume"] == "1", r
        assert (r["differences"], r["verdict"]) == ("none", "identical"), r
    # The kill really landed mid-write (a half-written temporary file beside last.ckpt), and the
    # resume removed that file.
    assert [r["partial_files"] for r in results] == ["1", "0"]
    ckpts = next((tmp_path / "checkpoint-write" / "runs").iterdir()) / "checkpoints"
    assert not list(ckpts.glob(".*.tmp")) and torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2
    assert float(straight["test_ppl"]) > 1


def test_atomic_checkpoint_write_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}

    def fail_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_bad_input_table_short_form_one_line_each_and_written_files_intact(tmp_path):
    import bad_inputs

    for case in (c for c in bad_inputs.CASES if c.name in ("runs-csv", "shared-checkpoint", "too-many-bad-lines")):
        result = bad_inputs.check(case, tmp_path)
        assert result["verdict"] == "ok" and result["error_lines"] == "1" and result["kept"] != "CHANGED", result
