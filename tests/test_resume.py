"""A run that crashes mid-training and is resumed ends with the uninterrupted run's numbers, on the
tasks PTB's test (test_language_model.py) and kill -9 script (test_reliability.py) do not cover:
translation, speech and captioning. Dropout stays on, so the resumed run's masks must match too,
and so must the data order where a shuffling DataLoader draws it from torch's RNG (speech and
captioning; translation's length buckets seed their own order)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmark.config import Preset, load_preset
from benchmark.runner import RunOptions, run
from tests.test_language_model import Crash

TIMING = {"wall_s", "tokens_per_s", "train_s_per_epoch"}


def translation(root: Path) -> Preset:
    from tests.test_translation import EN, FR, tiny_translation_preset, write_tab

    write_tab(root / "tab.txt", n=200)
    (root / "news.en").write_text("\n".join(EN) + "\n")
    (root / "news.fr").write_text("\n".join(FR) + "\n")
    return tiny_translation_preset(root)


def speech(root: Path) -> Preset:
    from tests.test_speech import an4_tree

    an4_tree(root, speakers=("fabc", "mdef", "fghi", "mjkl"), vary=True)
    preset = load_preset("speech", "an4-quick")
    preset.model.update({"hidden_size": 16})
    preset.data.update({"valid_speakers": ["mdef"], "cache_dir": str(root / "cache"), "batch_size": 2})
    preset.trainer.update({"max_epochs": 2, "enable_model_summary": False, "enable_progress_bar": False})
    return preset


def captioning(root: Path) -> Preset:
    from tests.test_captioning import tiny_caption_preset, write_coco

    write_coco(root / "c", n=20)
    write_coco(root / "o", n=4, split_field=False)
    preset = tiny_caption_preset(root)
    preset.data["batch_size"] = 4  # several steps an epoch, so the crash lands mid-epoch
    return preset


def translation_locked(root: Path) -> Preset:
    """Locked dropout on the fused layout runs each layer through a one-layer nn.LSTM shell: building
    it must not draw from the RNG that the resumed epoch's masks come from."""
    from benchmark.config import apply_regularizer

    preset = translation(root)
    preset.model["backbone"] = "fused"
    preset.regularizers = {"locked": {"locked": 0.3}}
    apply_regularizer(preset, "locked")
    return preset


def metrics(row: dict) -> dict:
    """Every number a run measures (not how long it took)."""
    keys = [k for k in row if k.split("_")[0] in ("train", "valid", "test", "best") or k in ("epochs", "steps")]
    return {k: row[k] for k in keys if k not in TIMING}


