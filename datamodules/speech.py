"""Framewise phone classification on TIMIT-layout corpora: audio + a `.phn` beside each utterance.

    utt.flac / utt.wav / UTT.WAV (NIST SPHERE)   16-bit speech, read with soundfile
    utt.phn                                      "start_sample end_sample phone" per line

Utterances whose audio has no `.phn` (those the aligner could not label) are left out and counted.
Each utterance becomes 40 log-mel filterbanks (torchaudio's Kaldi-compatible front end: 25 ms
window, 10 ms shift; optional deltas) and one label per frame, the phone covering the frame's
centre sample:

    samples  0 ........ 400 ........ 800                     (16 kHz: 25 ms = 400, 10 ms = 160)
    frame 0  [0, 400)   centre 200
    frame 1      [160, 560)   centre 360
    frame i  [160 i, 160 i + 400)  centre 160 i + 200  ->  the .phn segment with start <= centre < end

A batch is time-major and padded: feats (T, B, F), labels (T, B) with -100 on padding, lengths (B,).
Features are cached per utterance in the project cache (keyed by the audio's sha256 and the feature
settings); normalisation statistics come from the training split only.

Corpora (`corpus:`), each with its own split rules:
  an4           an4/wav/an4_clstk/<spk>/ (train; `valid_speakers` held out) and an4test_clstk/ (test);
                fetched from CMU and labelled by forced alignment (`bench align`) when missing
  timit-sample  timit-sample/dr<N>-<spk>/ (NLTK); `valid_speakers` and `test_speakers` named in the config
  timit         the LDC tree TIMIT/{TRAIN,TEST}/DR<N>/<SPK>/: train = TRAIN, test = the 24-speaker core
                test set, valid = the other TEST speakers (or `valid_speakers` among them)
A setting the corpus's fixed split would ignore (`test_speakers` for an4 or timit, a validation
speaker from AN4's test folder or from TIMIT's TRAIN or core test set) is refused, not dropped.
SA sentences (read by every speaker) are left out of every split, as is usual for TIMIT.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
import torchaudio
from torch import Tensor
from torch.utils.data import DataLoader, StackDataset
from tqdm import tqdm

from datamodules import download as fetch
from datamodules import sources
from datamodules.align import AUDIO_SUFFIXES, REPORT
from datamodules.bad_records import BadRecordPolicy, BadRecords
from datamodules.base import TaskDataModule
from datamodules.phones import PHONE_SETS, PhoneSet
from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

IGNORE = -100
# TIMIT's documentation (testset.doc, Table 1): 2 male + 1 female speaker per dialect region.
TIMIT_CORE_TEST = {
    "MDAB0", "MWBT0", "FELC0", "MTAS1", "MWEW0", "FPAS0", "MJMP0", "MLNT0", "FPKT0", "MLLL0", "MTLS0", "FJLM0",
    "MBPM0", "MKLT0", "FNLP0", "MCMJ0", "MJDH0", "FMGD0", "MGRT0", "MNJM0", "FDHC0", "MJLN0", "MPAM0", "FMLD0",
}


# The corpora whose test set is fixed, so a `test_speakers` setting would be ignored.
FIXED_TEST = {"an4": "the speakers of wav/an4test_clstk/", "timit": "the 24-speaker core test set"}


@dataclass(frozen=True)
class Utterance:
    speaker: str
    audio: Path
    phn: Path | None  # None: no labels beside the audio (skipped and counted like other bad records)


def _utterances(folder: Path, speaker: str) -> list[Utterance]:
    by_stem: dict[str, list[Path]] = {}
    for audio in sorted(folder.iterdir()):
        # TIMIT's SA1/SA2 (two sentences every speaker reads) are left out, as is usual; nothing else
        # whose name merely starts with "sa" (sarah_01.wav).
        if audio.suffix.lower() not in AUDIO_SUFFIXES or re.fullmatch(r"sa\d+", audio.stem.lower()):
            continue
        by_stem.setdefault(audio.stem.lower(), []).append(audio)
    out = []
    for copies in by_stem.values():
        # utt.flac beside utt.wav (a converted copy left in place) is one utterance, not two: counted
        # twice it would weigh double in training and in the test score.
        copies.sort(key=lambda a: AUDIO_SUFFIXES.index(a.suffix.lower()))
        audio = copies[0]
        if len(copies) > 1:
            _warn_copies(audio, tuple(copies[1:]))
        phn = next((p for p in (audio.with_suffix(".phn"), audio.with_suffix(".PHN")) if p.is_file()), None)
        out.append(Utterance(speaker, audio, phn))
    return sorted(out, key=lambda u: u.audio.name)


@functools.cache
def _warn_copies(kept: Path, dropped: tuple[Path, ...]) -> None:  # once per file, not per setup()
    log.warning("%s: also as %s; reading it once, from %s (remove the other copies to silence this)",
                kept.with_suffix(""), ", ".join(p.name for p in dropped), kept.name)


def some_speakers(utts: list[Utterance], n: int) -> list[Utterance]:
    """The utterances of n speakers spread evenly over the speakers' sorted names (AN4's names start
    with their sex, f or m, so both stay in); all of them when there are no more than n."""
    names = sorted({u.speaker for u in utts})
    if n >= len(names):
        return utts
    keep = {names[i * len(names) // n] for i in range(n)}
    return [u for u in utts if u.speaker in keep]


def find_splits(root: Path, corpus: str, valid_speakers: list[str], test_speakers: list[str]) -> dict[str, list[Utterance]]:
    """Utterances of train/valid/test for one corpus under the data root."""
    base = root / corpus
    if not base.is_dir():
        raise DataError(f"{base}: not found. Put {sources.FETCH_HELP.get(corpus, corpus)} there, or fix --data-root")
    valid, test = {s.lower() for s in valid_speakers}, {s.lower() for s in test_speakers}
    if test and corpus in FIXED_TEST:
        raise DataError(f"data.test_speakers: {corpus}'s test set is fixed ({FIXED_TEST[corpus]}) and the setting "
                        f"would be ignored; remove it (it is for timit-sample)")
    if valid & test:
        raise DataError(f"data.valid_speakers and data.test_speakers both name {', '.join(sorted(valid & test))}; "
                        f"hold each speaker out for one split only")
    splits: dict[str, list[Utterance]] = {"train": [], "valid": [], "test": []}
    if corpus == "an4":
        for split_dir, default in (("an4_clstk", "train"), ("an4test_clstk", "test")):
            folder = base / "wav" / split_dir
            if not folder.is_dir():
                raise DataError(f"{folder}: not found. Put {sources.FETCH_HELP['an4']} there")
            for spk in sorted(p for p in folder.iterdir() if p.is_dir()):
                if default == "test" and spk.name.lower() in valid:  # it would leave the test set for valid
                    raise DataError(f"{spk}: data.valid_speakers names a speaker of AN4's test set; pick validation "
                                    f"speakers from {base / 'wav' / 'an4_clstk'}")
                split = "valid" if spk.name.lower() in valid else default
                splits[split] += _utterances(spk, spk.name)
    elif corpus == "timit-sample":
        for spk in sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("dr")):
            name = spk.name.lower()
            split = "valid" if name in valid else "test" if name in test else "train"
            splits[split] += _utterances(spk, spk.name)
    elif corpus == "timit":
        for part in sorted(p for p in base.iterdir() if p.is_dir() and p.name.lower() in ("train", "test")):
            for spk in sorted(s for dr in part.iterdir() if dr.is_dir() for s in dr.iterdir() if s.is_dir()):
                if part.name.lower() == "train":
                    split = "train"
                elif spk.name.upper() in TIMIT_CORE_TEST:
                    split = "test"
                else:
                    split = "valid" if not valid or spk.name.lower() in valid else "unused"
                if split in ("train", "test") and spk.name.lower() in valid:  # it would stay where it is, unsaid
                    role = "training" if split == "train" else "core test"
                    raise DataError(f"{spk}: data.valid_speakers names a TIMIT {role} speaker; validation speakers "
                                    f"come from TEST outside the 24-speaker core test set")
                splits.setdefault(split, []).extend(_utterances(spk, spk.name))
    else:
        raise DataError(f"unknown speech corpus {corpus!r}; known: an4, timit-sample, timit")
    seen = {u.speaker.lower() for utts in splits.values() for u in utts}
    unknown = sorted((valid | test) - seen)
    if unknown:  # a typo would move nobody: the speaker trains, and the held-out split shrinks unsaid
        raise DataError(f"{base}: no speaker folder named {', '.join(unknown)} (data.valid_speakers / "
                        f"data.test_speakers); check the names against the corpus's folders")
    for split in ("train", "valid", "test"):
        if not splits[split]:
            raise DataError(f"{base}: the {split} split is empty; check the speaker lists in the config")
    overlap = {u.speaker for u in splits["train"]} & {u.speaker for u in splits["valid"] + splits["test"]}
    if overlap:
        raise DataError(f"{base}: speakers {sorted(overlap)} are in train and a held-out split")
    return splits


def folder_utterances(folder: Path) -> list[Utterance]:
    """Every utterance under a folder, at any depth, each folder of audio one speaker (TIMIT's
    <dialect>/<speaker>/ layout, AN4's <speaker>/, or a flat folder)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; give a folder of audio files with a .phn beside each")
    dirs = sorted({a.parent for a in folder.rglob("*") if a.suffix.lower() in AUDIO_SUFFIXES})
    utts = [u for d in dirs for u in _utterances(d, d.name)]
    if not utts:
        raise DataError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under it")
    return utts


def read_phn(path: Path, n_samples: int, phones: PhoneSet) -> list[tuple[int, int, int]]:
    """(start, end, training-label id or IGNORE) per line; errors name the file and line."""
    index = phones.train_index()
    segments = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); a .phn file is 'start_sample end_sample phone' lines") from err
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror or err})") from err
    previous_end = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdecimal() or not parts[1].isascii() \
                or not parts[1].isdecimal():
            raise DataError(f"{path}:{lineno}: expected 'start_sample end_sample phone', got {line!r}")
        start, end, symbol = int(parts[0]), int(parts[1]), parts[2]
        if start >= end:
            raise DataError(f"{path}:{lineno}: segment ends ({end}) before it starts ({start})")
        if start < previous_end:  # TIMIT's files and the aligner's run in order, end to start
            raise DataError(f"{path}:{lineno}: segment starts at {start}, before the previous one ends "
                            f"({previous_end}); the file is damaged")
        previous_end = end
        if end > n_samples:
            raise DataError(f"{path}:{lineno}: segment ends at sample {end}, past the audio's {n_samples} samples")
        if symbol not in phones.raw:
            raise DataError(f"{path}:{lineno}: unknown phone {symbol!r} for phone set {phones.name}")
        label = phones.raw[symbol]
        segments.append((start, end, IGNORE if label is None else index[label]))
    if not segments:
        raise DataError(f"{path}: no segments")
    return segments


