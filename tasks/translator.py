"""Sequence-to-sequence translation (the paper's Sec. 4.3; Sutskever, Vinyals & Le 2014).

    reversed source  --emb--> encoder DropoutLSTM --(h, c)--> decoder DropoutLSTM --> linear --> softmax
                                                        <bos> y1 .. yn --emb--^

The decoder starts from the encoder's final (h, c), layer by layer, so both have the same depth
and width. Dropout sits only on the non-recurrent connections of both LSTMs (the embeddings going
in, between layers, the decoder's output going to the softmax); the encoder's own output is unused.

Scores: perplexity per target word (the <eos> counts as a word), and BLEU/chrF with sacrebleu on
detokenised output against the raw references, for greedy decoding and for beam search
(benchmark/decoding.py documents the search and its length normalisation).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from sacremoses import MosesDetokenizer
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence
from torchmetrics import SumMetric

from benchmark import decoding, text_metrics
from benchmark.backbone import DropoutLSTM, Impl, init_uniform_
from benchmark.callbacks import log_due
from datamodules.vocab import WordVocab

log = logging.getLogger(__name__)


def group_by_source(rows: list[tuple]) -> list[tuple]:
    """(source, reference, *hypotheses) per pair -> one row per distinct source with every reference
    of it: Tatoeba gives many sentences several translations ("Get lost!": "Dégage !", "Va au
    diable !", ...), and scoring one hypothesis against each alone would punish every right answer
    but one. The model's output for a source does not depend on which pair it came from."""
    grouped: dict[str, tuple] = {}
    for src, ref, *hyps in rows:
        if src in grouped:
            grouped[src][1].append(ref)
        else:
            grouped[src] = (src, [ref], *hyps)
    return list(grouped.values())


class Translator(L.LightningModule):
    monitor = ("valid_ppl", "min")
    result_keys = ("train_ppl", "valid_", "test_")

    def __init__(
        self,
        src_vocab_size: int,
        tgt_itos: list[str],
        tgt_lang: str = "fr",
        test_streams: list[str] = ("test",),
        multi_ref_streams: list[str] = (),
        emb_size: int = 256,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        init_scale: float = 0.08,
        backbone: Impl = "fused",
        optimizer: str = "adam",
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        decay_after: int = 1000,
        beam: int = 5,
        length_alpha: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        max_len: int = 200,
        num_samples: int = 5,
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.save_hyperparameters()
        self.vocab = WordVocab(tgt_itos)
        self.src_emb = nn.Embedding(src_vocab_size, emb_size)
        self.tgt_emb = nn.Embedding(len(self.vocab), emb_size)
        self.encoder = DropoutLSTM(emb_size, hidden_size, num_layers, dropout, impl=backbone)
        self.decoder = DropoutLSTM(emb_size, hidden_size, num_layers, dropout, impl=backbone)
        self.head = nn.Linear(hidden_size, len(self.vocab))
        init_uniform_(self, init_scale)  # Sutskever et al.: uniform in [-0.08, 0.08]
        self.detok = MosesDetokenizer(lang=tgt_lang)
        self.test_streams = list(test_streams)
        self.sums = nn.ModuleDict({f"{s}_{k}": SumMetric() for s in ("train", "valid", *self.test_streams)
                                   for k in ("nll", "words")})
        self.outputs: dict[str, list[tuple[str, ...]]] = {}
        self.bleu_signature = ""

    # -- model ------------------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(S, B) source ids -> the encoder's final (h, c), each (layers, B, hidden)."""
        x = self.src_emb(src)
        if int(src_lengths.min()) != x.size(0):  # mixed lengths (not bucketed): stop each at its own end
            x = pack_padded_sequence(x, src_lengths.cpu(), enforce_sorted=False)
        _, state = self.encoder(x)
        return state

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: (T, B, V) logits for the next target word at every position."""
        y, _ = self.decoder(self.tgt_emb(tgt_in), self.encode(src, src_lengths))
        return self.head(y)

    def step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One decoding step for (N,) previous words; <pad> and <bos> are never generated."""
        y, state = self.decoder(self.tgt_emb(tokens).unsqueeze(0), state)
        logp = F.log_softmax(self.head(y[0]).float(), dim=-1)
        logp[:, [self.vocab.pad, self.vocab.bos]] = float("-inf")
        return logp, state

    # -- training -----------------------------------------------------------------------------------------
    def _loss(self, batch: dict, stage: str) -> Tensor:
        logits = self(batch["src"], batch["src_lengths"], batch["tgt_in"])
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch["tgt_out"].flatten(),
                              ignore_index=self.vocab.pad, reduction="sum")
        self.sums[f"{stage}_nll"].update(nll.detach())
        self.sums[f"{stage}_words"].update(batch["num_tokens"])
        return nll / batch["num_tokens"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._loss(batch, "train")
        if log_due(self._trainer, batch_idx):
            self.log("train_loss", loss, prog_bar=True, batch_size=batch["src"].size(1))
        return loss

    def _log_ppl(self, stage: str) -> None:
        nll, words = self.sums[f"{stage}_nll"], self.sums[f"{stage}_words"]
        if words.update_count:
            self.log(f"{stage}_ppl", (nll.compute() / words.compute().clamp_min(1)).exp(), prog_bar=stage == "valid")
        nll.reset()
        words.reset()

    def on_train_epoch_end(self) -> None:
        self._log_ppl("train")

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr)
        # Epoch e (0-based) runs at lr / decay^max(0, e + 1 - decay_after), as in the PTB task.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: hp.lr_decay ** -max(0, e + 1 - hp.decay_after))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def row_info(self) -> dict[str, str]:
        """Extra results-row columns: how BLEU was computed."""
        return {"bleu_signature": self.bleu_signature}

    # -- evaluation ---------------------------------------------------------------------------------------
    def translate(self, src: Tensor, src_lengths: Tensor, beam: int) -> list[str]:
        """Detokenised translations; beam 1 is greedy decoding."""
        hp = self.hparams
        limit = (src_lengths.float() * hp.max_len_a + hp.max_len_b).long().clamp(1, hp.max_len).to(src.device)
        state = self.encode(src, src_lengths)
        if beam == 1:
            ids = decoding.greedy(self.step, state, self.vocab.bos, self.vocab.eos, limit)
        else:
            ids = decoding.beam_search(self.step, state, self.vocab.bos, self.vocab.eos, limit, beam, hp.length_alpha)
        return [self.detok.detokenize(self.vocab.decode(seq)) for seq in ids]

    def _collect(self, batch: dict, stage: str, beams: tuple[int, ...]) -> None:
        self._loss(batch, stage)
        hyps = [self.translate(batch["src"], batch["src_lengths"], b) for b in beams]
        self.outputs.setdefault(stage, []).extend(zip(batch["src_text"], batch["ref_text"], *hyps))

    def _score(self, stage: str, beams: tuple[int, ...]) -> None:
        self._log_ppl(stage)
        rows = text_metrics.gather(self.outputs.pop(stage, []))
        if not rows:
            return
        if stage in self.hparams.multi_ref_streams:
            rows = group_by_source(rows)
        refs = [r[1] if isinstance(r[1], list) else [r[1]] for r in rows]
        for j, beam in enumerate(beams):
            hyps = [r[2 + j] for r in rows]
            suffix = "_greedy" if beam == 1 else ""
            score, self.bleu_signature = text_metrics.bleu(hyps, refs)
            self.log(f"{stage}_bleu{suffix}", score.score, prog_bar=stage == "valid")
            self.log(f"{stage}_chrf{suffix}", text_metrics.chrf(hyps, refs))
        if stage.startswith("test") or not self.trainer.sanity_checking:
            cols = ["source", "references", *("greedy" if b == 1 else f"beam {b}" for b in beams)]
            name = stage if stage.startswith("test") else f"{stage}-epoch{self.current_epoch:03d}"
            samples = [[r[0], " | ".join(r[1]) if isinstance(r[1], list) else r[1], *r[2:]]
                       for r in text_metrics.spread(rows, self.hparams.num_samples)]
            text_metrics.log_samples(self, name, cols, samples)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch, "valid", (1,))  # greedy only: beam search every epoch costs too much

    def on_validation_epoch_end(self) -> None:
        self._score("valid", (1,))

    def _test_beams(self) -> tuple[int, ...]:
        return (self.hparams.beam, 1) if self.hparams.beam > 1 else (1,)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, self.test_streams[dataloader_idx], self._test_beams())

    def on_test_epoch_end(self) -> None:
        for stage in self.test_streams:
            self._score(stage, self._test_beams())
        if self.trainer.is_global_zero:
            log.info("sacrebleu BLEU signature: %s", self.bleu_signature)
