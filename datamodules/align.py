"""Phone labels by forced alignment: audio + its word transcript -> a TIMIT-style `.phn` per utterance.

The paper's acoustic targets were forced alignments (Sec. 4.2); here pocketsphinx (CMU, the PyPI
wheel, which carries its en-us acoustic model and CMUdict) aligns each utterance's words to its
audio. A grammar of exactly the transcript's words, in order, lets the search choose each word's
pronunciation and the pauses between words; a second pass places every phone of that choice on
the model's 10 ms grid:

    words   "yes"                   -> Y EH S, between optional silences at the ends
    frames  SIL 0-30 | Y 31-39 | EH 40-54 | S 55-70 | SIL 71-98       (1 frame = 160 samples at 16 kHz)
    .phn    0 4960 SIL / 4960 6400 Y / ...                            start_sample end_sample PHONE

Phones are CMU's 39 ARPAbet symbols (no stress) and SIL, the set the shared AN4 labels use.

Corpus layouts (`detect_layout`):
  an4     <root>/etc/an4_{train,test}.transcription ("<s> YES </s> (an251-fash-b)") and .fileids,
          audio under <root>/wav/<fileid>.{flac,wav,sph}
  kaldi   <root>/text ("utt word word ...") and <root>/wav.scp ("utt path", relative to <root>)
  simple  every audio file under <root> with a transcript of the same name beside it (.txt, .lab);
          TIMIT's .txt leading "start end" sample numbers are dropped

An utterance that cannot be labelled (audio unreadable or not 16 kHz, a word missing from the
dictionary, no path through the words) is skipped and listed in `align-report.tsv`, never labelled
by a guess. Labels are written atomically, so a stopped run resumes where it was.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import multiprocessing
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from datamodules.download import sha256_of
from datamodules.phones import CMU_PHONES
from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

RATE = 16_000  # the en-us acoustic model's sample rate
SHIFT = 160  # samples per 10 ms frame at RATE
WINDOW = 410  # samples per pocketsphinx frame (25.625 ms)
# Frame f is centred on sample SHIFT f + WINDOW / 2; a boundary between frames f - 1 and f goes halfway
# between their centres, so that a frame labelled by its centre sample (the speech task) gets its own phone.
EDGE = (WINDOW - SHIFT) // 2
AUDIO_SUFFIXES = (".flac", ".wav", ".sph")
TRANSCRIPT_SUFFIXES = (".txt", ".lab")
ARPABET = frozenset(CMU_PHONES) - {"SIL"}  # what a user dictionary may use
NOT_WORDS = {"<s>", "</s>", "<sil>"}  # sentence marks and silences in CMU transcripts
REPORT = "align-report.tsv"
MANIFEST = "align-labels.tsv"  # the labels this tool wrote, each with the key of what it was made from


@dataclass(frozen=True)
class Item:
    utt: str
    audio: Path
    words: tuple[str, ...]
    phn: Path  # where the labels go


@dataclass(frozen=True)
class Problem:
    utt: str
    path: Path
    reason: str


@dataclass
class Summary:
    aligned: int
    kept: int  # labelled by an earlier run from the same words and audio
    foreign: int  # labels this tool did not write (hand labels, another aligner): never touched
    skipped: list[Problem]
    report: Path


# -- corpus layouts ---------------------------------------------------------------------------------------

def detect_layout(root: Path) -> str:
    if (root / "etc").is_dir() and any((root / "etc").glob("*.transcription")) and (root / "wav").is_dir():
        return "an4"
    if (root / "text").is_file() and (root / "wav.scp").is_file():
        return "kaldi"
    return "simple"


def audio_of(stem: Path) -> Path | None:
    """The audio file `stem` + one of AUDIO_SUFFIXES, if there is one."""
    return next((p for p in (Path(f"{stem}{s}") for s in AUDIO_SUFFIXES) if p.is_file()), None)


def _audio_files(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def an4_transcripts(root: Path) -> tuple[dict[str, tuple[str, tuple[str, ...]]], list[Problem]]:
    """utt -> (fileid, words) from AN4's etc/*.transcription + *.fileids, which run line by line."""
    out, problems = {}, []
    for trans in sorted((root / "etc").glob("an4_*.transcription")):
        fileids = trans.with_suffix(".fileids")
        if not fileids.is_file():
            continue  # the two spare copies of the test transcription have no file list
        by_name = {Path(line.strip()).name: line.strip() for line in fileids.read_text().splitlines() if line.strip()}
        for lineno, line in enumerate(trans.read_text(errors="replace").splitlines(), 1):
            m = re.fullmatch(r"(.*)\(([^()]+)\)\s*", line)
            if not m:
                if line.strip():
                    problems.append(Problem("?", trans, f"line {lineno}: expected 'WORDS (utterance)', got {line!r}"))
                continue
            utt = m.group(2).strip()
            if utt not in by_name:
                problems.append(Problem(utt, trans, f"line {lineno}: utterance not in {fileids.name}"))
                continue
            out[utt] = (by_name[utt], tuple(w for w in m.group(1).split() if w.lower() not in NOT_WORDS))
    return out, problems


