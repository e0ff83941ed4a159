"""A trained model from its checkpoint alone: what `bench eval`, `bench ensemble` and the inference
commands start from.

A checkpoint written by `bench run` holds, beside the weights and the model's hyperparameters:

    <DataModule class name>       the DataModule's settings (the preset's `data:` section, resolved)
                                  and what its setup() learned from the training data: vocabularies,
                                  feature normalisation (TaskDataModule.state_dict)
    rnnreg_run                    which run made it: task, preset, dropout, seed, settings hash

so a model can read new input (and be scored on a new test set) with no training data at hand.
Everything is read with torch's `weights_only` unpickler (benchmark/checkpoints.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import allocator
from benchmark.checkpoints import best_epoch_and_version, check_checkpoint
from datamodules.base import TaskDataModule
from tasks import registry
from tasks.base import RUN_INFO_KEY, TaskModule
from tasks.nn.errors import ConfigError


@dataclass
class Trained:
    path: Path  # the checkpoint file
    spec: registry.TaskSpec
    model: TaskModule  # in eval mode, on the CPU
    settings: dict[str, Any]  # the DataModule's constructor arguments, less its folders
    state: dict[str, Any]  # the DataModule's state_dict()
    info: dict[str, Any]  # the run's identity (tasks.base.TaskModule.run_info); {} for older checkpoints
    global_step: int | None = None  # the optimizer steps it had trained when saved (Lightning's `global_step`)

    def datamodule(self, data_root: Path, test_sets: dict[str, Any] | None = None,
                   batch_size: int | None = None) -> TaskDataModule:
        """The DataModule as it was trained, its learned state given back: with `test_sets`, one that
        reads those alone (no training data); without, the preset's own splits (the data root's).
        `batch_size`: the evaluation batch (`eval_batch_size` where the DataModule has one)."""
        dm_cls = registry.load_class(self.spec.datamodule)
        settings = dict(self.settings)
        if batch_size:
            key = getattr(dm_cls, "eval_batch_key", "eval_batch_size")
            if key is None:
                raise ConfigError(f"--batch-size: {self.spec.name} reads its evaluation streams in a layout that is "
                                  f"part of the metric (the run's own), so it takes no other batch; leave it out")
            settings[key if key in settings else "batch_size"] = batch_size
        if test_sets:
            settings.update(test_sets=test_sets, test_only=True)
        dm = dm_cls(data_root=data_root, **settings)
        dm.load_state_dict(self.state)
        return dm


def checkpoint_path(path: Path, which: str = "last") -> Path:
    """A run folder's last or best-by-validation checkpoint; a `.ckpt` file as it is."""
    path = Path(path)
    if path.is_file() or path.suffix == ".ckpt":
        if which == "best" and not path.name.startswith("best-"):
            raise ConfigError(f"{path}: a checkpoint file is scored as it is, and this is not a best-*.ckpt; "
                              f"give its run folder with --checkpoint best, or drop --checkpoint best")
        return path
    folder = path / "checkpoints"
    if not folder.is_dir():
        raise ConfigError(f"{path}: neither a checkpoint file nor a run folder (no checkpoints/ inside)")
    if which == "last":
        return folder / "last.ckpt"
    # By epoch and `-vN`: as text, best-epoch007-v1 (the later save) sorts before best-epoch007.
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: (best_epoch_and_version(p) or (-1, 0), p.name))
    if not best:
        raise ConfigError(f"{folder}: no best-*.ckpt (a run without validation); use --checkpoint last")
    return best[-1]



def task_of(ckpt: dict[str, Any], path: Path) -> registry.TaskSpec:
    """The registered task whose model wrote this checkpoint."""
    info = ckpt.get(RUN_INFO_KEY) or {}
    if info.get("task"):
        try:
            return registry.get(info["task"])
        except ConfigError as err:
            raise ConfigError(f"{path}: written by a run of {err}") from None
    for name in registry.names():  # older checkpoints: the DataModule's state names its class
        spec = registry.get(name)
        if spec.datamodule.rpartition(".")[2] in ckpt:
            return spec
    raise ConfigError(f"{path}: no task's data settings inside; it was written before checkpoints carried them "
                      f"(or not by `bench run`): train it again with this version")


def load(path: Path, which: str = "last", task: str | None = None) -> Trained:
    """Load a trained model (`path`: a run folder or a `.ckpt`). `task`: the task the caller needs;
    a checkpoint of another is refused with a message that says what it is."""
    allocator.keep_freed_memory()  # scoring and decoding reuse large buffers too (benchmark/allocator.py)
    file = checkpoint_path(path, which)
    if not file.is_file():
        raise ConfigError(f"{file}: not found; give a run folder of `bench run` or a .ckpt file")
    ckpt = check_checkpoint(file, purpose="load")
    spec = task_of(ckpt, file)
    if task is not None and spec.name != task:
        raise ConfigError(f"{file}: a {spec.name} model; this command needs a {task} model")
    dm_key = spec.datamodule.rpartition(".")[2]
    if not isinstance(ckpt.get(dm_key), dict) or not ckpt[dm_key].get("settings"):
        raise ConfigError(f"{file}: a {spec.name} checkpoint written before checkpoints carried their data "
                          f"settings and vocabularies; train it again with this version")
    module_cls = registry.load_class(spec.module)
    try:
        model = module_cls(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a hyperparameter or weight renamed since
        raise ConfigError(f"{file}: its model does not fit this version's {spec.module} ({_one_line(err)}); "
                          f"score it with the commit that trained it, or train it again") from err
    model.run_info = ckpt.get(RUN_INFO_KEY) or None
    state = dict(ckpt[dm_key])
    return Trained(file, spec, model.eval(), state.pop("settings"), state, dict(ckpt.get(RUN_INFO_KEY) or {}),
                   ckpt.get("global_step"))


def _one_line(err: BaseException) -> str:
    """load_state_dict's message starts with a header line; the key names are on the next."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def run_row(ckpt: Path) -> dict[str, Any]:
    """The results row of the run a checkpoint belongs to (<run>/result.json), or {}."""
    if Path(ckpt).parent.name != "checkpoints":
        return {}
    result = Path(ckpt).parent.parent / "result.json"
    try:
        return json.loads(result.read_text())["row"]
    except (OSError, ValueError, KeyError):
        return {}
