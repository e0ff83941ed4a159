"""Framewise phone classification (the paper's Section 4.2): a deep LSTM labels every 10 ms frame.

features (T, B, F) -> DropoutLSTM -> linear -> per-frame softmax over the training phone set.
Scored after folding prediction and reference into the scoring classes (TIMIT: 39), padding and
unscored frames excluded: frame accuracy, and two phone error rates (jiwer), both against the
reference frame labels collapsed into a phone sequence (runs of one label become one phone). A
class without a scoring class (TIMIT's q) leaves both phone strings, the reference's and the
prediction's, as TIMIT is scored; a frame predicted as q still counts wrong in frame accuracy.

    per           the predicted frames collapsed as they are: every one-frame flicker is an inserted
                  phone, so this is a frame-smoothness number more than a recognition one
    per_smoothed  predicted runs shorter than `min_phone_frames` (3: the HMM aligner's shortest phone,
                  3 states of 10 ms) dropped before collapsing; a minimum-duration decode

Neither is TIMIT's published PER (e.g. Graves et al. 2013's 17.7%): those decode with a trained
sequence model (CTC or an HMM with a phone language model) over the 39 classes, and TIMIT's
reference is the hand transcription, not a frame alignment.
"""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

import jiwer
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import SumMetric

from tasks.base import TaskModule
from tasks.nn import text_metrics
from tasks.nn.backbone import DropoutLSTM, Impl, init_uniform_
from tasks.nn.cadence import log_due
from tasks.nn.regularizers import Regularization

IGNORE = -100
COUNTS = ("correct", "frames", "edits", "phones", "edits_smoothed")


def collapse(labels: list[int]) -> list[int]:
    """[a, a, b, b, b, a] -> [a, b, a]: a frame sequence as the phone sequence it spells."""
    return [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]


def drop_short_runs(labels: list[int], min_run: int) -> list[int]:
    """[a, a, a, b, a, a, a] -> [a] for min_run 2: runs shorter than min_run left out, then collapsed."""
    runs = [(label, len(list(frames))) for label, frames in groupby(labels)]
    kept = [label for label, n in runs if n >= min_run]
    return collapse(kept) if kept else collapse(labels)


