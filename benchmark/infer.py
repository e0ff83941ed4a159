"""Run a trained model on new input, without a Trainer: `bench translate`, `bench caption`,
`bench phones`, `bench score` and `bench sample`.

Each reads its model with `trained.load` (the checkpoint alone: vocabularies, tokenizer, image
pipeline, feature settings and normalisation come from inside it) and prepares input exactly as
the model's DataModule prepared its test sets. Input the model cannot read (an empty line, an image
or audio file that does not decode) is reported on stderr, one line naming it, and the rest is still
processed; the output keeps one line per input so that it stays aligned with it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from benchmark.trained import Trained
from datamodules.parallel import Tokenizer
from datamodules.phones import PHONE_SETS
from datamodules.ptb import EOS, UNK, tokens_of
from datamodules.speech import delay_labels, read_audio, stack_context
from datamodules.vocab import WordVocab
from tasks.frame_classifier import collapse, drop_short_runs
from tasks.nn.errors import DataError


def warn(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr)


# -- translation ---------------------------------------------------------------------------------------
@torch.no_grad()
def translate(t: Trained, lines: list[str], beam: int | None = None, batch_size: int = 64) -> list[str]:
    """One translation per input line ("" for an empty one, reported). Sentences go in batches of
    one source length, as the DataModule's test batches do, so the encoder reads no padding."""
    settings, model = t.settings, t.model
    vocab, tokenize = WordVocab(t.state["src_itos"]), Tokenizer(settings["src_lang"], settings.get("lowercase", False))
    beam = beam or model.hparams.beam
    ids: dict[int, list[int]] = {}
    for n, line in enumerate(lines, 1):
        words = tokenize(line.strip()) if line.strip() else []
        if not words:
            warn(f"line {n}: empty; nothing to translate")
            continue
        unknown = [w for w in words if w not in vocab.stoi]
        if unknown:
            warn(f"line {n}: {len(unknown)} word(s) outside the model's vocabulary, read as {UNK}: {' '.join(unknown[:8])}")
        ids[n - 1] = vocab.encode(words)
    out = [""] * len(lines)
    by_length: dict[int, list[int]] = {}
    for i, seq in ids.items():
        by_length.setdefault(len(seq), []).append(i)
    for length, rows in sorted(by_length.items()):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            seqs = [ids[i][::-1] if settings.get("reverse_source", True) else ids[i] for i in chunk]
            src = torch.tensor(seqs, dtype=torch.long).T  # (S, B)
            for i, hyp in zip(chunk, model.translate(src, torch.full((len(chunk),), length), beam)):
                out[i] = hyp
    return out


# -- captioning ------------------------------------------------------------------------------------------
@torch.no_grad()
def caption(t: Trained, images: list[Path], beam: int | None = None, batch_size: int = 32) -> Iterator[tuple[Path, str | None]]:
    """(image, caption or None where it cannot be read), in the order given."""
    dm = t.datamodule(Path("."))
    cache, model = dm.feature_cache(), t.model
    beam = beam or model.hparams.beam
    for start in range(0, len(images), batch_size):
        chunk, pixels = images[start : start + batch_size], {}
        for path in chunk:
            try:
                pixels[path] = cache.load_image(path)
            except OSError as err:
                warn(f"{path}: unreadable ({err.strerror or err}); skipped")
            except DataError as err:
                warn(f"{err}; skipped")
        if pixels:
            x = torch.stack(list(pixels.values()))
            feats = model.cnn(x) if model.cnn is not None else cache.encoder.net(x).float()
            captions = dict(zip(pixels, model.caption(feats, beam)))
        for path in chunk:
            yield path, captions.get(path) if pixels else None