def read_items(root: Path, layout: str | None = None, out: Path | None = None) -> tuple[list[Item], list[Problem]]:
    """The utterances of a corpus and what cannot be one (a transcript without audio or the reverse).

    Labels go beside the audio, or with `out` into the same relative place under `out`."""
    root = root.resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder. Give the corpus folder (audio + word transcripts)")
    layout = layout or detect_layout(root)

    def phn_for(audio: Path) -> Path:
        if out is None:
            return audio.with_suffix(".phn")
        try:
            return out / audio.relative_to(root).with_suffix(".phn")
        except ValueError:  # a wav.scp path outside the corpus folder
            return out / "audio" / audio.with_suffix(".phn").name

    items, problems, transcribed = [], [], set()
    if layout == "an4":
        transcripts, problems = an4_transcripts(root)
        for utt, (fileid, words) in transcripts.items():
            audio = audio_of(root / "wav" / fileid)
            if audio is None:
                problems.append(Problem(utt, root / "wav" / fileid, "transcript without audio (.flac/.wav/.sph)"))
                continue
            transcribed.add(audio)
            items.append(Item(utt, audio, words, phn_for(audio)))
        untranscribed = [a for a in _audio_files(root / "wav") if a not in transcribed]
    elif layout == "kaldi":
        text, scp = _kaldi_table(root / "text"), _kaldi_table(root / "wav.scp")
        for utt, where in scp.items():
            if where.endswith("|"):
                problems.append(Problem(utt, root / "wav.scp", "piped entries are not read; give a file path"))
                continue
            audio = (root / where).resolve()
            if utt not in text:
                problems.append(Problem(utt, audio, "audio without a transcript in text"))
            elif not audio.is_file():
                problems.append(Problem(utt, audio, "transcript without audio (wav.scp names a missing file)"))
            else:
                items.append(Item(utt, audio, tuple(text[utt].split()), phn_for(audio)))
        problems += [Problem(u, root / "text", "transcript without audio (not in wav.scp)")
                     for u in text if u not in scp]
        untranscribed = []
    elif layout == "simple":
        for audio in _audio_files(root):
            suffixes = (*TRANSCRIPT_SUFFIXES, *(s.upper() for s in TRANSCRIPT_SUFFIXES))
            trans = next((audio.with_suffix(s) for s in suffixes if audio.with_suffix(s).is_file()), None)
            if trans is not None:
                words = trans.read_text(errors="replace").split()
                if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
                    words = words[2:]  # TIMIT: "0 46797 She had your dark suit ..."
                transcribed.add(audio)
                items.append(Item(str(audio.relative_to(root).with_suffix("")), audio, tuple(words), phn_for(audio)))
        untranscribed = [a for a in _audio_files(root) if a not in transcribed]
        audio_stems = {a.with_suffix("") for a in transcribed}
        audio_dirs = {a.parent for a in _audio_files(root)}  # elsewhere a .txt is documentation, not a transcript
        for trans in sorted(p for s in TRANSCRIPT_SUFFIXES for p in root.rglob(f"*{s}") if p.parent in audio_dirs):
            if trans.with_suffix("") not in audio_stems and audio_of(trans.with_suffix("")) is None:
                problems.append(Problem(trans.stem, trans, "transcript without audio"))
    else:
        raise DataError(f"unknown corpus layout {layout!r}; known: an4, kaldi, simple")
    problems += [Problem(a.stem, a, "audio without a transcript") for a in untranscribed]
    if not items:
        raise DataError(f"{root}: no utterance with both audio and a transcript in the {layout} layout "
                        f"({len(problems)} problems, e.g. {problems[0].path}: {problems[0].reason})" if problems else
                        f"{root}: no audio files with transcripts; see `bench align --help` for the layouts")
    return items, problems


