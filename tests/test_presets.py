"""Every preset of every task, as it is: its settings bind to its task's module and DataModule, and
it trains two steps, validates and tests on tiny data in its own corpus's format. Only the data's
location (and, offline, pretrained CNN weights) is swapped, so a new or changed preset is tested
without a new test."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from benchmark.config import apply_regularizer, load_preset, presets
from benchmark.results import read_rows
from benchmark.runner import RunOptions, run
from datamodules import sources
from tasks import registry
from tests.conftest import write_ptb
from tests.test_captioning import write_coco
from tests.test_speech import write_utt
from tests.test_translation import write_tab

PRESETS = [(task, name) for task in ("ptb", "speech", "translation", "captioning") for name in presets(task)]
TWO_STEPS = {"max_steps": 2, "limit_val_batches": 1, "limit_test_batches": 1, "num_sanity_val_steps": 0,
             "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1}


@pytest.mark.parametrize(("task", "name"), PRESETS, ids=[f"{t}/{p}" for t, p in PRESETS])
def test_preset_binds_to_its_classes(task, name):
    preset, spec = load_preset(task, name), registry.get(task)
    model_args = inspect.signature(registry.load_class(spec.module)).parameters
    data_args = inspect.signature(registry.load_class(spec.datamodule)).parameters
    assert not set(preset.model) - set(model_args), f"{preset.path}: model keys its module does not take"
    assert not set(preset.data) - set(data_args), f"{preset.path}: data keys its DataModule does not take"


# -- tiny data in each corpus's format ----------------------------------------------------------------------
def _ptb(preset, root: Path) -> None:
    write_ptb(root / "ptb")


def _speech(preset, root: Path) -> None:
    corpus = preset.data["corpus"]
    sil, ph = {"an4": ("SIL", "AA"), "timit-sample": ("h#", "aa"), "timit": ("h#", "aa")}[corpus]
    segs = [(0, 4000, sil), (4000, 12000, ph), (12000, 16000, sil)]
    held_out = [*preset.data.get("valid_speakers", []), *preset.data.get("test_speakers", [])]
    if corpus == "an4":
        folders = [f"wav/an4_clstk/{s}" for s in ("fabc", "mdef", *held_out)] + ["wav/an4test_clstk/mtst"]
    elif corpus == "timit-sample":
        folders = ["dr1-fabc0", "dr2-mdef0", *held_out]
    else:  # train speakers; MDAB0 is a core test speaker, MXYZ0 a non-core one (validation)
        folders = ["TRAIN/DR1/FABC0", "TRAIN/DR2/MDEF0", "TEST/DR1/MDAB0", "TEST/DR1/MXYZ0"]
    for folder in folders:
        for i in range(2):
            write_utt(root / corpus / folder, f"u{i}", segs)


def _translation(preset, root: Path) -> None:
    write_tab(root / "tab.txt", n=60)
    for side, lang in (("en", "en"), ("fr", "fr")):
        (root / f"news.{side}").write_text("".join(f"sentence {i} in {lang}\n" for i in range(4)))
    preset.data.update({"train": {"tab": "tab.txt"}, "valid": None, "test": None,
                        "split": {"valid": 0.1, "test": 0.05, "salt": "t"},
                        "test_sets": {"news": {"src": "news.en", "ref": "news.fr"}}, "train_pairs": None})


def _captioning(preset, root: Path) -> None:
    write_coco(root / "c", n=12)
    preset.data.update({"images": str(root / "c" / "images"), "captions": str(root / "c" / "captions.json"),
                        "karpathy_split": None, "test_sets": {}, "min_count": 1, "cache_dir": str(root / "cache"),
                        "pretrained": False})  # the weights would download; the decoder is what the preset sets


TINY_DATA = {"ptb": _ptb, "speech": _speech, "translation": _translation, "captioning": _captioning}


@pytest.mark.parametrize(("task", "name"), PRESETS, ids=[f"{t}/{p}" for t, p in PRESETS])
def test_preset_trains_two_steps_and_tests(task, name, tmp_path, monkeypatch):
    # NLTK's TIMIT sample downloads when its listed files are missing: the tiny copy lists none.
    monkeypatch.setattr(sources, "TIMIT_SAMPLE", dataclasses.replace(sources.TIMIT_SAMPLE, sha256={}))
    preset = load_preset(task, name)
    apply_regularizer(preset, preset.default_regularizer)  # as `bench run` trains it
    TINY_DATA[task](preset, tmp_path / "data")
    if task == "speech":
        preset.data["cache_dir"] = str(tmp_path / "cache")
    preset.trainer.update(TWO_STEPS)
    opts = RunOptions(dropout=preset.default_dropout, data_root=tmp_path / "data", results_dir=tmp_path / "results",
                      runs_dir=tmp_path / "runs")
    row = run(preset, opts)
    assert row["steps"] == 2 and row[registry.get(task).headline] != ""
    assert read_rows(tmp_path / "results" / "runs.csv")[0]["preset"] == name


@pytest.mark.parametrize("task", ["ptb", "speech", "translation", "captioning"])
def test_every_mechanism_at_once_trains_each_task(task, tmp_path, monkeypatch):
    """Every regularization mechanism together on the task's quick preset (speech: all but word-type
    dropout): the step loop, packed sequences (translation's encoder), DropConnect and zoneout's
    evaluation through training, validation, test and decoding."""
    preset = load_preset(task, "quick")
    preset.regularizers["everything"] = {"dropout": 0.2, "locked": 0.2, "hidden": 0.2, "weight_drop": 0.2,
                                         "zoneout_c": 0.2, "zoneout_h": 0.1, "recurrent": 0.2,
                                         **({} if task == "speech" else {"embedding": 0.1})}
    apply_regularizer(preset, "everything")
    TINY_DATA[task](preset, tmp_path / "data")
    if task == "speech":
        preset.data["cache_dir"] = str(tmp_path / "cache")
    preset.trainer.update(TWO_STEPS)
    row = run(preset, RunOptions(dropout="on", data_root=tmp_path / "data", results_dir=tmp_path / "results",
                                 runs_dir=tmp_path / "runs"))
    assert row["regularizer"] == "everything" and "hidden=0.2" in row["dropout_rate"]
    assert row[registry.get(task).headline] != ""
