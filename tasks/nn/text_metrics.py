"""Corpus-level text scores with sacrebleu, gathered across ranks, and sample outputs for reading.

BLEU and chrF are corpus statistics, not means of per-batch numbers, so a task collects every
hypothesis and its references during an epoch and scores them once at its end (all ranks' lists
gathered first under DDP).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch.distributed as dist
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.bleu import BLEUScore
from sacremoses import MosesTokenizer

from tasks.nn.references import UNK, UNK_SLOT, UNSCORED, reference_streams, unk_as_one_word

log = logging.getLogger(__name__)


def bleu(hyps: list[str], refs: list[list[str]], max_order: int = 4) -> tuple[BLEUScore, str]:
    """Corpus BLEU-n with sacrebleu's defaults (13a tokenisation, case-sensitive, 'exp' smoothing)
    against every reference of each segment, and sacrebleu's signature of exactly that setting.
    Each <unk> in a hypothesis counts as one wrong word (`unk_as_one_word`)."""
    metric = BLEU(max_ngram_order=max_order)
    score = metric.corpus_score([unk_as_one_word(h) for h in hyps], reference_streams(refs))
    return score, str(metric.get_signature())


def tokenized_bleu(hyps: list[str], refs: list[list[str]], lang: str) -> float:
    """BLEU as the paper's era computed it (Sutskever et al.'s 29.03 included): hypotheses and
    references Moses-tokenized (tokenizer.perl, no escaping), then multi-bleu.perl's statistic on
    the tokens: case-sensitive, no smoothing. Tokenization splits more than 13a does (French
    elisions such as "l'" and hyphens become words), so this number is not sacrebleu's and is only
    compared with papers that report tokenized BLEU."""
    moses = MosesTokenizer(lang=lang)

    def tok(text: str) -> str:
        return " ".join(moses.tokenize(text, escape=False))

    def tok_hyp(text: str) -> str:  # "l'<unk>" splits as "l'homme" does, into "l'" and one wrong word
        return tok(text.replace(UNK, UNK_SLOT)).replace(UNK_SLOT, UNSCORED)

    metric = BLEU(tokenize="none", smooth_method="none")
    streams = [[None if r is None else tok(r) for r in stream] for stream in reference_streams(refs)]
    return metric.corpus_score([tok_hyp(h) for h in hyps], streams).score


def chrf(hyps: list[str], refs: list[list[str]]) -> float:
    return CHRF().corpus_score(hyps, reference_streams(refs)).score


def gather(items: list) -> list:
    """Every rank's list, concatenated in rank order (the list itself on a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list[list] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def spread(rows: list, n: int) -> list:
    """n rows evenly spaced through the list: batches come sorted by length, so the first n would
    all be the shortest sentences."""
    if len(rows) <= n:
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


def log_samples(module: L.LightningModule, name: str, columns: list[str], rows: list[list[str]]) -> Path | None:
    """Write sample outputs beside their references to <run>/samples/<name>.txt, and a W&B table
    when W&B logs the run. Rank 0 only; nothing during Lightning's sanity check."""
    trainer = module.trainer
    if trainer.sanity_checking or not trainer.is_global_zero or not rows:
        return None
    path = Path(trainer.default_root_dir) / "samples" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = ["\n".join(f"{col:>10}: {val}" for col, val in zip(columns, row)) for row in rows]
    path.write_text("\n\n".join(blocks) + "\n")
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            try:
                logger.log_text(key=name.split("-epoch")[0], columns=columns, data=rows, step=trainer.global_step)
            except Exception as err:  # a W&B hiccup must not end a training run
                log.warning("could not log samples to W&B: %s", err)
    return path