def _kaldi_table(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path}: not found; a Kaldi-style corpus has `text` and `wav.scp` side by side")
    table = {}
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            key, _, value = line.strip().partition(" ")
            if not value.strip():
                raise DataError(f"{path}:{lineno}: expected 'utterance-id value', got {line!r}")
            table[key] = value.strip()
    return table


def read_user_dict(path: Path) -> dict[str, list[str]]:
    """word -> its pronunciations ("PH PH ...") from lines 'WORD PH1 PH2 ...' (CMUdict's format:
    stress digits and `WORD(2)` for a second pronunciation allowed)."""
    if not path.is_file():
        raise DataError(f"{path}: dictionary file not found")
    words: dict[str, list[str]] = {}
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        phones = [re.sub(r"[0-2]$", "", p.upper()) for p in parts[1:]]
        bad = [p for p in phones if p not in ARPABET]
        if not phones or bad:
            raise DataError(f"{path}:{lineno}: expected 'WORD PH1 PH2 ...' with ARPAbet phones, got {line!r}"
                            + (f" (unknown: {' '.join(bad)})" if bad else ""))
        words.setdefault(re.sub(r"\(\d+\)$", "", parts[0]).lower(), []).append(" ".join(phones))
    return words


# -- the aligner ------------------------------------------------------------------------------------------

