"""What the translator and the captioner share: an LSTM word decoder scored by perplexity and by
corpus-level sacrebleu scores of its greedy and beam-search output.

A subclass builds `self.emb` (word embedding), `self.decoder` (DropoutLSTM), `self.head` (linear
to the vocabulary) and `self.vocab`, calls `init_scoring()`, and supplies

    _logits(batch) -> (T, N, V)          teacher-forced next-word logits for batch[targets_key]
    _collect(batch, stage, beams)        decode a batch, append one `Decoded` per item
    _score(stage, items, beams)          log the stage's corpus scores from all ranks' items

Everything else (the training step, perplexity, which beams run where, samples) lives here once.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import SumMetric

from tasks.base import TaskModule
from tasks.nn import decoding, text_metrics
from tasks.nn.cadence import log_due

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """One evaluated item: its source sentence (empty for an image), its reference(s), and its
    hypothesis for each beam size the stage decodes with, in that order."""

    source: str
    refs: list[str]
    hyps: tuple[str, ...]


class WordNLL(nn.Module):
    """A stage's summed NLL and word count (synced across ranks): its perplexity per word."""

    def __init__(self) -> None:
        super().__init__()
        # "disable": a NaN batch (diverged weights, fp16 overflow) makes the perplexity NaN; the
        # default drops it from the sum but not from the count, and a diverged run would read 1.0.
        self.nll, self.words = SumMetric(nan_strategy="disable"), SumMetric(nan_strategy="disable")

    def update(self, nll: Tensor, words: Tensor) -> None:
        self.nll.update(nll)
        self.words.update(words)

    def perplexity(self) -> Tensor | None:
        """None when nothing was scored this epoch; resets either way."""
        ppl = (self.nll.compute() / self.words.compute().clamp_min(1)).exp() if self.words.update_count else None
        self.nll.reset()
        self.words.reset()
        return ppl


