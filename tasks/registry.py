"""What each task is, in one place: its LightningModule and DataModule, the metrics the leaderboard
and the best checkpoint read, what it can do, and the paper's table it reproduces.

The runner, the CLI, the leaderboard and `bench ensemble` read a task's `TaskSpec` and nothing else
(no attribute probing of its classes). Nothing here imports torch: the leaderboard reads titles and
metric names without loading a model. Adding a task: a LightningModule (`tasks/`), a DataModule
(`datamodules/`), a folder of presets (`configs/<name>/`) and one `register(TaskSpec(...))` below, or
from the code that adds it (a plugin, a test) with its own `config_dir`.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass
from pathlib import Path

from tasks.nn.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Can(enum.Enum):
    """What a task can do beyond train and test."""

    ENSEMBLE = "ensemble"  # `bench ensemble`: its module has a classmethod ensemble_eval(members, dm)
    TEST_FILES = "test files"  # `bench run --test-src/--test-ref`: its DataModule takes `test_sets`
    OWN_RANK_LAYOUT = "own rank layout"  # its DataModule shards batches by rank: no DistributedSampler


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """The task's key: `bench run --task <name>`, the presets' folder name, the rows' `task` column."""
    title: str
    """The paper's experiment, as the leaderboard heads its table."""
    module: str
    """Import path of the LightningModule."""
    datamodule: str
    """Import path of the DataModule; the module's constructor gets its `model_kwargs()`."""
    headline: str
    """The leaderboard's number: a test metric of the last-epoch model."""
    monitor: tuple[str, str]
    """(validation metric, "min" | "max"): which checkpoint is the best; its metric is the learning curve."""
    result_keys: tuple[str, ...]
    """Metric names (or their prefixes) that go into a results row."""
    capabilities: frozenset[Can] = frozenset()
    paper_metric: str | None = None
    """The row key that is computed like the paper's figure, which the leaderboard's paper column
    and Δ compare; None: the headline."""
    test_set_parts: tuple[str, ...] = ()
    """What a test set given by path is made of (`bench eval --test`), in order: one part is a bare
    path in the DataModule's `test_sets`, several a mapping of these names to paths."""
    default_preset: str = "quick"
    """What `bench run` trains without --preset."""
    config_dir: Path | None = None
    """Its presets' folder; None: configs/<name>/."""

    @property
    def presets_dir(self) -> Path:
        return self.config_dir or CONFIG_DIR / self.name

    @property
    def curve(self) -> str:
        """The learning-curve metric without its split: "ppl", "frame_acc"."""
        return self.monitor[0].removeprefix("valid_")

    def can(self, capability: Can) -> bool:
        return capability in self.capabilities


_TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _TASKS.pop(name, None)


def get(name: str) -> TaskSpec:
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_TASKS)


def load_class(path: str) -> type:
    """`package.module.Class` -> the class."""
    module_name, _, cls_name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"cannot import {path!r} ({err})") from err


# -- the paper's four experiments (Sec. 4) ---------------------------------------------------------------
register(TaskSpec(
    name="ptb",
    title="Word-level perplexity on the Penn Tree Bank (Sec. 4.1, Table 1)",
    module="tasks.language_model.LanguageModel",
    datamodule="datamodules.ptb.PTBDataModule",
    headline="test_ppl",
    monitor=("valid_ppl", "min"),
    result_keys=("train_ppl", "valid_ppl", "test_ppl", "best_test_ppl"),
    capabilities=frozenset({Can.ENSEMBLE, Can.OWN_RANK_LAYOUT}),
    test_set_parts=("text",),  # Mikolov's format: one sentence a line
    default_preset="small",
))
register(TaskSpec(
    name="speech",
    title="Frame-level accuracy, acoustic modeling (Sec. 4.2, Table 2)",
    module="tasks.frame_classifier.FrameClassifier",
    datamodule="datamodules.speech.SpeechDataModule",
    headline="test_frame_acc",
    monitor=("valid_frame_acc", "max"),
    result_keys=("train_frame_acc", "valid_frame_acc", "test_frame_acc", "train_per", "valid_per", "test_per",
                 "train_eval_frame_acc", "train_eval_per", "test_frames", "best_test_frame_acc", "best_test_per"),
    capabilities=frozenset({Can.ENSEMBLE}),
    test_set_parts=("folder",),  # audio with a TIMIT-style .phn beside each file
))
register(TaskSpec(
    name="translation",
    title="English to French translation (Sec. 4.3, Table 3)",
    module="tasks.translator.Translator",
    datamodule="datamodules.parallel.ParallelTextDataModule",
    headline="test_bleu",  # beam search
    monitor=("valid_ppl", "min"),
    result_keys=("train_ppl", "valid_", "test_", "best_test_"),
    capabilities=frozenset({Can.ENSEMBLE, Can.TEST_FILES, Can.OWN_RANK_LAYOUT}),
    test_set_parts=("src", "ref"),  # line-aligned plain text or WMT .sgm
    paper_metric="test_bleu_tok",  # the paper's 29.03 is BLEU on tokenized text, not sacrebleu's
))
register(TaskSpec(
    name="captioning",
    title="Image caption generation (Sec. 4.4, Table 4)",
    module="tasks.captioner.Captioner",
    datamodule="datamodules.captions.CaptionsDataModule",
    headline="test_bleu4",  # beam search
    monitor=("valid_ppl", "min"),
    result_keys=("train_ppl", "valid_", "test_", "best_test_"),
    capabilities=frozenset({Can.ENSEMBLE}),
    test_set_parts=("captions", "images"),  # a COCO-format captions JSON and its image folder
))