@pytest.mark.parametrize("make_preset", [translation, speech, captioning, translation_locked], ids=lambda f: f.__name__)
def test_a_crashed_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path: Path, make_preset: Callable) -> None:
    task = make_preset(tmp_path).task

    def run_dir(folder: str) -> Path:
        (found,) = (tmp_path / folder / "runs").glob(f"{task}-*-seed0")
        return found

    def opts(folder: str, **kw) -> RunOptions:
        return RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / folder / "results",
                          runs_dir=tmp_path / folder / "runs", command="test", **kw)

    straight = run(make_preset(tmp_path), opts("a"))
    steps = int(straight["steps"])
    assert steps >= 4, f"{task}: too few steps ({steps}) to crash in the middle of an epoch"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_preset(tmp_path), opts("b", callbacks=[Crash(at_step=steps // 2 + 1)]))
    assert not (tmp_path / "b" / "results" / "runs.csv").exists()  # no partial row
    # The crash came after an epoch's checkpoint, so the run below really resumes (mid-run).
    assert torch.load(run_dir("b") / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    resumed = run(make_preset(tmp_path), opts("b", resume=True))

    assert metrics(resumed) == metrics(straight)
    assert any(k.startswith("test_") for k in metrics(straight)) and "best_epoch" in metrics(straight)
    ckpts = [run_dir(folder) / "checkpoints" / "last.ckpt" for folder in "ab"]
    a, b = (torch.load(c, weights_only=True)["state_dict"] for c in ckpts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_resumed_after_the_code_changed_says_where_it_began(tmp_path: Path, monkeypatch, caplog) -> None:
    """Its first epochs ran other code than the rest: the row names both commits, and so does every
    later checkpoint, so a second resume still knows."""
    from benchmark import runner

    def opts(folder: str, **kw) -> RunOptions:
        return RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / folder / "results",
                          runs_dir=tmp_path / folder / "runs", command="test", **kw)

    steps = int(run(translation(tmp_path), opts("a"))["steps"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(translation(tmp_path), opts("b", callbacks=[Crash(at_step=steps // 2 + 1)]))
    (last,) = (tmp_path / "b" / "runs").glob("*/checkpoints/last.ckpt")
    began = torch.load(last, weights_only=True)["rnnreg_run"]["git_commit"]
    monkeypatch.setattr(runner, "git_commit", lambda: "0123456789ab")
    monkeypatch.setattr(runner, "code_changed_since", lambda commit: commit != "0123456789ab")
    row = run(translation(tmp_path), opts("b", resume=True))
    assert (row["git_commit"], row["resumed_from_commit"]) == ("0123456789ab", began)
    assert f"was started at commit {began} and the code has changed since" in caplog.text
    assert torch.load(last, weights_only=True)["rnnreg_run"]["resumed_from_commit"] == began
    straight = run(translation(tmp_path), opts("c"))  # a run made whole by one commit names no other
    assert "resumed_from_commit" not in straight


def test_a_best_checkpoint_a_kill_removed_leaves_the_row_without_best_numbers(tmp_path: Path, caplog) -> None:
    """Lightning deletes the old best when it saves a new one; killed before last.ckpt, the resumed
    run's last.ckpt names a file that is gone. Testing it failed every resume; now the row says it."""
    import lightning as L

    class LoseBest(L.Callback):
        def on_fit_end(self, trainer, pl_module):
            best = trainer.checkpoint_callbacks[0]
            Path(best.best_model_path).unlink()
            best.best_model_path = str(Path(best.dirpath) / "best-epoch000.ckpt")  # an earlier epoch's, deleted

    preset = translation(tmp_path)
    row = run(preset, RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / "results",
                                 runs_dir=tmp_path / "runs", command="test", callbacks=[LoseBest()]))
    assert int(row["epochs"]) > 1 and row["best_epoch"] == ""
    assert not any(k.startswith("best_test") for k in row) and any(k.startswith("test_") for k in row)
    assert "the best checkpoint" in caplog.text and "is gone" in caplog.text


def test_a_run_folder_moved_before_its_resume_keeps_its_best_checkpoint(tmp_path: Path) -> None:
    """Lightning's ModelCheckpoint records its folder as an absolute path and, loading a checkpoint
    saved in another folder, forgets its best score: the first epoch after the resume became the best
    whatever its score, and the old best file stayed beside the new one."""
    import shutil

    def opts(folder: str, **kw) -> RunOptions:
        return RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / folder / "results",
                          runs_dir=tmp_path / folder / "runs", command="test", **kw)

    def checkpoints(folder: str) -> Path:
        (found,) = (tmp_path / folder / "runs").glob("translation-*-seed0")
        return found / "checkpoints"

    def best_state(folder: str) -> dict:
        states = torch.load(checkpoints(folder) / "last.ckpt", weights_only=True)["callbacks"]
        (state,) = (s for k, s in states.items() if "valid_ppl" in k)
        return {"score": float(state["best_model_score"]), "file": Path(state["best_model_path"]).name,
                "dirpath": state["dirpath"], "kept": {Path(p).name: float(v) for p, v in state["best_k_models"].items()}}

    straight = run(translation(tmp_path), opts("a"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(translation(tmp_path), opts("b", callbacks=[Crash(at_step=int(straight["steps"]) // 2 + 1)]))
    shutil.move(tmp_path / "b", tmp_path / "moved")
    resumed = run(translation(tmp_path), opts("moved", resume=True))

    assert metrics(resumed) == metrics(straight)
    assert sorted(p.name for p in checkpoints("moved").glob("*.ckpt")) == sorted(p.name for p in checkpoints("a").glob("*.ckpt"))
    a, moved = best_state("a"), best_state("moved")
    assert moved["dirpath"] == str(checkpoints("moved").resolve())
    assert {k: v for k, v in moved.items() if k != "dirpath"} == {k: v for k, v in a.items() if k != "dirpath"}