class Aligner:
    """One pocketsphinx decoder; not shared between processes."""

    def __init__(self, user_dict: dict[str, list[str]] | None = None) -> None:
        import pocketsphinx

        self.decoder = pocketsphinx.Decoder(lm=None, loglevel="FATAL")
        prons = [(word, pron) for word, ps in sorted((user_dict or {}).items()) for pron in ps]
        for i, (word, pron) in enumerate(prons):
            name, k = word, 1
            while self.decoder.lookup_word(name) is not None:  # a word CMUdict has: one more pronunciation
                k += 1
                name = f"{word}({k})"
            self.decoder.add_word(name, pron, update=i == len(prons) - 1)

    def words(self, words: Iterable[str]) -> tuple[list[str], list[str]]:
        """(dictionary words, words missing from the dictionary), after light normalisation."""
        out, missing = [], []
        for raw in words:
            word = raw.lower().strip(".,;:!?\"()[]{}")
            if not word or word in NOT_WORDS:
                continue
            if self.decoder.lookup_word(word) is None and "-" in word:
                parts = [p for p in word.split("-") if p]  # "tea-party" -> "tea party" when only the parts are known
                if parts and all(self.decoder.lookup_word(p) is not None for p in parts):
                    out += parts
                    continue
            (out if self.decoder.lookup_word(word) is not None else missing).append(word)
        return out, missing

    def align(self, item: Item) -> list[tuple[int, int, str]]:
        """(start_sample, end_sample, PHONE) covering the utterance; DataError when it cannot be labelled."""
        import soundfile as sf  # audio only: the other tasks import this module without libsndfile (GPU images)

        try:
            wave, rate = sf.read(item.audio, dtype="int16", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as err:
            raise DataError(f"unreadable or corrupt audio ({err})") from err
        if rate != RATE:
            raise DataError(f"{rate} Hz audio; the en-us acoustic model needs {RATE} Hz (resample it first)")
        words, missing = self.words(item.words)
        if missing:
            raise DataError(f"not in the dictionary: {' '.join(sorted(set(missing)))} (give their phones in a "
                            f"--dict file, one 'WORD PH1 PH2 ...' per line)")
        if not words:
            raise DataError("empty transcript")
        pcm = wave[:, 0].tobytes()
        d = self.decoder
        try:
            # Pass 1, words: a grammar of exactly these words in order, in which the search may also
            # pick a word's other pronunciations ("a" spelt out is EY, not AH) and pauses between words.
            d.add_fsg("utt", d.create_fsg("utt", 0, len(words), [(i, i + 1, 1.0, w) for i, w in enumerate(words)]))
            d.activate_search("utt")
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            if d.hyp() is None:
                raise RuntimeError("no word alignment")
            chosen = [s.word for s in d.seg() if s.word not in ("<s>", "</s>", "(NULL)")]
            # Pass 2, phones: the words and pauses pass 1 chose (fillers as silence), state by state.
            d.set_align_text(" ".join(w if w[0] not in "<+[" else "<sil>" for w in chosen))
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            d.set_alignment()
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            alignment = d.get_alignment()
            phones = list(alignment.phones()) if alignment is not None else []
        except RuntimeError:  # pocketsphinx found no path through the words
            phones = []
        if not phones:
            clipped = float((abs(wave[:, 0].astype("int32")) >= 32000).mean())
            why = f"; {clipped:.1%} of the samples are at full scale (clipped audio)" if clipped > 1e-3 else ""
            raise DataError(f"no alignment: audio and transcript may not match{why}")
        n = len(wave)
        cuts = [0] + [min(p.start * SHIFT + EDGE, n) for p in phones[1:]] + [n]
        segments = [(cuts[i], cuts[i + 1], p.name) for i, p in enumerate(phones)]
        merged: list[tuple[int, int, str]] = []
        for s, e, name in segments:
            if s >= e:
                continue
            if merged and name == "SIL" and merged[-1][2] == "SIL":  # a pause beside the closing silence: one SIL
                merged[-1] = (merged[-1][0], e, name)
            else:
                merged.append((s, e, name))
        return merged


def write_phn(path: Path, segments: list[tuple[int, int, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(f"{s} {e} {name}\n" for s, e, name in segments))
    os.replace(tmp, path)  # a label file is there whole or not at all: a stopped run resumes safely


_worker: Aligner | None = None


def _init_worker(user_dict: dict[str, list[str]] | None) -> None:
    global _worker
    _worker = Aligner(user_dict)


def _align_one(item: Item) -> tuple[Item, list[tuple[int, int, str]] | None, str | None]:
    try:
        return item, _worker.align(item), None
    except (DataError, OSError, RuntimeError, ValueError) as err:  # one utterance's problem, not the run's
        return item, None, str(err) if isinstance(err, DataError) else f"{type(err).__name__}: {err}"


def label_key(item: Item) -> str:
    """What a label was made from: its words and its audio's sha256. Not the file's size: a WAV
    re-recorded or denoised to the same length has the same size and other samples."""
    digest = sha256_of(item.audio) if item.audio.is_file() else "missing"
    return hashlib.sha256(f"{' '.join(item.words)}|sha256:{digest}".encode()).hexdigest()[:16]


def size_key(item: Item) -> str:
    """The key manifests written before 2026-12-04 hold (words and audio size): accepted once, and
    rewritten as label_key, so that upgrading does not align a whole corpus again."""
    size = item.audio.stat().st_size if item.audio.is_file() else -1
    return hashlib.sha256(f"{' '.join(item.words)}|{size}".encode()).hexdigest()[:16]



def existing_label(phn: Path) -> Path | None:
    return next((p for p in (phn, phn.with_suffix(".PHN")) if p.is_file()), None)


class Manifest:
    """<dest>/align-labels.tsv: the labels this tool wrote, appended one by one so that a stopped run
    knows its own; labels missing from it (hand labels, say) are never overwritten or moved."""

    def __init__(self, dest: Path) -> None:
        self.dest, self.path = dest, dest / MANIFEST
        self.keys: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                rel, _, key = line.partition("\t")
                self.keys[rel] = key  # a later line wins
        try:
            dest.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a")
        except OSError as err:
            raise DataError(f"{dest}: cannot write labels there ({err.strerror or err}); give --out a folder you "
                            f"can write to") from err

    def rel(self, phn: Path) -> str:
        return phn.relative_to(self.dest).as_posix() if phn.is_relative_to(self.dest) else str(phn)

    def add(self, phn: Path, key: str) -> None:
        self.keys[self.rel(phn)] = key
        self.file.write(f"{self.rel(phn)}\t{key}\n")
        self.file.flush()

    def drop(self, phn: Path) -> None:
        self.keys.pop(self.rel(phn), None)

    def close(self) -> None:  # rewritten compactly: one line per label that still stands
        self.file.close()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # two runs may label at once (--jobs)
        tmp.write_text("".join(f"{rel}\t{key}\n" for rel, key in sorted(self.keys.items())))
        os.replace(tmp, self.path)


def align_corpus(root: Path, out: Path | None = None, layout: str | None = None, user_dict: Path | None = None,
                 jobs: int = 1, force: bool = False, progress: bool = True) -> Summary:
    """Label every utterance of a corpus. Labels this tool wrote earlier from the same words and audio
    are kept unless `force`; labels it did not write are left alone."""
    global _worker
    words = read_user_dict(user_dict) if user_dict else None
    items, problems = read_items(root, layout, out)
    checked = Aligner(words)  # a dictionary pocketsphinx refuses fails here, before any worker starts
    dest = out.resolve() if out is not None else Path(root).resolve()
    manifest = Manifest(dest)
    todo, kept, foreign = [], 0, 0
    for it in items:
        label = existing_label(it.phn)
        if label is None:
            todo.append(it)
        elif manifest.rel(label) not in manifest.keys:
            foreign += 1
        elif force or (had := manifest.keys[manifest.rel(label)]) not in (key := label_key(it), size_key(it)):
            todo.append(it)  # asked to, or its words or audio changed since
        else:
            kept += 1
            if had != key:  # a manifest line from before content keys: this label stands, now by content
                manifest.add(label, key)
        if out is not None:  # `out` becomes a corpus on its own: the labels with links to their audio
            link = it.phn.with_suffix(it.audio.suffix)
            if not (link.is_symlink() or link.exists()):
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(it.audio)
    aligned = 0
    pool = None
    bar = tqdm(total=len(todo), desc="aligning", unit="utt", disable=not progress, mininterval=1)
    try:
        if jobs > 1 and len(todo) > 1:
            ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked decoder state
            pool = ctx.Pool(min(jobs, len(todo)), initializer=_init_worker, initargs=(words,))
            results = pool.imap_unordered(_align_one, todo, chunksize=max(1, min(8, len(todo) // (4 * jobs))))
        else:
            _worker = checked
            results = map(_align_one, todo)
        for item, segments, why in results:
            if segments is None:
                if item.phn.is_file():  # its earlier label no longer fits the words or audio: moved aside
                    item.phn.replace(item.phn.with_name(item.phn.name + ".stale"))
                    manifest.drop(item.phn)
                    why += f"; the earlier {item.phn.name} is now {item.phn.name}.stale"
                problems.append(Problem(item.utt, item.audio, why))
            else:
                write_phn(item.phn, segments)
                manifest.add(item.phn, label_key(item))
                aligned += 1
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        manifest.close()
        report = dest / REPORT
        tmp = report.with_name(f".{report.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["utterance", "path", "reason"])
            w.writerows([p.utt, str(p.path), p.reason] for p in problems)
        os.replace(tmp, report)
    return Summary(aligned=aligned, kept=kept, foreign=foreign, skipped=problems, report=report)