# -- speech ----------------------------------------------------------------------------------------------
@torch.no_grad()
def phones(t: Trained, audio: Path) -> tuple[list[str], list[str]]:
    """(phone sequence, one label per 10 ms frame) of one audio file, in the scoring classes. The
    sequence drops runs shorter than the model's `min_phone_frames`, as its `per_smoothed` does."""
    settings, model = t.settings, t.model
    try:
        data = audio.read_bytes()
    except OSError as err:
        raise DataError(f"{audio}: unreadable ({err.strerror or err})") from err
    wave, rate, n_samples = read_audio(audio, data, decode=True)
    dm = t.datamodule(Path("."))
    dm.check_audio(audio, rate, n_samples)  # the training rate, at least one frame
    feats = dm.features.compute(wave, rate)
    feats = stack_context((feats - t.state["mean"]) / t.state["std"], settings.get("context", 0))
    delay = settings.get("delay", 0)
    feats, _ = delay_labels(feats, torch.zeros(feats.size(0), dtype=torch.long), delay)
    frames = model(feats.unsqueeze(1))[delay:, 0].argmax(-1)  # frame t's label comes `delay` steps late
    scored = model.fold[frames].tolist()
    names = model.hparams.score_names
    labels = [names[i] if i >= 0 else PHONE_SETS[settings["phone_set"]].train[int(f)] for i, f in zip(scored, frames)]
    kept = [i for i in scored if i >= 0]  # frames of a class left out of scoring (TIMIT's q) do not split a phone
    return [names[i] for i in collapse(drop_short_runs(kept, model.hparams.min_phone_frames))] if kept else [], labels


# -- language model ------------------------------------------------------------------------------------------
def ptb_ids(t: Trained, text: str, source: str = "the input") -> tuple[torch.Tensor, int, int]:
    """Token ids of text read as PTB's reader reads its files (one sentence a line, <eos> after
    each), the word count and how many were outside the vocabulary (read as <unk>)."""
    vocab = WordVocab(t.state["itos"], specials=())
    tokens = tokens_of(text)
    if not any(tok != EOS for tok in tokens):
        raise DataError(f"{source}: no words to score")
    unknown = sum(1 for tok in tokens if tok not in vocab.stoi)
    return torch.tensor(vocab.encode(tokens)), len(tokens), unknown


@torch.no_grad()
def perplexity(t: Trained, ids: torch.Tensor, bptt: int | None = None) -> float:
    """Perplexity of one token stream, read as the paper reads its test set: one column, windows
    of `bptt` in order, the state carried from each to the next."""
    bptt = bptt or t.settings.get("bptt", 35)
    model, state, nll = t.model, None, 0.0
    for start in range(0, ids.numel() - 1, bptt):
        x = ids[start : start + bptt].unsqueeze(1)
        y = ids[start + 1 : start + 1 + x.size(0)].unsqueeze(1)
        x = x[: y.size(0)]
        logits, state = model(x, state)
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
    return math.exp(nll / (ids.numel() - 1))


@torch.no_grad()
def sample(t: Trained, words: int, temperature: float = 1.0, seed: int = 0, prompt: str = "") -> str:
    """`words` words drawn from the model, one sentence a line, after an optional prompt."""
    if not math.isfinite(temperature) or temperature < 1e-30:  # nearer 0, logits / temperature overflows
        raise DataError(f"--temperature must be a number of at least 1e-30 (near 0: almost greedy), got {temperature}")
    vocab = WordVocab(t.state["itos"], specials=())
    gen = torch.Generator().manual_seed(seed)
    unknown = [w for w in prompt.split() if w not in vocab.stoi]
    if unknown and vocab.unk is not None:  # PTB is lower-case, numbers are N: "The" is a word the model never saw
        warn(f"prompt: {len(unknown)} word(s) outside the model's vocabulary, read as {UNK}: {' '.join(unknown[:8])}")
    context = [vocab.stoi[EOS], *vocab.encode(prompt.split(), source="prompt")]
    logits, state = t.model(torch.tensor(context).unsqueeze(1))
    out = list(prompt.split())
    for _ in range(words):
        probs = torch.softmax(logits[-1, 0].float() / temperature, -1)
        word = int(torch.multinomial(probs, 1, generator=gen))
        out.append("\n" if vocab.itos[word] == EOS else vocab.itos[word])
        logits, state = t.model(torch.tensor([[word]]), state)
    return " ".join(out).replace(" \n ", "\n").replace(" \n", "\n").strip() + "\n"