class TextGenerator(TaskModule):
    targets_key = "tgt_out"  # the batch entry holding w1 .. wn <eos> <pad> .., time-major
    loss_scale = "word"  # the training loss: "word" (mean per target word) or "sentence" (see _loss)

    def init_scoring(self, test_streams: list[str]) -> None:
        self.test_streams = list(test_streams)
        # Keyed "<stage>_ppl": a ModuleDict key may not shadow a Module attribute ("train").
        self.word_nll = nn.ModuleDict({f"{s}_ppl": WordNLL() for s in ("train", "valid", *self.test_streams)})
        self.outputs: dict[str, list[Decoded]] = {}
        self.bleu_signatures: dict[str, str] = {}  # stage -> sacrebleu's signature of its BLEU(-4)

    def use_test_streams(self, names: list[str]) -> None:
        self.init_scoring(names)

    def row_info(self) -> dict[str, str]:
        """Extra results-row columns: how BLEU was computed for each test set (nrefs differ)."""
        return {"bleu_signature": "; ".join(f"{s}: {self.bleu_signatures[s]}" for s in self.test_streams
                                            if s in self.bleu_signatures)}

    # -- decoding -------------------------------------------------------------------------------------
    def step(self, tokens: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One decoding step for (N,) previous words from the decoder's (h, c)."""
        y, state = self.decoder(self.emb(tokens).unsqueeze(0), state)
        return self.next_word_logp(y[0]), state

    def next_word_logp(self, y: Tensor) -> Tensor:
        """(N, H) decoder outputs -> (N, V) float32 log-probabilities; <pad> and <bos> are never generated."""
        logp = F.log_softmax(self.head(y).float(), dim=-1)
        logp[:, [self.vocab.pad, self.vocab.bos]] = float("-inf")
        return logp

    def decode(self, state: tuple[Tensor, ...], limit: Tensor, beam: int) -> list[list[int]]:
        """Word ids per sentence from the decoder state `state`; beam 1 is greedy decoding."""
        v = self.vocab
        if beam == 1:
            return decoding.greedy(self.step, state, v.bos, v.eos, limit)
        return decoding.beam_search(self.step, state, v.bos, v.eos, limit, beam, self.hparams.length_alpha)

    # -- training -------------------------------------------------------------------------------------
    def _loss(self, batch: dict, stage: str) -> Tensor:
        """NLL, the mean per target word, or with `loss_scale = "sentence"` summed over each sentence's
        words and averaged over the batch: the scale a learning rate and gradient clip tuned for plain
        SGD assume (Sutskever et al.'s 0.7 and 5; the PTB task's too). The sums behind `<stage>_ppl`
        accumulate on the side."""
        targets = batch[self.targets_key]  # (T, B)
        nll = F.cross_entropy(self._logits(batch).flatten(0, 1).float(), targets.flatten(),
                              ignore_index=self.vocab.pad, reduction="sum")
        self.word_nll[f"{stage}_ppl"].update(nll.detach(), batch["num_tokens"])
        return nll / (targets.size(1) if self.loss_scale == "sentence" else batch["num_tokens"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._loss(batch, "train")
        if log_due(self._trainer, batch_idx):
            items = batch[self.targets_key].size(1)
            words_per_item = batch["num_tokens"] / items if self.loss_scale == "sentence" else 1
            self.log_loss(loss, loss / words_per_item, batch_size=items)
        return loss

    def _log_ppl(self, stage: str) -> None:
        ppl = self.word_nll[f"{stage}_ppl"].perplexity()
        if ppl is not None:
            self.log(f"{stage}_ppl", ppl, prog_bar=stage == "valid")

    def on_train_epoch_end(self) -> None:
        self._log_ppl("train")

    # -- evaluation -----------------------------------------------------------------------------------
    def _test_beams(self) -> tuple[int, ...]:
        return (self.hparams.beam, 1) if self.hparams.beam > 1 else (1,)

    def _finish(self, stage: str, beams: tuple[int, ...]) -> None:
        self._log_ppl(stage)
        rows = text_metrics.gather(self.outputs.pop(stage, []))
        if rows:
            self._score(stage, rows, beams)

    def write_samples(self, stage: str, columns: list[str], rows: list[list[str]]) -> None:
        """A few outputs beside their references: per epoch for validation, once per test set."""
        if stage.startswith("test") or not self.trainer.sanity_checking:
            name = f"{self.output_prefix}{stage}" if stage.startswith("test") else f"{stage}-epoch{self.current_epoch:03d}"
            text_metrics.log_samples(self, name, columns, text_metrics.spread(rows, self.hparams.num_samples))

    def write_outputs(self, stage: str, hyps: list[str], refs: list[list[str]]) -> Path | None:
        """Every test hypothesis (the headline decoding) beside its references, one JSON line each, in
        <run>/outputs/<prefix><stage>.jsonl: what sacrebleu's paired bootstrap compares between the
        dropout-on and -off runs of a seed. Keyed by position: the test batches come in a fixed order,
        and a source sentence may repeat in a test set. Rank 0, after the ranks' rows are gathered."""
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return None
        path = Path(self.trainer.default_root_dir) / "outputs" / f"{self.output_prefix}{stage}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = f"{self.output_prefix}{stage}"
        path.write_text("".join(json.dumps({"stream": stream, "key": str(k), "hyp": h, "refs": r}, ensure_ascii=False) + "\n"
                                for k, (h, r) in enumerate(zip(hyps, refs))), encoding="utf-8")
        return path

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Greedy only (beam search every epoch costs too much); `valid_decode: false` scores
        # perplexity alone, which is what the checkpoint monitor reads, and decodes only at test;
        # `valid_decode: N` decodes every N-th epoch and the last.
        if self._decode_this_epoch():
            self._collect(batch, "valid", (1,))
        else:
            self._loss(batch, "valid")

    def _decode_this_epoch(self) -> bool:
        every = self.hparams.valid_decode
        if isinstance(every, bool) or every <= 1:
            return bool(every)
        epoch, last = self.current_epoch + 1, self.trainer.max_epochs
        return epoch % every == 0 or (last is not None and last > 0 and epoch >= last)

    def on_validation_epoch_end(self) -> None:
        self._finish("valid", (1,))

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, self.test_streams[dataloader_idx], self._test_beams())

    def on_test_epoch_end(self) -> None:
        for stage in self.test_streams:
            self._finish(stage, self._test_beams())
        if self.trainer.is_global_zero:
            for stage in self.test_streams:
                log.info("%s: sacrebleu BLEU signature %s", stage, self.bleu_signatures.get(stage, "-"))

    @classmethod
    @torch.no_grad()
    def ensemble_eval(cls, members: list["TextGenerator"], dm) -> dict[str, tuple[list[float], float]]:
        """The headline scores of each member and of their ensemble on the test stream, each decoded
        with the members' beam: the ensemble searches over the average of the members'
        distributions at every step, p(w) = 1/M sum_m p_m(w | its own state), all members' states
        carried in one tuple so the search reorders them together."""
        stream, beam = dm.stream_names()[0], members[0].hparams.beam
        rows: list[list[Decoded]] = [[] for _ in range(len(members) + 1)]
        for batch in dm.test_dataloader()[0]:
            starts = [m.start_of(batch) for m in members]
            mixed = ensemble_step([m.step for m in members], [len(s[0]) for s in starts])
            limit, items = starts[0][1], starts[0][2]
            hyps = [[m.to_text(seq) for seq in m.decode(s[0], limit, beam)] for m, s in zip(members, starts)]
            state = tuple(t for s in starts for t in s[0])
            v = members[0].vocab
            ids = decoding.beam_search(mixed, state, v.bos, v.eos, limit, beam, members[0].hparams.length_alpha)
            hyps.append([members[0].to_text(seq) for seq in ids])
            for j, h in enumerate(hyps):
                rows[j] += [Decoded(r.source, list(r.refs), (x,)) for r, x in zip(items, h)]
        scores = [members[0].headline_scores(stream, r) for r in rows]
        return {k: ([s[k] for s in scores[:-1]], scores[-1][k]) for k in scores[-1]}

    # -- supplied by the task -------------------------------------------------------------------------
    def start_of(self, batch: dict) -> tuple[tuple[Tensor, Tensor], Tensor, list[Decoded]]:
        """A test batch's decoder start state, output-length limits, and rows without hypotheses."""
        raise NotImplementedError

    def to_text(self, ids: list[int]) -> str:
        raise NotImplementedError

    def headline_scores(self, stage: str, rows: list[Decoded]) -> dict[str, float]:
        """Corpus scores of the rows' first hypotheses: the numbers an ensemble is compared on."""
        raise NotImplementedError

    def _logits(self, batch: dict) -> Tensor:
        raise NotImplementedError

    def _collect(self, batch: dict, stage: str, beams: tuple[int, ...]) -> None:
        raise NotImplementedError

    def _score(self, stage: str, rows: list[Decoded], beams: tuple[int, ...]) -> None:
        raise NotImplementedError


def ensemble_step(steps: list, sizes: list[int]) -> decoding.StepFn:
    """One decoding step of an ensemble: the log of the members' mean probability; the state is
    every member's state in turn (sizes[i] tensors for member i: (h, c), plus the source memory
    of one that attends), so a beam reorder moves them all."""
    ends = list(itertools.accumulate(sizes))

    def step(tokens: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        logps, new_state = [], []
        for member_step, start, end in zip(steps, [0, *ends], ends):
            logp, member_state = member_step(tokens, state[start:end])
            logps.append(logp)
            new_state += member_state
        return torch.stack(logps).logsumexp(0) - math.log(len(steps)), tuple(new_state)
    return step


def beam_suffix(beam: int) -> str:
    """Metric-name suffix: beam search is the headline number, greedy gets `_greedy`."""
    return "_greedy" if beam == 1 else ""


def score_names(stage: str, metric: str, beam: int, beams: tuple[int, ...]) -> list[str]:
    """What one decoding's score is logged as: `test_bleu` for beam search, `test_bleu_greedy` for
    greedy. A test run with `beam: 1` decodes greedily only, so that decoding is the headline too:
    without it the leaderboard would find no headline for the run."""
    name = f"{stage}_{metric}"
    return [name + beam_suffix(beam)] + ([name] if beams == (1,) and stage.startswith("test") else [])


def beam_column(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"

