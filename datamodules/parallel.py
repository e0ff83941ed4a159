"""Parallel text (English -> French) for the Sutskever-style translator of the paper's Sec. 4.3.

A corpus is named in the config by one of (paths relative to the data root, or absolute):

    {tab: tatoeba-fra-eng/fra.txt}            "source<TAB>target[<TAB>attribution]" per line (Tatoeba/Anki)
    {src: wmt/dev/newstest2013.en,            two line-aligned files, plain text or WMT .sgm
     ref: wmt/dev/newstest2013.fr}
    {sacrebleu: wmt14/full}                   sacrebleu's own copy of a named test set (needs network once)

Without explicit `valid`/`test` corpora, the training corpus is split by a salted hash of each
pair's lower-cased source sentence (`split:` in the config), so the split is fixed whatever the
file order, and one English sentence with several French translations never straddles two splits.

Words come from the Moses tokenizer (sacremoses, the paper's era's standard; escape=False keeps
apostrophes as text); vocabularies are the most frequent training words, the rest <unk>. Training
pairs longer than `max_len` tokens on either side are dropped (counted); held-out sets are scored
whole. Hypotheses are detokenised with Moses' French detokenizer and scored against the raw
reference lines.

A batch is time-major; every sentence in it has the same source length (batches are bucketed by
exact source length), so the encoder reads no padding and its final state is each sentence's own:

    src     (S, B)  source ids, reversed when `reverse_source` (Sutskever et al.): "c b a"
    tgt_in  (T, B)  <bos> y1 .. yn <pad> ..      decoder input (teacher forcing)
    tgt_out (T, B)  y1 .. yn <eos> <pad> ..      targets; <pad> is masked out of the loss
"""

from __future__ import annotations

import functools
import hashlib
import html
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from sacremoses import MosesTokenizer
from torch.utils.data import DataLoader, Sampler

from datamodules import download as fetch
from datamodules import sources
from datamodules.bad_records import STRICT, BadRecordPolicy, BadRecords
from datamodules.base import StreamsDataModule
from datamodules.shards import balanced_block
from datamodules.vocab import WordVocab
from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    src: list[int]
    tgt: list[int]
    src_text: str
    ref_text: str


def _not_utf8(path: Path, line: int, err: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}:{line}: not valid UTF-8 ({err.reason}); convert the file to UTF-8 "
                     f"(e.g. iconv -f latin1 -t utf-8)")


def split_lines(data, newline):
    """Lines split at `\n` only (a `\r` before it dropped, no empty line after a final `\n`): the
    same lines whether the file is read whole or line by line, and the count line-aligned twin
    files are checked by (str.splitlines would also break at U+2028, NEL and lone CRs)."""
    lines = data.split(newline)
    if lines and not lines[-1]:
        lines.pop()
    return [line[:-1] if line[-1:] in ("\r", b"\r") else line for line in lines]


def read_text(path: Path, policy: BadRecordPolicy = STRICT) -> tuple[list[str | None], BadRecords]:
    """A file's lines as UTF-8, and its bad records. A line that is not UTF-8 is an error naming file
    and line, or, in a corpus large enough for `policy` to skip, None in its place (so that a
    line-aligned twin file stays aligned)."""
    if not path.is_file():
        raise DataError(f"{path}: not found")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # read as text it would fail as "not UTF-8", and iconv would make it worse
        raise DataError(f"{path}: gzip-compressed; gunzip it (or point at the uncompressed file)")
    raw: list[bytes] = []  # filled only when some line is not UTF-8
    try:
        lines: list[str | None] = split_lines(data.decode("utf-8"), "\n")
        bad = BadRecords(str(path), len(lines), policy)
    except UnicodeDecodeError as err:
        raw = split_lines(data, b"\n")
        bad = BadRecords(str(path), len(raw), policy)
        if not bad.tolerant:
            raise _not_utf8(path, data[: err.start].count(b"\n") + 1, err) from err
        lines = []
        for lineno, line in enumerate(raw, 1):
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError as line_err:
                bad.add(_not_utf8(path, lineno, line_err))
                lines.append(None)
    if path.suffix.lower() == ".sgm":  # WMT SGML: one <seg id=..>sentence</seg> per line
        # A <seg> line skipped as not UTF-8 keeps its place (None): its twin file's segments must
        # stay aligned with this one's, not shift up by one.
        segs = []
        for i, line in enumerate(lines):
            m = _SEG.search(line if line is not None else raw[i].decode("utf-8", "replace"))
            if m:
                segs.append(None if line is None else html.unescape(m.group(1)).strip())
        lines = segs
        if not any(line is not None for line in lines):
            raise DataError(f"{path}: no <seg> lines in this .sgm file")
    return lines, bad