def frame_labels(segments: list[tuple[int, int, int]], n_frames: int, shift: int, window: int) -> Tensor:
    """The label of the segment covering each frame's centre sample; IGNORE where none does."""
    labels = torch.full((n_frames,), IGNORE, dtype=torch.long)
    centres = torch.arange(n_frames) * shift + window // 2
    for start, end, label in segments:
        labels[(centres >= start) & (centres < end)] = label
    return labels


@dataclass(frozen=True)
class Features:
    n_mels: int = 40
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    deltas: bool = True

    @property
    def dim(self) -> int:
        return self.n_mels * (3 if self.deltas else 1)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]

    def compute(self, wave: Tensor, sample_rate: int) -> Tensor:
        """(samples,) float in [-1, 1] -> (frames, dim)."""
        fbank = torchaudio.compliance.kaldi.fbank(
            wave.unsqueeze(0) * 32768.0,  # Kaldi's scale: 16-bit integers
            num_mel_bins=self.n_mels, frame_length=self.frame_length_ms, frame_shift=self.frame_shift_ms,
            dither=0.0, sample_frequency=sample_rate,
        )
        if not self.deltas:
            return fbank
        d1 = torchaudio.functional.compute_deltas(fbank.T)
        d2 = torchaudio.functional.compute_deltas(d1)
        return torch.cat([fbank.T, d1, d2]).T


