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

import torch
from torch import Tensor, nn

from datamodules.image_encoders import build_encoder
from datamodules.vocab import WordVocab
from tasks.nn import decoding, text_metrics
from tasks.nn.backbone import DropoutLSTM, Impl, init_uniform_
from tasks.nn.regularizers import Regularization, WordEmbedding
from tasks.text_generation import Decoded, TextGenerator, beam_column, score_names


class Captioner(TextGenerator):
    targets_key = "cap_out"

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
        lr_decay: float = 1.0,
        decay_after: int = 1000,
        beam: int = 3,
        length_alpha: float = 0.0,
        max_len: int = 20,
        num_samples: int = 5,
        valid_decode: bool | int = True,
        finetune: list | None = None,
        encoder_lr: float = 1e-4,
        regularization: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab = WordVocab(itos)
        # Fine-tuning: the model owns a copy of the CNN, built (name, pretrained, weights) as the
        # DataModule built it; frozen (the default), batches carry cached features instead.
        self.cnn = build_encoder(*finetune).net if finetune else None
        self.img_proj = nn.Linear(feat_dim, emb_size)
        reg = Regularization.of(regularization) or Regularization()
        self.emb = WordEmbedding(len(self.vocab), emb_size, drop_types=reg.embedding)
        self.decoder = DropoutLSTM(emb_size, hidden_size, num_layers, dropout, impl=backbone, regularization=reg)
        self.head = nn.Linear(hidden_size, len(self.vocab))
        for module in (self.img_proj, self.emb, self.decoder, self.head):
            init_uniform_(module, init_scale)  # the decoder only: a fine-tuned CNN keeps its ImageNet weights
        self.init_scoring(test_streams)

    def row_info(self) -> dict[str, str]:
        return {"encoder": self.hparams.encoder, **super().row_info()}

    # -- model ------------------------------------------------------------------------------------------
    def features(self, batch: dict) -> Tensor:
        return batch["feats"] if self.cnn is None else self.cnn(batch["images"])

    def forward(self, feats: Tensor, cap_in: Tensor, cap_image: Tensor) -> Tensor:
        """Teacher forcing: (T, N, V) logits; row n describes image cap_image[n]."""
        img = self.img_proj(feats)[cap_image].unsqueeze(0)  # (1, N, E)
        y, _ = self.decoder(torch.cat([img, self.emb(cap_in)]))  # (1 + T, N, H)
        return self.head(y[1:])  # the output at the image step predicts nothing

    def _logits(self, batch: dict) -> Tensor:
        return self(self.features(batch), batch["cap_in"], batch["cap_image"])

    def start(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """The LSTM state after reading the image: where every caption starts."""
        _, state = self.decoder(self.img_proj(feats).unsqueeze(0))
        return state

    def to_text(self, ids: list[int]) -> str:
        return " ".join(self.vocab.decode(ids))

    def caption(self, feats: Tensor, beam: int) -> list[str]:
        """Captions for (N, feat_dim) image features; beam 1 is greedy decoding. Always the evaluation network."""
        limit = torch.full((feats.size(0),), self.hparams.max_len, device=feats.device)
        with decoding.eval_mode(self):
            return [self.to_text(seq) for seq in self.decode(self.start(feats), limit, beam)]

    def start_of(self, batch: dict) -> tuple[tuple[Tensor, Tensor], Tensor, list[Decoded]]:
        """A test batch's decoder start state, output-length limits and rows (references)."""
        state = self.start(self.features(batch))
        limit = torch.full((state[0].size(1),), self.hparams.max_len, device=state[0].device)
        return state, limit, [Decoded("", list(refs), ()) for refs in batch["refs"]]

    def headline_scores(self, stage: str, rows: list[Decoded]) -> dict[str, float]:
        hyps, refs = [r.hyps[0] for r in rows], [r.refs for r in rows]
        return {f"{stage}_bleu4": text_metrics.bleu(hyps, refs, max_order=4)[0].score}

    def on_train_epoch_start(self) -> None:
        if self.cnn is not None:
            self.cnn.eval()  # BatchNorm keeps ImageNet's statistics: caption batches are small and skewed

    def configure_optimizers(self):
        hp = self.hparams
        cnn = set(self.cnn.parameters()) if self.cnn is not None else set()
        groups = [{"params": [p for p in self.parameters() if p not in cnn], "lr": hp.lr}]
        if cnn:
            groups.append({"params": list(cnn), "lr": hp.encoder_lr})
        opt = torch.optim.Adam(groups, weight_decay=hp.weight_decay)
        # Epoch e (0-based) runs at lr / decay^max(0, e + 1 - decay_after), as in the PTB task.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: hp.lr_decay ** -max(0, e + 1 - hp.decay_after))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- evaluation ---------------------------------------------------------------------------------------
    def _collect(self, batch: dict, stage: str, beams: tuple[int, ...]) -> None:
        self._loss(batch, stage)
        state, limit, rows = self.start_of(batch)  # the image is read once for every beam size
        hyps = [[self.to_text(seq) for seq in self.decode(state, limit, b)] for b in beams]
        self.outputs.setdefault(stage, []).extend(Decoded("", r.refs, h) for r, *h in zip(rows, *hyps))

    def _score(self, stage: str, rows: list[Decoded], beams: tuple[int, ...]) -> None:
        refs = [r.refs for r in rows]
        if stage.startswith("test"):
            self.write_outputs(stage, [r.hyps[0] for r in rows], refs)
        orders = (1, 2, 3, 4) if stage.startswith("test") else (4,)
        for j, beam in enumerate(beams):
            hyps = [r.hyps[j] for r in rows]
            for n in orders:
                score, sig = text_metrics.bleu(hyps, refs, max_order=n)
                for name in score_names(stage, f"bleu{n}", beam, beams):
                    self.log(name, score.score, prog_bar=stage == "valid")
                if n == 4:
                    self.bleu_signatures[stage] = sig
        self.write_samples(stage, ["references", *map(beam_column, beams)], [[" | ".join(r.refs), *r.hyps] for r in rows])