class FrameClassifier(TaskModule):
    test_streams = ("test", "train_eval")  # test_dataloader order: held-out test, then the training set
    num_samples = 5  # test utterances written out as phone sequences

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        fold_ids: list[int],
        score_names: list[str],
        hidden_size: int = 256,
        num_layers: int = 3,
        dropout: float = 0.0,
        init_scale: float = 0.1,
        backbone: Impl = "fused",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        min_phone_frames: int = 3,
        regularization: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        reg = Regularization.of(regularization)
        if reg is not None and reg.embedding:
            raise ValueError("speech reads acoustic features, not words: embedding dropout does not apply")
        self.rnn = DropoutLSTM(input_size, hidden_size, num_layers, dropout, impl=backbone, regularization=reg)
        self.head = nn.Linear(hidden_size, num_classes)
        init_uniform_(self, init_scale)
        self.samples: list[list[str]] = []  # (reference, predicted) phone sequences of a few test utterances
        self.frames_out: dict[str, list[tuple[str, str]]] = {}  # test stream -> every utterance's (ref, hyp) frames
        self.register_buffer("fold", torch.tensor(fold_ids + [-1]), persistent=False)  # [-1]: IGNORE -> -1
        self.counts = nn.ModuleDict()
        self._add_counts(("train", "valid", "test", "train_eval"))

    def _add_counts(self, stages) -> None:
        for stage in stages:
            for name in COUNTS:
                if f"{stage}_{name}" not in self.counts:
                    self.counts[f"{stage}_{name}"] = SumMetric().to(self.fold.device)

    def use_test_streams(self, names: list[str]) -> None:
        super().use_test_streams(names)
        self._add_counts(names)

    def forward(self, feats: Tensor) -> Tensor:
        """(T, B, F) padded features -> (T, B, classes) logits.

        The LSTM runs left to right, so trailing padding cannot reach a real frame's output: the
        padded batch gives exactly the outputs of each utterance alone (tested), and on CPU it is
        6-7x faster than a PackedSequence (scripts/bench_packed_vs_padded.py). Padding is then
        masked out of loss and metrics.
        """
        y, _ = self.rnn(feats)
        return self.head(y)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits = self(batch["feats"])
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        # Score in the folded classes; frames whose reference has no class (padding, TIMIT's q) drop out.
        ref = self.fold[labels.clamp_min(-1)]  # IGNORE (-100) -> -1 -> the trailing -1
        hyp = self.fold[logits.argmax(-1)]
        scored = ref >= 0
        self.counts[f"{stage}_correct"].update((hyp == ref)[scored].sum())
        self.counts[f"{stage}_frames"].update(scored.sum())
        refs, hyps, smoothed = [], [], []
        score_names = self.hparams.score_names

        def names(i: int) -> str:  # a predicted class left out of scoring (TIMIT's q) shows as "-"
            return score_names[i] if i >= 0 else "-"

        for b in range(labels.size(1)):
            keep = scored[:, b]
            r, frames = collapse(ref[keep, b].tolist()), hyp[keep, b].tolist()
            if stage in self.test_streams and stage != "train_eval":  # every scored frame, in the scoring classes
                self.frames_out.setdefault(stage, []).append(
                    (" ".join(map(names, ref[keep, b].tolist())), " ".join(map(names, frames))))
            if r:
                # A class left out of scoring (TIMIT's q) is dropped from the predicted phones as from
                # the reference's (`keep` above), as TIMIT is scored: else each predicted q run is an
                # inserted phone no reference holds. Frame accuracy still counts those frames wrong.
                spelled = [x for x in frames if x >= 0]
                refs.append(" ".join(map(str, r)))
                hyps.append(" ".join(map(str, collapse(spelled))) or "<none>")
                decoded = drop_short_runs(spelled, self.hparams.min_phone_frames)
                smoothed.append(" ".join(map(str, decoded)) or "<none>")
        if stage == self.test_streams[0] and len(self.samples) < self.num_samples:
            self.samples += [[" ".join(names(int(i)) for i in r.split()), " ".join(names(int(i)) for i in h.split())
                              if h != "<none>" else h] for r, h in zip(refs, hyps)][: self.num_samples - len(self.samples)]
        if refs:
            out = jiwer.process_words(refs, hyps)
            self.counts[f"{stage}_edits"].update(out.substitutions + out.deletions + out.insertions)
            self.counts[f"{stage}_phones"].update(out.hits + out.substitutions + out.deletions)
            out = jiwer.process_words(refs, smoothed)
            self.counts[f"{stage}_edits_smoothed"].update(out.substitutions + out.deletions + out.insertions)
        return loss

    def _log_epoch(self, stage: str) -> None:
        c = {name: self.counts[f"{stage}_{name}"] for name in COUNTS}
        if c["frames"].update_count:
            self.log(f"{stage}_frame_acc", c["correct"].compute() / c["frames"].compute().clamp_min(1),
                     prog_bar=stage != "test", add_dataloader_idx=False)
            for name, edits in (("per", c["edits"]), ("per_smoothed", c["edits_smoothed"])):
                self.log(f"{stage}_{name}", edits.compute() / c["phones"].compute().clamp_min(1),
                         add_dataloader_idx=False)
            if stage in self.test_streams:  # how many frames the test scored: each once, on any number of ranks
                self.log(f"{stage}_frames", c["frames"].compute().float(), add_dataloader_idx=False)
        for metric in c.values():
            metric.reset()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if log_due(self._trainer, batch_idx):
            self.log_loss(loss, loss)  # the mean per frame is what trains
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("valid")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        # `train_*` is measured while training, dropout masks on; `train_eval_*` scores the final
        # model on the training set without dropout, the like-for-like number beside `test_*`.
        self._step(batch, self.test_streams[dataloader_idx])

    def on_test_epoch_start(self) -> None:
        self.samples: list[list[str]] = []
        self.frames_out = {}

    def on_test_epoch_end(self) -> None:
        for stage in self.test_streams:
            self._log_epoch(stage)
            self._write_frames(stage, text_metrics.gather(self.frames_out.pop(stage, [])))
        # A few test utterances' phone sequences beside their reference: <run>/samples/test.txt, a W&B table.
        rows = text_metrics.gather(self.samples)
        text_metrics.log_samples(self, f"{self.output_prefix}test", ["reference", "predicted"], rows[: self.num_samples])

    @classmethod
    @torch.no_grad()
    def ensemble_eval(cls, members: list["FrameClassifier"], dm) -> dict[str, tuple[list[float], float]]:
        """Frame accuracy on the test set of each member and of the average of their frame
        posteriors (the usual acoustic-model ensemble), in the scoring classes."""
        correct, frames = torch.zeros(len(members) + 1), 0
        fold = members[0].fold
        for batch in dm.test_dataloader()[0]:
            probs = [m(batch["feats"]).float().softmax(-1) for m in members]
            probs.append(torch.stack(probs).mean(0))
            ref = fold[batch["labels"].clamp_min(-1)]
            scored = ref >= 0
            for j, p in enumerate(probs):
                correct[j] += (fold[p.argmax(-1)] == ref)[scored].sum()
            frames += int(scored.sum())
        acc = (correct / max(frames, 1)).tolist()
        return {"test_frame_acc": (acc[:-1], acc[-1])}

    def _write_frames(self, stage: str, rows: list[tuple[str, str]]) -> None:
        """<run>/outputs/<prefix><stage>.jsonl: per utterance, the reference and predicted label of
        every scored frame (space-separated scoring classes), in test order. Rank 0."""
        if not rows or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        path = Path(self.trainer.default_root_dir) / "outputs" / f"{self.output_prefix}{stage}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = f"{self.output_prefix}{stage}"
        path.write_text("".join(json.dumps({"stream": stream, "key": str(k), "ref_frames": r, "hyp_frames": h}) + "\n"
                                for k, (r, h) in enumerate(rows)), encoding="utf-8")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