def read_corpus(spec: dict[str, str], data_root: Path, langpair: str,
                policy: BadRecordPolicy = STRICT) -> tuple[list[tuple[str, str]], list[str]]:
    """(source, reference) pairs of one corpus spec, and the bad records skipped (`policy`); empty
    pairs are skipped and counted."""
    if "sacrebleu" in spec:
        import sacrebleu.utils as sbu

        try:
            src = Path(sbu.get_source_file(spec["sacrebleu"], langpair))
            ref = Path(sbu.get_reference_files(spec["sacrebleu"], langpair)[0])
        except (Exception, SystemExit) as err:  # sacrebleu calls sys.exit() when a download fails
            raise DataError(f"sacrebleu test set {spec['sacrebleu']!r} ({langpair}) unavailable: {err}. Offline, "
                            f"give the files by path instead: {{src: ..., ref: ...}}") from err
        spec = {"src": str(src), "ref": str(ref)}
    if "tab" in spec:
        path = _resolve(spec["tab"], data_root)
        lines, bad = read_text(path, policy)
        pairs = []
        for lineno, line in enumerate(lines, 1):
            fields = [] if line is None else line.split("\t")
            if line is not None and len(fields) < 2:
                bad.add(DataError(f"{path}:{lineno}: expected 'source<TAB>target', got {line[:80]!r}"))
            if len(fields) >= 2:
                pairs.append((fields[0].strip(), fields[1].strip(), lineno))
        where, skipped = str(path), bad.check()
    elif "src" in spec and "ref" in spec:
        src_path, ref_path = _resolve(spec["src"], data_root), _resolve(spec["ref"], data_root)
        (src, src_bad), (ref, ref_bad) = read_text(src_path, policy), read_text(ref_path, policy)
        if len(src) != len(ref):
            raise DataError(f"misaligned parallel files: {src_path} has {len(src)} lines, {ref_path} has {len(ref)}; "
                            f"they must be line-aligned translations of each other")
        pairs = [(s.strip(), r.strip(), i) for i, (s, r) in enumerate(zip(src, ref), 1)
                 if s is not None and r is not None]
        where, skipped = f"{src_path} / {ref_path}", src_bad.check() + ref_bad.check()
    else:
        raise DataError(f"corpus spec {spec!r}: give `tab: PATH`, `src: PATH` with `ref: PATH`, or `sacrebleu: NAME`")
    empty = [i for s, r, i in pairs if not s or not r]
    if empty:
        log.warning("%s: skipped %d pairs with an empty side (first at line %d)", where, len(empty), empty[0])
    kept = [(s, r) for s, r, _ in pairs if s and r]
    if not kept:
        raise DataError(f"{where}: no sentence pairs")
    return kept, skipped


def _resolve(path: str, data_root: Path) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if not (data_root / p).exists() and p.parts[0] in ("tatoeba-fra-eng", "wmt", "wmt14"):
        raise DataError(f"{data_root / p}: not found. Put {sources.FETCH_HELP[p.parts[0]]} there, or fix --data-root")
    return data_root / p


