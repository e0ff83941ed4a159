"""Image captioning (the paper's Sec. 4.4; Show and Tell, Vinyals et al. 2014).

    CNN features --linear--> x_-1 ┐
    <bos> w1 .. wn --emb--> x_0.. ┴--> DropoutLSTM --> linear --> softmax: w1 .. wn <eos>

The image is the decoder's first input and never again; the word after <bos> is predicted from
the output at <bos>. Dropout acts on the LSTM's inputs (image and word embeddings) and its output
to the softmax, never on h -> h. The CNN is frozen: its features come cached from the DataModule.

Scores, per image against all its reference captions: BLEU-1..4 (sacrebleu, corpus level) for
beam search and greedy decoding, and perplexity per word (<eos> included) over every reference
caption, teacher-forced.

With `data.finetune: true` the CNN is trained too (its own copy, at `encoder_lr`); the results
row's `encoder` column then ends in ", fine-tuned".
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import SumMetric

from benchmark import decoding, text_metrics
from benchmark.backbone import DropoutLSTM, Impl, init_uniform_
from benchmark.callbacks import log_due
from datamodules.image_encoders import build_encoder
from datamodules.vocab import WordVocab

log = logging.getLogger(__name__)


class Captioner(L.LightningModule):
    monitor = ("valid_ppl", "min")
    result_keys = ("train_ppl", "valid_", "test_")

    def __init__(
        self,
        feat_dim: int,
        itos: list[str],
        test_streams: list[str] = ("test",),
        encoder: str = "",
        emb_size: int = 512,
        hidden_size: int = 512,
        num_layers: int = 1,
        dropout: float = 0.0,
        init_scale: float = 0.08,
        backbone: Impl = "fused",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        beam: int = 3,
        length_alpha: float = 0.0,
        max_len: int = 20,
        num_samples: int = 5,
        finetune: list | None = None,
        encoder_lr: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab = WordVocab(itos)
        # Fine-tuning: the model owns a copy of the CNN, built (name, pretrained, weights) as the
        # DataModule built it; frozen (the default), batches carry cached features instead.
        self.cnn = build_encoder(*finetune).net if finetune else None
        self.img_proj = nn.Linear(feat_dim, emb_size)
        self.emb = nn.Embedding(len(self.vocab), emb_size)
        self.rnn = DropoutLSTM(emb_size, hidden_size, num_layers, dropout, impl=backbone)
        self.head = nn.Linear(hidden_size, len(self.vocab))
        for module in (self.img_proj, self.emb, self.rnn, self.head):
            init_uniform_(module, init_scale)  # the decoder only: a fine-tuned CNN keeps its ImageNet weights
        self.test_streams = list(test_streams)
        self.sums = nn.ModuleDict({f"{s}_{k}": SumMetric() for s in ("train", "valid", *self.test_streams)
                                   for k in ("nll", "words")})
        self.outputs: dict[str, list[tuple]] = {}
        self.bleu_signature = ""

    def row_info(self) -> dict[str, str]:
        return {"encoder": self.hparams.encoder, "bleu_signature": self.bleu_signature}

    # -- model ------------------------------------------------------------------------------------------
    def features(self, batch: dict) -> Tensor:
        return batch["feats"] if self.cnn is None else self.cnn(batch["images"])

    def forward(self, feats: Tensor, cap_in: Tensor, cap_image: Tensor) -> Tensor:
        """Teacher forcing: (T, N, V) logits; row n describes image cap_image[n]."""
        img = self.img_proj(feats)[cap_image].unsqueeze(0)  # (1, N, E)
        y, _ = self.rnn(torch.cat([img, self.emb(cap_in)]))  # (1 + T, N, H)
        return self.head(y[1:])  # the output at the image step predicts nothing

    def start(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """The LSTM state after reading the image: where every caption starts."""
        _, state = self.rnn(self.img_proj(feats).unsqueeze(0))
        return state

    def step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        y, state = self.rnn(self.emb(tokens).unsqueeze(0), state)
        logp = F.log_softmax(self.head(y[0]).float(), dim=-1)
        logp[:, [self.vocab.pad, self.vocab.bos]] = float("-inf")
        return logp, state

    def caption(self, feats: Tensor, beam: int) -> list[str]:
        limit = torch.full((feats.size(0),), self.hparams.max_len, device=feats.device)
        v = self.vocab
        if beam == 1:
            ids = decoding.greedy(self.step, self.start(feats), v.bos, v.eos, limit)
        else:
            ids = decoding.beam_search(self.step, self.start(feats), v.bos, v.eos, limit, beam, self.hparams.length_alpha)
        return [" ".join(v.decode(seq)) for seq in ids]

    # -- training -----------------------------------------------------------------------------------------
    def _loss(self, batch: dict, stage: str) -> Tensor:
        logits = self(self.features(batch), batch["cap_in"], batch["cap_image"])
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch["cap_out"].flatten(),
                              ignore_index=self.vocab.pad, reduction="sum")
        self.sums[f"{stage}_nll"].update(nll.detach())
        self.sums[f"{stage}_words"].update(batch["num_tokens"])
        return nll / batch["num_tokens"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._loss(batch, "train")
        if log_due(self._trainer, batch_idx):
            self.log("train_loss", loss, prog_bar=True, batch_size=batch["cap_image"].numel())
        return loss

    def _log_ppl(self, stage: str) -> None:
        nll, words = self.sums[f"{stage}_nll"], self.sums[f"{stage}_words"]
        if words.update_count:
            self.log(f"{stage}_ppl", (nll.compute() / words.compute().clamp_min(1)).exp(), prog_bar=stage == "valid")
        nll.reset()
        words.reset()

    def on_train_epoch_end(self) -> None:
        self._log_ppl("train")

    def on_train_epoch_start(self) -> None:
        if self.cnn is not None:
            self.cnn.eval()  # BatchNorm keeps ImageNet's statistics: caption batches are small and skewed

    def configure_optimizers(self):
        hp = self.hparams
        cnn = set(self.cnn.parameters()) if self.cnn is not None else set()
        groups = [{"params": [p for p in self.parameters() if p not in cnn], "lr": hp.lr}]
        if cnn:
            groups.append({"params": list(cnn), "lr": hp.encoder_lr})
        return torch.optim.Adam(groups, weight_decay=hp.weight_decay)

    # -- evaluation ---------------------------------------------------------------------------------------
    def _collect(self, batch: dict, stage: str, beams: tuple[int, ...]) -> None:
        self._loss(batch, stage)
        feats = self.features(batch)
        hyps = [self.caption(feats, b) for b in beams]
        self.outputs.setdefault(stage, []).extend(zip(batch["refs"], *hyps))

    def _score(self, stage: str, beams: tuple[int, ...], orders: tuple[int, ...]) -> None:
        self._log_ppl(stage)
        rows = text_metrics.gather(self.outputs.pop(stage, []))
        if not rows:
            return
        refs = [r[0] for r in rows]
        for j, beam in enumerate(beams):
            hyps = [r[1 + j] for r in rows]
            suffix = "_greedy" if beam == 1 else ""
            for n in orders:
                score, sig = text_metrics.bleu(hyps, refs, max_order=n)
                self.log(f"{stage}_bleu{n}{suffix}", score.score, prog_bar=stage == "valid" and n == 4)
                if n == 4:
                    self.bleu_signature = sig
        if stage.startswith("test") or not self.trainer.sanity_checking:
            cols = ["references", *("greedy" if b == 1 else f"beam {b}" for b in beams)]
            name = stage if stage.startswith("test") else f"{stage}-epoch{self.current_epoch:03d}"
            text_metrics.log_samples(self, name, cols, [[" | ".join(r[0]), *r[1:]]
                                                        for r in text_metrics.spread(rows, self.hparams.num_samples)])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch, "valid", (1,))

    def on_validation_epoch_end(self) -> None:
        self._score("valid", (1,), (4,))

    def _test_beams(self) -> tuple[int, ...]:
        return (self.hparams.beam, 1) if self.hparams.beam > 1 else (1,)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, self.test_streams[dataloader_idx], self._test_beams())

    def on_test_epoch_end(self) -> None:
        for stage in self.test_streams:
            self._score(stage, self._test_beams(), (1, 2, 3, 4))
        if self.trainer.is_global_zero:
            log.info("sacrebleu BLEU-4 signature: %s", self.bleu_signature)
