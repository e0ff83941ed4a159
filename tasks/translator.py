"""Sequence-to-sequence translation (the paper's Sec. 4.3; Sutskever, Vinyals & Le 2014).

    reversed source  --emb--> encoder DropoutLSTM --(h, c)--> decoder DropoutLSTM --> linear --> softmax
                                                        <bos> y1 .. yn --emb--^

The decoder starts from the encoder's final (h, c), layer by layer, so both have the same depth
and width. Dropout sits only on the non-recurrent connections of both LSTMs (the embeddings going
in, between layers, the decoder's output going to the softmax). In the paper's model the encoder's
own outputs are unused; with `attention: true` (not the paper's; tasks/nn/attention.py) the
decoder's outputs attend over them before the softmax.

Scores: perplexity per target word (the <eos> counts as a word), and BLEU/chrF with sacrebleu on
detokenised output against the raw references, for greedy decoding and for beam search
(tasks/nn/decoding.py documents the search and its length normalisation). `bleu_tok` is BLEU on
Moses-tokenized text, as the paper's figures were computed: only it is compared with the paper.
An <unk> in the output counts as one wrong word in both (tasks/nn/text_metrics.py), and Moses
places it as it would a word ("l'<unk>" as "l'homme"; `detokenize`).
"""

from __future__ import annotations

import math

import torch
from sacremoses import MosesDetokenizer
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from datamodules.vocab import WordVocab
from tasks.nn import decoding, text_metrics
from tasks.nn.attention import GlobalAttention, source_mask
from tasks.nn.backbone import DropoutLSTM, Impl, init_uniform_
from tasks.nn.errors import ConfigError
from tasks.nn.references import UNK, UNK_SLOT
from tasks.nn.regularizers import Regularization, WordEmbedding
from tasks.text_generation import Decoded, TextGenerator, beam_column, score_names


def group_by_source(rows: list[Decoded]) -> list[Decoded]:
    """One item per pair -> one per distinct source with every reference of it: Tatoeba gives many
    sentences several translations ("Get lost!": "Dégage !", "Va au diable !", ...), and scoring
    one hypothesis against each alone would punish every right answer but one. The model's output
    for a source does not depend on which pair it came from."""
    grouped: dict[str, Decoded] = {}
    for row in rows:
        if row.source in grouped:
            grouped[row.source].refs.extend(row.refs)
        else:
            grouped[row.source] = Decoded(row.source, list(row.refs), row.hyps)
    return list(grouped.values())


def detokenize(detok: MosesDetokenizer, words: list[str]) -> str:
    """Moses-detokenised words, each <unk> placed as an ordinary word would be: "l' <unk>" -> "l'<unk>"
    as "l' homme" -> "l'homme" (Moses joins an elision only to a word starting with a letter)."""
    if any(UNK_SLOT in w for w in words):  # a real word holding the stand-in would turn into <unk>
        return detok.detokenize(words)
    text = detok.detokenize([UNK_SLOT if w == UNK else w for w in words])
    return text.replace(UNK_SLOT, UNK)


def decay_factor(epochs_done: float, decay: float, after: float, every: float) -> float:
    """The learning rate's multiplier after `epochs_done` (fractional) epochs: 1 for the first
    `after` epochs, then divided by `decay` at their end and again every `every` epochs."""
    if epochs_done < after:
        return 1.0
    return decay ** -(int((epochs_done - after) / every + 1e-9) + 1)