def aligner_skipped(folder: Path) -> set[Path]:
    """The audio `bench align` could not align when it labelled `folder` (its align-report.tsv): left
    unlabelled on purpose, not labelling to finish, so no run aligns them again (nor tries to write
    into a read-only copy for them)."""
    try:
        with open(folder / REPORT, newline="", encoding="utf-8") as f:
            return {Path(row["path"]).resolve() for row in csv.DictReader(f, delimiter="\t") if row.get("path")}
    except (OSError, csv.Error, UnicodeDecodeError):  # no report (nothing skipped, or never aligned here)
        return set()


def read_audio(path: Path, data: bytes, decode: bool) -> tuple[Tensor | None, int, int]:
    """(samples or None, sample rate, sample count) from a file's bytes; decoding only if asked."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:  # one open: header, then samples if asked
            if f.frames >= 2**62:  # libsndfile's answer for a FLAC written to a pipe: no length in its header
                raise DataError(f"{path}: audio of unknown length (a FLAC written to a pipe?); re-encode it to a "
                                f"file, e.g. `sox in.flac out.flac`")
            if not decode:
                return None, f.samplerate, f.frames
            wave, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except (RuntimeError, ValueError, sf.LibsndfileError) as err:
        why = re.sub(r"^Error opening <[^>]*>: ", "", str(err))  # soundfile names the in-memory buffer, not the file
        raise DataError(f"{path}: unreadable or corrupt audio ({why})") from err
    if wave.shape[0] == 0:
        raise DataError(f"{path}: no audio samples")
    return torch.from_numpy(wave[:, 0].copy()), rate, wave.shape[0]


def stack_context(feats: Tensor, k: int) -> Tensor:
    """(T, F) -> (T, (2k + 1) F): each frame with its k neighbours on either side, edge frames repeated."""
    if k == 0:
        return feats
    padded = torch.cat([feats[:1].expand(k, -1), feats, feats[-1:].expand(k, -1)])
    return padded.unfold(0, 2 * k + 1, 1).transpose(1, 2).flatten(1)  # unfold: (T, F, 2k + 1)


def delay_labels(feats: Tensor, labels: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """Frame t's label is asked for at step t + d, so the one-way LSTM has heard d frames past it
    (Sak et al. 2014 delay by 5). The last frame is repeated d times so every label keeps a step.

        feats   x0 x1 x2 x3 x3 x3            (d = 2)
        labels  -- -- y0 y1 y2 y3            (-- = IGNORE: no loss, not scored)
    """
    if d == 0:
        return feats, labels
    return torch.cat([feats, feats[-1:].expand(d, -1)]), torch.cat([torch.full((d,), IGNORE), labels])


def pad_batch(items: list[tuple[Tensor, Tensor]], context: int = 0, delay: int = 0) -> dict[str, Tensor]:
    items = [delay_labels(stack_context(f, context), y, delay) for f, y in items]
    lengths = torch.tensor([f.size(0) for f, _ in items])
    feats = torch.nn.utils.rnn.pad_sequence([f for f, _ in items])  # (T, B, F)
    labels = torch.nn.utils.rnn.pad_sequence([y for _, y in items], padding_value=IGNORE)  # (T, B)
    return {"feats": feats, "labels": labels, "lengths": lengths, "num_tokens": lengths.sum()}


class SpeechDataModule(TaskDataModule):
    def __init__(
        self,
        data_root: str | Path = "data",
        corpus: str = "an4",
        phone_set: str = "an4",
        valid_speakers: list[str] = (),
        test_speakers: list[str] = (),
        train_speakers: int | None = None,
        batch_size: int = 16,
        n_mels: int = 40,
        deltas: bool = True,
        context: int = 0,
        delay: int = 0,
        cache_dir: str | Path | None = None,
        bad_records: dict[str, Any] | None = None,
        test_sets: dict[str, str] | None = None,
        test_only: bool = False,
    ) -> None:
        """`test_sets`: name -> a folder of audio with a `.phn` beside each file (TIMIT's layout, any
        depth), scored as `test_<name>_*`; `test_only`: those alone, normalised with a checkpoint's
        training statistics. `train_speakers`: train on that many of the training speakers, spread
        evenly over their names in sorted order (a fixed choice, the same for every seed)."""
        super().__init__()
        self.keep_settings()
        self.test_sets, self.test_only = dict(test_sets or {}), test_only
        if phone_set not in PHONE_SETS:
            raise DataError(f"unknown phone_set {phone_set!r}; known: {', '.join(PHONE_SETS)}")
        self.data_root, self.corpus, self.batch_size = Path(data_root), corpus, batch_size
        self.phones = PHONE_SETS[phone_set]
        self.valid_speakers, self.test_speakers = list(valid_speakers), list(test_speakers)
        if train_speakers is not None and train_speakers < 1:
            raise DataError(f"data.train_speakers must be a positive number of speakers, got {train_speakers}")
        self.train_speakers = train_speakers
        self.features = Features(n_mels=n_mels, deltas=deltas)
        if context < 0 or delay < 0:
            raise DataError(f"data.context and data.delay count frames and must be >= 0, got {context} and {delay}")
        # Applied per batch, not stored: 11 stacked frames of AN4 would take 1.5 GB held in memory.
        self.collate = functools.partial(pad_batch, context=context, delay=delay)
        self.context = context
        self.cache_dir = Path(cache_dir) if cache_dir else fetch.default_cache_dir()
        self.bad_records = BadRecordPolicy.of(bad_records)
        self.sets: dict[str, StackDataset] = {}  # split -> (features, labels) per utterance
        self.rates: set[int] = set()  # sample rates read in the split being set up

    def data_files(self) -> list[Path]:
        """What the run reads: the settings hash covers their names and sizes."""
        extra = [self._folder(p) for p in self.test_sets.values()]
        return extra if self.test_only else [self.data_root / self.corpus, *extra]

    def _folder(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.data_root / p

    def prepare_data(self) -> None:
        if self.test_only:
            return
        # NLTK's sample has a public archive and known file hashes; AN4 comes from CMU and is labelled
        # here by forced alignment; TIMIT is licensed, so for it find_splits() says what to put where.
        folder = self.data_root / self.corpus
        if self.corpus == "an4":
            audio = [a for a in folder.glob("wav/*/*/*") if a.suffix in AUDIO_SUFFIXES]
            unlabelled = [a for a in audio if not a.with_suffix(".phn").is_file()]
            if unlabelled:
                skipped = aligner_skipped(folder)
                unlabelled = [a for a in unlabelled if a.resolve() not in skipped]
            if not audio or fetch.unfinished(sources.AN4, self.data_root):  # none yet, or a fetch that stopped
                fetch.download_large(sources.AN4, self.data_root)  # 64 MB: checked, then labelled
            elif (folder / "etc").is_dir() and unlabelled:
                try:  # audio without labels (from GitHub, or a stopped labelling): what is labelled is kept
                    sources.label_an4(folder)
                except OSError as err:
                    raise DataError(f"{folder}: some audio has no .phn and labelling it failed ({err}); run "
                                    f"`bench align {folder} --out <a writable folder>` and point --data-root there")
        if self.corpus == "timit-sample":
            folder = self.data_root / sources.TIMIT_SAMPLE.name
            if any(not (folder / n).is_file() for n in sources.TIMIT_SAMPLE.sha256 if n.endswith((".wav", ".phn"))):
                fetch.download(sources.TIMIT_SAMPLE, self.data_root)

    def _features(self, utt: Utterance) -> tuple[Tensor, Tensor]:
        try:
            data = utt.audio.read_bytes()  # read once: hashed for the cache key, decoded only on a miss
        except OSError as err:
            raise DataError(f"{utt.audio}: unreadable ({err.strerror or err})") from err
        cache = self.cache_dir / "speech-features" / self.features.key() / f"{hashlib.sha256(data).hexdigest()}.pt"
        feats = None
        if cache.is_file():
            try:
                feats = torch.load(cache, weights_only=True)
            except Exception:  # a damaged cache entry is recomputed, never trusted
                log.warning("%s: unreadable cache entry, recomputing", cache)
        wave, rate, n_samples = read_audio(utt.audio, data, decode=feats is None)
        self.check_audio(utt.audio, rate, n_samples)
        if feats is None:
            feats = self.features.compute(wave, rate)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            torch.save(feats, tmp)
            os.replace(tmp, cache)
        shift, window = int(rate * self.features.frame_shift_ms / 1000), int(rate * self.features.frame_length_ms / 1000)
        labels = frame_labels(read_phn(utt.phn, n_samples, self.phones), feats.size(0), shift, window)
        self.rates.add(rate)  # an utterance skipped as a bad record does not count
        return feats, labels

    def check_audio(self, path: Path, rate: int, n_samples: int) -> None:
        """Audio the features can be computed from, at the rate the model was trained on."""
        # Checkpoints from before the rate was recorded: AN4 and TIMIT, 16 kHz.
        # In a training run, the training split's rate once it is read (held-out splits come after it).
        trained_rate = self.restored.get("sample_rate", 16000) if self.restored else getattr(self, "sample_rate", -1)
        if trained_rate > 0 and rate != trained_rate:
            raise DataError(f"{path}: {rate} Hz audio; the model was trained on {trained_rate} Hz speech: resample "
                            f"it first (e.g. sox in.wav -r {trained_rate} out.wav)")
        if n_samples < rate * self.features.frame_length_ms / 1000:
            raise DataError(f"{path}: {n_samples} samples, shorter than one {self.features.frame_length_ms:g} ms frame")

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        if self.test_only and not self.restored:
            raise DataError("test_only needs the normalisation statistics of a trained model (load_state_dict)")
        splits = {} if self.test_only else find_splits(self.data_root, self.corpus, self.valid_speakers,
                                                       self.test_speakers)
        if self.train_speakers and splits:
            splits["train"] = some_speakers(splits["train"], self.train_speakers)
        for name, path in self.test_sets.items():
            splits[f"test_{name}"] = folder_utterances(self._folder(path))
        # Cached features load in seconds; a cold cache computes fbanks for every utterance.
        raw: dict[str, list[tuple[Tensor, Tensor]]] = {}
        for s in splits:
            if s not in ("train", "valid", "test", *self.stream_names()):
                continue
            if all(u.phn is None for u in splits[s]):
                where = (self._folder(self.test_sets[s.removeprefix("test_")]) if s.removeprefix("test_") in
                         self.test_sets else self.data_root / self.corpus)
                raise DataError(f"{where}: no {s} utterance has a .phn label file beside its audio; "
                                f"`bench align {where}` makes them from word transcripts")
            self.rates = set()
            bad, raw[s] = BadRecords(f"{self.corpus} {s} utterances", len(splits[s]), self.bad_records), []
            for utt in tqdm(splits[s], desc=f"features {self.corpus} {s}", unit="utt", leave=False, mininterval=2):
                try:
                    if utt.phn is None:  # e.g. one the aligner could not label (its align-report.tsv says why)
                        raise DataError(f"{utt.audio}: no .phn label file beside it (`bench align` makes them)")
                    raw[s].append(self._features(utt))
                except DataError as err:  # audio that does not read, a .phn that does not parse
                    bad.add(err)
            self.skipped += bad.check()
            if s == "train":  # the rate the model learns: later input at another is refused
                self.sample_rate = next(iter(self.rates)) if len(self.rates) == 1 else -1
                if len(self.rates) > 1:
                    log.warning("%s: training audio at several sample rates %s: features differ between them, and "
                                "no rate is checked on later input", self.corpus, sorted(self.rates))
        if self.restored:
            mean, std = self.restored["mean"], self.restored["std"]
        else:
            train = torch.cat([f for f, _ in raw["train"]])
            mean, std = train.mean(0), train.std(0).clamp_min(1e-5)  # training statistics only
        self.mean, self.std = mean, std
        for split, items in raw.items():
            unlabelled = sum(int((y == IGNORE).sum()) for _, y in items)
            frames = sum(y.numel() for _, y in items)
            if unlabelled:
                log.info("%s %s: %d of %d frames carry no training label (no segment or an unscored phone)",
                         self.corpus, split, unlabelled, frames)
            self.sets[split] = StackDataset([(f - mean) / std for f, _ in items], [y for _, y in items])
        log.info("%s: %s utterances", self.corpus, {s: len(d) for s, d in self.sets.items()})

    def learned(self) -> dict[str, Any]:
        if not hasattr(self, "mean"):
            return {}
        return {"mean": self.mean, "std": self.std,
                "sample_rate": getattr(self, "sample_rate", (self.restored or {}).get("sample_rate", -1))}

    def stream_names(self) -> list[str]:
        return ["test", "train_eval"] * (not self.test_only) + [f"test_{name}" for name in self.test_sets]

    def model_kwargs(self) -> dict:
        return {"input_size": self.features.dim * (2 * self.context + 1), "num_classes": len(self.phones.train),
                "fold_ids": self.phones.fold_ids(), "score_names": list(self.phones.score)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["train"], batch_size=self.batch_size, shuffle=True, collate_fn=self.collate)

    def _eval_loader(self, split: str) -> DataLoader:
        data = self.sets[split]
        return DataLoader(data, batch_size=self.batch_size, collate_fn=self.collate,
                          sampler=self.eval_sampler(data, f"{self.corpus}'s {split} set"))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> list[DataLoader]:
        # The held-out test set, then the training set once more in eval mode (no dropout), so the
        # train/test gap the paper discusses is measured on equal terms.
        own = [] if self.test_only else ["test", "train"]
        return [self._eval_loader(s) for s in (*own, *(f"test_{name}" for name in self.test_sets))]