def hash_split(pairs: list[tuple[str, str]], valid: float, test: float, salt: str) -> dict[str, list[tuple[str, str]]]:
    """Assign each pair to train/valid/test by a salted hash of its lower-cased source sentence."""
    out: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        digest = hashlib.sha256(f"{salt}\0{pair[0].lower()}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out["test" if u < test else "valid" if u < test + valid else "train"].append(pair)
    return out


class Tokenizer:
    """Moses tokenization of one language, lower-cased on request."""

    def __init__(self, lang: str, lowercase: bool = False) -> None:
        self.moses, self.lowercase = MosesTokenizer(lang=lang), lowercase

    def __call__(self, text: str) -> list[str]:
        text = text.lower() if self.lowercase else text
        return self.moses.tokenize(text, escape=False)


def _with_source(name: str, raw: list[tuple[str, str]], words: list[tuple[list[str], list[str]]],
                 ) -> tuple[list[tuple[str, str]], list[tuple[list[str], list[str]]]]:
    """A held-out set without the pairs whose source has no word once tokenized (a line of control
    characters only, which the tokenizer deletes): nothing to translate, and an encoder input of
    length 0. Left out and said, as `bench translate` does with such a line."""
    empty = [i for i, (s, _) in enumerate(words) if not s]
    if not empty:
        return raw, words
    log.warning("%s: left out %d pair(s) whose source has no word once tokenized (the first: %r)",
                name, len(empty), raw[empty[0]][0])
    gone = set(empty)
    return [p for i, p in enumerate(raw) if i not in gone], [w for i, w in enumerate(words) if i not in gone]


def collate(pairs: list[Pair], pad: int, bos: int, eos: int, reverse_source: bool) -> dict[str, Any]:
    src = [torch.tensor(p.src[::-1] if reverse_source else p.src) for p in pairs]
    tgt_in = [torch.tensor([bos, *p.tgt]) for p in pairs]
    tgt_out = [torch.tensor([*p.tgt, eos]) for p in pairs]
    pad_seq = torch.nn.utils.rnn.pad_sequence
    return {
        "src": pad_seq(src, padding_value=pad),  # (S, B); one length per batch when bucketed
        "src_lengths": torch.tensor([len(p.src) for p in pairs]),
        "tgt_in": pad_seq(tgt_in, padding_value=pad),
        "tgt_out": pad_seq(tgt_out, padding_value=pad),
        "num_tokens": torch.tensor(sum(len(p.tgt) + 1 for p in pairs)),  # target words + <eos>
        "src_text": [p.src_text for p in pairs],
        "ref_text": [p.ref_text for p in pairs],
    }


class LengthBuckets(Sampler[list[int]]):
    """Batches of sentences with one source length each, in a seeded random order per epoch when
    `shuffle`. Under DDP, in training each rank takes every world-th batch, the same count on every
    rank so that no rank waits on a gradient sync that never comes; in evaluation each rank takes one
    contiguous block of the batches holding about its share of the words, so the ranks' outputs
    gathered in rank order are the one-process order (see shards.py)."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.lengths, self.batch_size, self.shuffle, self.seed = lengths, batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(self.lengths):
            by_len.setdefault(n, []).append(i)
        batches = []
        for n in sorted(by_len):
            idx = by_len[n]
            if self.shuffle:
                rng.shuffle(idx)
            batches += [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if not self.shuffle:  # evaluation
            if self.world_size == 1:
                return batches
            cost = [sum(self.lengths[i] for i in b) for b in batches]  # decoding time grows with the words
            return [batches[i] for i in balanced_block(cost, self.rank, self.world_size, "the evaluation set's list of batches")]
        rng.shuffle(batches)
        batches = batches[: len(batches) - len(batches) % self.world_size]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class ParallelTextDataModule(StreamsDataModule):

    def __init__(
        self,
        data_root: str | Path = "data",
        train: dict[str, str] | None = None,
        valid: dict[str, str] | None = None,
        test: dict[str, str] | None = None,
        split: dict[str, Any] | None = None,
        test_sets: dict[str, dict[str, str]] | None = None,
        src_lang: str = "en",
        tgt_lang: str = "fr",
        lowercase: bool = False,
        src_vocab: int = 10000,
        tgt_vocab: int = 10000,
        min_count: int = 1,
        max_len: int = 50,
        train_pairs: int | None = None,
        reverse_source: bool = True,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        bad_records: dict[str, Any] | None = None,
        test_only: bool = False,
    ) -> None:
        super().__init__()
        self.keep_settings()
        self.test_only = test_only
        if train is None and not test_only:
            raise DataError("the translation preset needs `data.train`, e.g. {tab: tatoeba-fra-eng/fra.txt}")
        self.data_root = Path(data_root)
        self.train_spec, self.valid_spec, self.test_spec = train, valid, test
        self.split = {"valid": 0.01, "test": 0.02, "salt": "rnnreg", **(split or {})}
        self.test_sets = dict(test_sets or {})
        self.src_lang, self.tgt_lang, self.lowercase = src_lang, tgt_lang, lowercase
        self.vocab_sizes, self.min_count, self.max_len = (src_vocab, tgt_vocab), min_count, max_len
        self.train_pairs, self.reverse_source = train_pairs, reverse_source
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.bad_records = BadRecordPolicy.of(bad_records)
        self.sets: dict[str, list[Pair]] = {}

    @property
    def langpair(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    def data_files(self) -> list[Path]:
        """What the run reads: the settings hash covers their names and sizes (a sacrebleu test set
        by name has no file here; its name is in the settings)."""
        specs = [*([] if self.test_only else [self.train_spec, self.valid_spec, self.test_spec]), *self.test_sets.values()]
        paths = [p for spec in specs if spec for key, p in spec.items() if key in ("tab", "src", "ref")]
        return [Path(p).expanduser() if Path(p).expanduser().is_absolute() else self.data_root / p for p in paths]

    def prepare_data(self) -> None:
        # Tatoeba and the WMT dev sets have public archives with known hashes: fetched when absent.
        # For anything else read_corpus() names the missing file and where to get it.
        specs = [*([] if self.test_only else [self.train_spec, self.valid_spec, self.test_spec]), *self.test_sets.values()]
        paths = [p for spec in specs if spec for key, p in spec.items() if key in ("tab", "src", "ref")]
        for ds in sources.PUBLISHED:
            wanted = [p for p in paths if Path(p).as_posix().startswith(ds.name + "/")]
            if any(not (self.data_root / p).is_file() for p in wanted):
                fetch.download(ds, self.data_root)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        if self.test_only:
            self._setup_test_sets()
            return
        raw = {"train": self._read(self.train_spec)}
        if self.valid_spec is None or self.test_spec is None:
            parts = hash_split(raw["train"], self.split["valid"], self.split["test"], str(self.split["salt"]))
            raw.update(parts)
        if self.valid_spec is not None:
            raw["valid"] = self._read(self.valid_spec)
        if self.test_spec is not None:
            raw["test"] = self._read(self.test_spec)
        for name, spec in self.test_sets.items():
            raw[f"test_{name}"] = self._read(spec)
        if self.train_pairs is not None and self.train_pairs < len(raw["train"]):
            rng = random.Random(f"{self.split['salt']}-train-pairs")
            raw["train"] = rng.sample(raw["train"], self.train_pairs)

        tok_src, tok_tgt = self.tokenizers()
        words = {name: [(tok_src(s), tok_tgt(t)) for s, t in pairs] for name, pairs in raw.items()}
        n_train = len(words["train"])
        for name in list(words):
            if name != "train":
                raw[name], words[name] = _with_source(name, raw[name], words[name])
        # A line of control characters alone is not empty until the tokenizer drops them: a pair with
        # no source word would make an encoder input of length 0.
        keep = [i for i, (s, t) in enumerate(words["train"]) if 0 < len(s) <= self.max_len and len(t) <= self.max_len]
        words["train"] = [words["train"][i] for i in keep]
        raw["train"] = [raw["train"][i] for i in keep]
        if len(keep) < n_train:
            log.info("dropped %d of %d training pairs longer than max_len=%d tokens or without a source word",
                     n_train - len(keep), n_train, self.max_len)
        if not words["train"]:
            raise DataError(f"no training pair is within max_len={self.max_len} tokens")
        if self.restored:
            self.src_vocab, self.tgt_vocab = WordVocab(self.restored["src_itos"]), WordVocab(self.restored["tgt_itos"])
        else:
            self.src_vocab = WordVocab.build((s for s, _ in words["train"]), self.vocab_sizes[0], self.min_count)
            self.tgt_vocab = WordVocab.build((t for _, t in words["train"]), self.vocab_sizes[1], self.min_count)
        for name in words:
            self.sets[name] = [Pair(self.src_vocab.encode(s), self.tgt_vocab.encode(t), rs, self._reference(rt))
                               for (s, t), (rs, rt) in zip(words[name], raw[name])]
        log.info("translation %s: %s pairs; vocabularies %d source / %d target words", self.langpair,
                 {k: len(v) for k, v in self.sets.items()}, len(self.src_vocab), len(self.tgt_vocab))

    def _setup_test_sets(self) -> None:
        """The test_sets alone, encoded with a checkpoint's vocabularies: no training corpus needed."""
        if not self.restored:
            raise DataError("test_only needs the vocabularies of a trained model (load_state_dict)")
        self.src_vocab, self.tgt_vocab = WordVocab(self.restored["src_itos"]), WordVocab(self.restored["tgt_itos"])
        tok_src, tok_tgt = self.tokenizers()
        for name, spec in self.test_sets.items():
            raw = self._read(spec)
            raw, words = _with_source(f"test_{name}", raw, [(tok_src(s), tok_tgt(t)) for s, t in raw])
            self.sets[f"test_{name}"] = [Pair(self.src_vocab.encode(s), self.tgt_vocab.encode(t), rs, self._reference(rt))
                                         for (s, t), (rs, rt) in zip(words, raw)]

    def _reference(self, text: str) -> str:
        """The reference as BLEU sees it: lower-cased when the model's words are (BLEU is
        case-sensitive, so a cased reference would count every capital as a miss)."""
        return text.lower() if self.lowercase else text

    def tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        return Tokenizer(self.src_lang, self.lowercase), Tokenizer(self.tgt_lang, self.lowercase)

    def learned(self) -> dict[str, Any]:
        if not hasattr(self, "src_vocab"):
            return {}
        return {"src_itos": self.src_vocab.itos, "tgt_itos": self.tgt_vocab.itos}

    def _read(self, spec: dict[str, str]) -> list[tuple[str, str]]:
        pairs, skipped = read_corpus(spec, self.data_root, self.langpair, self.bad_records)
        self.skipped += skipped
        return pairs

    def model_kwargs(self) -> dict[str, Any]:
        # Held-out parts of a hash-split corpus are scored against every translation of a sentence.
        split = [] if self.test_only else ["valid"] * (self.valid_spec is None) + ["test"] * (self.test_spec is None)
        return {"src_vocab_size": len(self.src_vocab), "tgt_itos": self.tgt_vocab.itos, "tgt_lang": self.tgt_lang,
                "test_streams": self.stream_names(), "multi_ref_streams": split}

    def loader(self, name: str, shuffle: bool) -> DataLoader:
        pairs = self.sets[name]
        rank, world = self.rank_world()
        sampler = LengthBuckets([len(p.src) for p in pairs], self.batch_size if shuffle else self.eval_batch_size,
                                shuffle=shuffle, seed=torch.initial_seed() if shuffle else 0, rank=rank,
                                world_size=world)
        v = self.tgt_vocab
        return DataLoader(pairs, batch_sampler=sampler, collate_fn=functools.partial(
            collate, pad=v.pad, bos=v.bos, eos=v.eos, reverse_source=self.reverse_source))