class Translator(TextGenerator):

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
        loss_scale: str | None = None,
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        decay_after: int = 1000,
        decay_every: float = 1.0,
        beam: int = 5,
        length_alpha: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        max_len: int = 200,
        num_samples: int = 5,
        valid_decode: bool | int = True,
        regularization: dict[str, float] | None = None,
        attention: bool = False,
        attention_dropout_at: str = "inputs",
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if loss_scale not in (None, "word", "sentence"):
            raise ValueError(f"loss_scale must be 'word' or 'sentence', got {loss_scale!r}")
        if decay_every <= 0:
            raise ValueError(f"decay_every must be a positive number of epochs, got {decay_every!r}")
        if attention_dropout_at not in ("inputs", "output"):
            raise ValueError(f"attention_dropout_at must be 'inputs' or 'output', got {attention_dropout_at!r}")
        if attention_dropout_at == "output" and not attention:
            raise ValueError("attention_dropout_at: output places dropout around the attention; it needs attention: true")
        self.save_hyperparameters()
        # Unless set: Adam's step does not depend on the loss's scale, plain SGD's does (see _loss).
        self.loss_scale = loss_scale or ("sentence" if optimizer == "sgd" else "word")
        self.vocab = WordVocab(tgt_itos)
        reg = Regularization.of(regularization) or Regularization()
        self.src_emb = WordEmbedding(src_vocab_size, emb_size, drop_types=reg.embedding)
        self.emb = WordEmbedding(len(self.vocab), emb_size, drop_types=reg.embedding)
        # Where the last connection's dropout goes with attention: on the LSTMs' outputs that the
        # attention reads ("inputs": the encoder's memory and the decoder's outputs, so both sides
        # of every score are dropped), or on the attention's output alone, where it reaches the
        # softmax ("output", as OpenNMT-py drops; the encoder's top connection, unused
        # in the paper's model, stays undropped).
        clean = attention and attention_dropout_at == "output"
        self.encoder = DropoutLSTM(emb_size, hidden_size, num_layers, dropout, impl=backbone, regularization=reg,
                                   output_dropout=not clean)
        self.decoder = DropoutLSTM(emb_size, hidden_size, num_layers, dropout, impl=backbone, regularization=reg,
                                   output_dropout=not clean)
        self.attention = GlobalAttention(hidden_size) if attention else None
        self.head = nn.Linear(hidden_size, len(self.vocab))
        init_uniform_(self, init_scale)  # Sutskever et al.: uniform in [-0.08, 0.08]
        self.detok = MosesDetokenizer(lang=tgt_lang)
        self.init_scoring(test_streams)

    # -- model ------------------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, ...]:
        """(S, B) source ids -> the decoder's start state: the encoder's final (h, c), each (layers, B,
        hidden), and with attention also the source's keys and memory (S, B, hidden) and mask (S, B).
        Every part has the batch in dim 1, so a beam search reorders them all alike."""
        x = self.src_emb(src)
        mixed = int(src_lengths.min()) != x.size(0)
        if mixed:  # not bucketed: stop each sentence at its own end
            x = pack_padded_sequence(x, src_lengths.cpu(), enforce_sorted=False)
        memory, state = self.encoder(x)
        if self.attention is None:
            return state
        if mixed:
            memory, _ = pad_packed_sequence(memory, total_length=src.size(0))
        # On the source's device: the lengths may stay on the CPU (`translate`, packing wants them there).
        return (*state, self.attention.keys(memory), memory, source_mask(src_lengths.to(src.device), src.size(0)))

    def attend(self, y: Tensor, state: tuple[Tensor, ...]) -> Tensor:
        """The decoder's outputs (T, N, H) as the output layer reads them."""
        if self.attention is None:
            return y
        out = self.attention(y, *state[2:])
        return out if self.decoder.output_dropout else self.decoder.drop_output(out)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: (T, B, V) logits for the next target word at every position."""
        start = self.encode(src, src_lengths)
        y, _ = self.decoder(self.emb(tgt_in), start[:2])
        return self.head(self.attend(y, start))

    def step(self, tokens: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        y, (h, c) = self.decoder(self.emb(tokens).unsqueeze(0), state[:2])
        return self.next_word_logp(self.attend(y, state)[0]), (h, c, *state[2:])

    def _logits(self, batch: dict) -> Tensor:
        return self(batch["src"], batch["src_lengths"], batch["tgt_in"])

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr)
        if hp.decay_every == 1:
            # Epoch e (0-based) runs at lr / decay^max(0, e + 1 - decay_after), as in the PTB task.
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: hp.lr_decay ** -max(0, e + 1 - hp.decay_after))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        # Sutskever et al.: "after 5 epochs, we begun halving the learning rate every half epoch".
        # Set up the training batches so they can be counted (estimated_stepping_batches skips
        # this when max_steps is set, and an epoch's length is needed all the same).
        self.trainer.fit_loop.setup_data()
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            raise ConfigError("model.decay_every counts epochs in steps: it needs training data of known length")
        per_epoch = max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: decay_factor(step / per_epoch, hp.lr_decay, hp.decay_after, hp.decay_every))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation ---------------------------------------------------------------------------------------
    def length_limit(self, src_lengths: Tensor) -> Tensor:
        hp = self.hparams
        return (src_lengths.float() * hp.max_len_a + hp.max_len_b).long().clamp(1, hp.max_len)

    def to_text(self, ids: list[int]) -> str:
        return detokenize(self.detok, self.vocab.decode(ids))

    def translate(self, src: Tensor, src_lengths: Tensor, beam: int) -> list[str]:
        """Detokenised translations; beam 1 is greedy decoding. Always the evaluation network."""
        limit = self.length_limit(src_lengths).to(src.device)
        with decoding.eval_mode(self):
            return [self.to_text(seq) for seq in self.decode(self.encode(src, src_lengths), limit, beam)]

    def start_of(self, batch: dict) -> tuple[tuple[Tensor, ...], Tensor, list[Decoded]]:
        """A test batch's decoder start state, output-length limits and rows (source, reference)."""
        limit = self.length_limit(batch["src_lengths"]).to(batch["src"].device)
        rows = [Decoded(src, [ref], ()) for src, ref in zip(batch["src_text"], batch["ref_text"])]
        return self.encode(batch["src"], batch["src_lengths"]), limit, rows

    def _collect(self, batch: dict, stage: str, beams: tuple[int, ...]) -> None:
        self._loss(batch, stage)
        state, limit, rows = self.start_of(batch)  # the encoder runs once for every beam size
        hyps = [[self.to_text(seq) for seq in self.decode(state, limit, b)] for b in beams]
        self.outputs.setdefault(stage, []).extend(
            Decoded(r.source, r.refs, h) for r, *h in zip(rows, *hyps))

    def headline_scores(self, stage: str, rows: list[Decoded]) -> dict[str, float]:
        """The stage's BLEU of each row's first hypothesis, and BLEU on Moses tokens (the paper's)."""
        rows = group_by_source(rows) if stage in self.hparams.multi_ref_streams else rows
        hyps, refs = [r.hyps[0] for r in rows], [r.refs for r in rows]
        return {f"{stage}_bleu": text_metrics.bleu(hyps, refs)[0].score,
                f"{stage}_bleu_tok": text_metrics.tokenized_bleu(hyps, refs, self.hparams.tgt_lang)}

    def _score(self, stage: str, rows: list[Decoded], beams: tuple[int, ...]) -> None:
        rows = group_by_source(rows) if stage in self.hparams.multi_ref_streams else rows
        refs = [r.refs for r in rows]
        if stage.startswith("test"):
            self.write_outputs(stage, [r.hyps[0] for r in rows], refs)
        for j, beam in enumerate(beams):
            hyps = [r.hyps[j] for r in rows]
            score, self.bleu_signatures[stage] = text_metrics.bleu(hyps, refs)
            # bleu_tok: as the paper's era scored (its 29.03 too); the leaderboard compares it with the paper.
            for metric, value in (("bleu", score.score), ("chrf", text_metrics.chrf(hyps, refs)),
                                  ("bleu_tok", text_metrics.tokenized_bleu(hyps, refs, self.hparams.tgt_lang))):
                for name in score_names(stage, metric, beam, beams):
                    self.log(name, value, prog_bar=stage == "valid" and metric == "bleu")
        self.write_samples(stage, ["source", "references", *map(beam_column, beams)],
                           [[r.source, " | ".join(r.refs), *r.hyps] for r in rows])
