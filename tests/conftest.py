"""Shared fixtures: a tiny corpus in Mikolov's PTB format, and a preset small enough to train in seconds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from benchmark.config import Preset, load_preset

REAL_DATA_ROOT = Path(os.environ.get("RNNREG_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
# CI sets this: there a missing reference data set fails the run instead of skipping its tests.
REQUIRE_REAL_DATA = os.environ.get("RNNREG_REQUIRE_REAL_DATA") == "1"


def need_real_data(path: Path) -> Path:
    """`path` under the real data root, or skip the test saying what is missing (fail, in CI)."""
    if not path.exists():
        message = f"{path} not found (set RNNREG_DATA_ROOT to a folder holding the real data sets)"
        if REQUIRE_REAL_DATA:
            pytest.fail(f"RNNREG_REQUIRE_REAL_DATA=1: {message}")
        pytest.skip(message)
    return path

WORDS = ("the a stock market price rose fell sharply today company said its shares N <unk> of in and to "
         "investors bank year million billion new york trading analysts expect quarter profit").split()


def write_ptb(folder: Path, seed: int = 0, lines: tuple[int, int, int] = (150, 40, 40)) -> Path:
    """ptb.{train,valid,test}.txt with the format's quirks: a leading space on every line, words
    separated by single spaces, `<unk>` and `N` as tokens, no `<eos>` in the file."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), lines):
        sents = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + " " for _ in range(n)]
        (folder / f"ptb.{split}.txt").write_text("\n".join(sents) + "\n")
    return folder


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_ptb(root / "ptb")
    return root


def tiny_preset(**model) -> Preset:
    """The small preset's code paths at toy size: 2x16 LSTM, batch 4, 5-step windows, 2 epochs."""
    preset = load_preset("ptb", "small")
    preset.model.update({"hidden_size": 16, "num_layers": 2, "dropout": 0.5, **model})
    preset.data.update({"batch_size": 4, "bptt": 5})
    preset.trainer.update({"max_epochs": 2, "enable_model_summary": False, "enable_progress_bar": False})
    return preset


@pytest.fixture
def real_data_root() -> Path:
    need_real_data(REAL_DATA_ROOT / "ptb" / "ptb.train.txt")
    return REAL_DATA_ROOT


def find_run(root: Path, name: str) -> Path:
    """The folder of run `<task>-<preset>-dropout_<x>-seed<N>` under `root`, whatever its settings
    hash (the folder is `<task>-<preset>-<hash>-dropout_<x>-seed<N>`); exactly one must exist."""
    stem, sep, rest = name.partition("-dropout_")
    found = sorted(Path(root).glob(f"{stem}-*-dropout_{rest}"))
    assert len(found) == 1, f"expected one run folder {stem}-<hash>-dropout_{rest} in {root}, found {found}"
    return found[0]
