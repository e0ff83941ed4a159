"""What the README claims, checked where the value is knowable: the committed leaderboard is what
`bench leaderboard` makes of the committed rows, nothing is written into a data root, W&B goes
offline without an account, the model's phone error rate is the hand count, and an ensemble's
members and `--checkpoint best` score exactly as their own runs did."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from benchmark import wandb_log
from benchmark.cli import main
from benchmark.ensemble import run_ensemble
from benchmark.leaderboard import EFFECTS_FILE, LEADERBOARD_FILE, MARKDOWN_FILE, build
from benchmark.results import RUNS_FILE, read_rows
from benchmark.runner import RunOptions, run
from datamodules.phones import PHONE_SETS
from datamodules.speech import IGNORE, SpeechDataModule
from tasks.frame_classifier import FrameClassifier
from tests.conftest import find_run, tiny_preset, write_ptb
from tests.test_speech import an4_tree

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_leaderboard_is_what_bench_leaderboard_makes_of_the_committed_rows(tmp_path):
    results = ROOT / "results"
    shutil.copy(results / RUNS_FILE, tmp_path / RUNS_FILE)
    if (results / "outputs").is_dir():  # the BLEU tasks' test outputs: the paired bootstrap reads them
        shutil.copytree(results / "outputs", tmp_path / "outputs")
    build(tmp_path, plots=False)
    for name in (LEADERBOARD_FILE, EFFECTS_FILE, MARKDOWN_FILE):
        assert (tmp_path / name).read_text() == (results / name).read_text(), (
            f"results/{name} is not what `bench leaderboard --results-dir results` makes of results/runs.csv: rerun it")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_nothing_is_written_into_a_data_root(tmp_path):
    root = tmp_path / "data"
    write_ptb(root / "ptb")
    an4_tree(root)
    before = _snapshot(root)
    run(tiny_preset(), RunOptions(data_root=root, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs"))
    SpeechDataModule(root, valid_speakers=["mdef"], cache_dir=tmp_path / "cache").setup()
    assert _snapshot(root) == before


def test_wandb_goes_offline_without_an_account_and_online_with_one(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no `wandb login`
    assert wandb_log.resolve_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_log.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's own choice wins over the login
    assert wandb_log.resolve_mode("auto") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_log.resolve_mode("auto") == "online" and wandb_log.resolve_mode("offline") == "offline"


def test_phone_error_rate_and_frame_accuracy_of_the_model_are_the_hand_counts():
    ps = PHONE_SETS["an4"]
    model = FrameClassifier(input_size=6, num_classes=len(ps.train), fold_ids=ps.fold_ids(),
                            score_names=list(ps.score), hidden_size=8, num_layers=1).eval()
    classes = {}
    for i, f in enumerate(model.fold.tolist()):  # three classes that stay apart after folding
        if f >= 0 and f not in classes.values() and len(classes) < 3:
            classes[i] = f
    a, b, c = classes
    # Utterance 1: frames a a b b c -> phones a b c; predicted a a a c c -> a c: one deletion, 3 of 5 frames right.
    # Utterance 2: frames b b (then padding) -> b; predicted a b -> a b: one insertion, 1 of 2 frames right.
    ref, hyp = [[a, a, b, b, c], [b, b]], [[a, a, a, c, c], [a, b, c, c, c]]
    labels = torch.full((5, 2), IGNORE)
    logits = torch.zeros(5, 2, len(ps.train))
    for u in range(2):
        labels[: len(ref[u]), u] = torch.tensor(ref[u])
        logits[torch.arange(5), u, torch.tensor(hyp[u])] = 1.0
    model.forward = lambda feats: logits
    model._step({"feats": torch.zeros(5, 2, 6), "labels": labels}, "test")
    count = {k: int(model.counts[f"test_{k}"].compute()) for k in ("edits", "phones", "correct", "frames")}
    assert count == {"edits": 2, "phones": 4, "correct": 4, "frames": 7}  # PER 2/4, frame accuracy 4/7


TINY = ["--set", "model.hidden_size=8", "--set", "data.batch_size=4", "--set", "data.bptt=5",
        "--set", "trainer.max_epochs=3", "--set", "trainer.enable_progress_bar=false",
        "--set", "trainer.enable_model_summary=false"]


@pytest.mark.slow
def test_an_ensemble_of_one_run_twice_is_that_run_at_its_last_and_its_best_checkpoint(tmp_path, data_root):
    assert main(["run", "--task", "ptb", "--preset", "small", "--dropout", "on", "--data-root", str(data_root),
                 "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), *TINY]) == 0
    own = read_rows(tmp_path / "results" / RUNS_FILE)[0]
    run_dir = find_run(tmp_path / "runs", "ptb-small-dropout_on-seed0")
    for which, key in (("last", "test_ppl"), ("best", "best_test_ppl")):
        # One run twice is refused as an ensemble (one model counted as two); the mixture check allows it.
        ens = run_ensemble("ptb", [run_dir, run_dir], data_root, tmp_path / "results", which, repeats_ok=True)
        # Mixing a distribution with itself gives it back; each member scores as the run's own test did.
        assert float(ens["test_ppl"]) == pytest.approx(float(own[key]), abs=1e-4), which
        assert [float(x) for x in ens["members_test_ppl"].split()] == pytest.approx([float(own[key])] * 2, abs=1e-4)


def test_the_readme_regularizer_tables_are_the_committed_leaderboard():
    """Every README table headed `| regularizer | seeds | <metric> |` is what scripts/regularizer_table.py
    prints for one task and preset from results/: a new row merged without rewriting the README fails here."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("regularizer_table", ROOT / "scripts" / "regularizer_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tables = [(m.group(1), m.group(0).rstrip("\n"))
              for m in re.finditer(r"^\| regularizer \| seeds \| (\S+) \|.*\n(?:\|.*\n)+", readme, flags=re.M)]
    assert len(tables) >= 3, "the README's translation, captioning and speech regularizer tables are gone"
    settings = {(r["task"], r["preset"], r["metric"]) for r in read_rows(ROOT / "results" / LEADERBOARD_FILE)
                if r["status"] == "current"}
    for metric, text in tables:
        extra = [c.strip() for c in text.splitlines()[0].strip("|").split("|")[6:]]  # its `--extra` columns
        made = {script.table(ROOT / "results", task, preset, m, extra) for task, preset, m in settings if m == metric}
        assert text in made, (f"README table of {metric} is not `python scripts/regularizer_table.py TASK PRESET {metric}"
                              f"{''.join(' --extra ' + c for c in extra)}`:\n{text}")
