"""A seed is a whole, independent draw on every task: initial weights, data order and dropout masks
all change with it, and one seed repeats exactly. Each task runs through the runner (which sets
the seed, builds the DataModule and the model, and attaches the per-epoch mask seeding) up to its
first training batch, where a callback takes what the seed decided and stops the run."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from benchmark.config import load_preset
from benchmark.runner import RunOptions, run
from tests.conftest import tiny_preset
from tests.test_captioning import tiny_caption_preset, write_coco
from tests.test_speech import an4_tree, write_utt
from tests.test_translation import tiny_translation_preset, write_tab


class Captured(Exception):
    pass


class Capture(L.Callback):
    """At the first training batch (after EpochSeed has seeded the epoch's masks): the initial
    weights, the batch, and the RNG state the dropout masks are drawn from."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])
        self.batch = batch
        self.mask_rng = torch.get_rng_state().clone()
        raise Captured


def _tensors(batch) -> list[torch.Tensor]:
    values = batch.values() if isinstance(batch, dict) else batch
    return [v for v in values if isinstance(v, torch.Tensor)]


def first_batch(preset, data_root, tmp_path, seed: int) -> Capture:
    cap = Capture()
    opts = RunOptions(dropout="on", seed=seed, data_root=data_root, results_dir=tmp_path / f"r{seed}",
                      runs_dir=tmp_path / f"runs-{seed}-{len(list(tmp_path.iterdir()))}", callbacks=[cap])
    with pytest.raises(Captured):
        run(preset, opts)
    return cap


def ptb(tmp_path, data_root):
    return tiny_preset(), data_root


def speech(tmp_path, data_root):
    root = an4_tree(tmp_path / "data")
    for i, spk in enumerate(("fabc", "mdef")):  # utterances that differ, so their order shows
        for j in range(3):
            write_utt(root / "an4" / "wav" / "an4_clstk" / spk, f"u{j}-{spk}", [(0, 8000, "SIL"), (8000, 16000, "AA")],
                      seconds=1.0 + 0.1 * (3 * i + j), freqs=[200 + 50 * (3 * i + j), 900])
    preset = load_preset("speech", "an4-quick")
    preset.model.update({"hidden_size": 16})
    preset.data.update({"valid_speakers": ["fghi"], "batch_size": 2, "cache_dir": str(tmp_path / "cache")})
    preset.trainer.update({"enable_model_summary": False, "enable_progress_bar": False})
    return preset, root


def translation(tmp_path, data_root):
    root = tmp_path / "data"
    write_tab(root / "tab.txt")
    return tiny_translation_preset(root, test_sets={}), root


def captioning(tmp_path, data_root):
    root = tmp_path / "data"
    write_coco(root / "c", n=20)
    write_coco(root / "o", n=2, split_field=False)
    preset = tiny_caption_preset(root)
    preset.data["batch_size"] = 4
    return preset, root


# PTB's batches are the paper's fixed layout (contiguous columns read in order), the same for every
# seed by design; the other tasks shuffle.
@pytest.mark.parametrize("task, shuffles", [(ptb, False), (speech, True), (translation, True), (captioning, True)],
                         ids=["ptb", "speech", "translation", "captioning"])
def test_two_seeds_differ_and_one_seed_repeats(task, shuffles, tmp_path, data_root):
    import copy

    preset, root = task(tmp_path, data_root)
    a, again, b = (first_batch(copy.deepcopy(preset), root, tmp_path, s) for s in (0, 0, 1))
    assert torch.equal(a.weights, again.weights) and torch.equal(a.mask_rng, again.mask_rng)
    assert all(torch.equal(x, y) for x, y in zip(_tensors(a.batch), _tensors(again.batch)))
    assert not torch.equal(a.weights, b.weights), "the seed must change the initial weights"
    assert not torch.equal(a.mask_rng, b.mask_rng), "the seed must change the dropout masks"
    same_batch = all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(_tensors(a.batch), _tensors(b.batch)))
    assert same_batch != shuffles, "the seed must change the data order" if shuffles else "PTB's layout is fixed"
