"""`bench align`: phone labels by forced alignment, on real AN4 utterances in each corpus layout,
with the inputs that go wrong (unknown words, bad audio, a transcript that does not match)."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmark.cli import main
from datamodules import download as fetch
from datamodules import sources
from datamodules.align import REPORT, align_corpus, read_items, read_user_dict
from datamodules.phones import PHONE_SETS
from datamodules.speech import SpeechDataModule, read_phn
from tasks.nn.errors import DataError
from tests.conftest import REAL_DATA_ROOT, need_real_data

# Real AN4 utterances (train speaker fash): audio, the corpus' transcript, and its shared labels.
UTTS = ("an251-fash-b", "an253-fash-b", "cen1-fash-b", "cen2-fash-b")  # YES / GO / H I N I C H / A M Y


@pytest.fixture
def an4_real() -> Path:
    return need_real_data(REAL_DATA_ROOT / "an4" / "wav" / "an4_clstk" / "fash" / "an251-fash-b.flac").parents[3]


def transcripts(an4: Path) -> dict[str, str]:
    out = {}
    for line in (an4 / "etc" / "an4_train.transcription").read_text().splitlines():
        words, _, utt = line.rpartition("(")
        out[utt.strip(") ")] = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
    return out


def simple_corpus(an4: Path, folder: Path, utts=tuple(UTTS)) -> Path:
    """The chosen AN4 utterances as audio + a .txt of its words each, in one folder."""
    text = transcripts(an4)
    folder.mkdir(parents=True, exist_ok=True)
    for utt in utts:
        shutil.copy(an4 / "wav" / "an4_clstk" / "fash" / f"{utt}.flac", folder / f"{utt}.flac")
        (folder / f"{utt}.txt").write_text(text[utt] + "\n")
    return folder


def frames(phn: Path, n: int) -> list[str]:
    segs = [line.split() for line in phn.read_text().splitlines()]
    return [next((p for s, e, p in segs if int(s) <= 160 * i + 200 < int(e)), "-") for i in range((n - 400) // 160 + 1)]


def test_aligned_labels_cover_the_audio_and_agree_with_the_shared_ones(an4_real, tmp_path):
    corpus = simple_corpus(an4_real, tmp_path / "c")
    s = align_corpus(corpus, jobs=1, progress=False)
    assert (s.aligned, s.kept, s.foreign, s.skipped) == (len(UTTS), 0, 0, [])
    same = total = 0
    for utt in UTTS:
        audio = corpus / f"{utt}.flac"
        n = sf.info(audio).frames
        segments = read_phn(corpus / f"{utt}.phn", n, PHONE_SETS["an4"])  # parses, within the audio, AN4's phones
        assert segments[0][0] == 0 and all(a[1] == b[0] for a, b in zip(segments, segments[1:]))  # no gaps
        assert n - segments[-1][1] < 400  # to the last whole frame
        names = [line.split()[2] for line in (corpus / f"{utt}.phn").read_text().splitlines()]
        assert names[0] == names[-1] == "SIL" and names[1] != "SIL"
        ours = frames(corpus / f"{utt}.phn", n)
        shared = frames(an4_real / "wav" / "an4_clstk" / "fash" / f"{utt}.phn", n)
        same += sum(a == b for a, b in zip(ours, shared))
        total += len(ours)
    # The shared labels came from the same aligner with its boundaries one frame earlier (at the
    # start of pocketsphinx's frame, not halfway between frame centres): about 85% of frames agree.
    assert 0.75 < same / total < 0.95
    # "yes": silence, Y EH S, silence
    assert [line.split()[2] for line in (corpus / "an251-fash-b.phn").read_text().splitlines()] == \
        ["SIL", "Y", "EH", "S", "SIL"]
    # a letter spelt out takes the dictionary's other pronunciation: "A M Y" starts EY, not AH
    assert (corpus / "cen2-fash-b.phn").read_text().split()[2::3][:2] == ["SIL", "EY"]


def test_kaldi_layout_and_two_workers_give_the_same_labels(an4_real, tmp_path):
    simple = simple_corpus(an4_real, tmp_path / "simple")
    align_corpus(simple, jobs=1, progress=False)
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    text = transcripts(an4_real)
    (kaldi / "text").write_text("".join(f"{u} {text[u]}\n" for u in UTTS))
    (kaldi / "wav.scp").write_text("".join(f"{u} audio/{u}.flac\n" for u in UTTS))
    (kaldi / "audio").mkdir()
    for u in UTTS:
        shutil.copy(simple / f"{u}.flac", kaldi / "audio" / f"{u}.flac")
    (kaldi / "text").write_text((kaldi / "text").read_text() + "extra GO\n")  # no audio for this one
    (kaldi / "wav.scp").write_text((kaldi / "wav.scp").read_text() + "extra audio/missing.flac\n")
    s = align_corpus(kaldi, out=tmp_path / "labels", jobs=2, progress=False)  # 2 workers, one utterance each chunk
    assert s.aligned == len(UTTS) and [(p.utt, p.reason.split(" (")[0]) for p in s.skipped] == [
        ("extra", "transcript without audio")]
    for u in UTTS:
        assert (tmp_path / "labels" / "audio" / f"{u}.phn").read_text() == (simple / f"{u}.phn").read_text()
        assert (tmp_path / "labels" / "audio" / f"{u}.flac").resolve() == (kaldi / "audio" / f"{u}.flac").resolve()


def test_bad_inputs_are_skipped_and_reported_and_the_rest_aligned(an4_real, tmp_path):
    corpus = simple_corpus(an4_real, tmp_path / "c", utts=("an251-fash-b", "an253-fash-b", "cen1-fash-b"))
    (corpus / "cen1-fash-b.txt").write_text("H I N I C AITCHH\n")  # a spelling CMUdict lacks
    (corpus / "an253-fash-b.txt").write_text("ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE "
                                             "THIRTEEN FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN\n")
    (corpus / "broken.flac").write_bytes(b"fLaC" + bytes(100))  # truncated audio
    (corpus / "broken.txt").write_text("YES\n")
    sf.write(corpus / "slow.wav", np.zeros(8000, dtype=np.int16), 8000)  # 8 kHz
    (corpus / "slow.txt").write_text("YES\n")
    (corpus / "orphan.txt").write_text("NO\n")  # a transcript without audio
    shutil.copy(corpus / "an251-fash-b.flac", corpus / "untranscribed.flac")
    s = align_corpus(corpus, jobs=1, progress=False)
    assert s.aligned == 1 and (corpus / "an251-fash-b.phn").is_file()
    why = {p.utt: p.reason for p in s.skipped}
    assert "aitchh" in why["cen1-fash-b"] and "--dict" in why["cen1-fash-b"]
    assert why["an253-fash-b"].startswith("no alignment")  # 19 numbers do not fit in 0.7 s of "GO"
    assert "unreadable" in why["broken"] and "8000 Hz" in why["slow"]
    assert why["orphan"] == "transcript without audio" and why["untranscribed"] == "audio without a transcript"
    for utt in ("an253-fash-b", "cen1-fash-b", "broken", "slow"):
        assert not (corpus / f"{utt}.phn").exists()  # never a guessed label
    report = (corpus / REPORT).read_text().splitlines()
    assert report[0] == "utterance\tpath\treason" and len(report) == 1 + len(s.skipped)

    # The missing word supplied by a user dictionary; what is labelled already is kept (a resumed run).
    # A word CMUdict has ("YES") becomes one more pronunciation, not an error.
    (tmp_path / "my.dict").write_text("# word  phones\nAITCHH  EY1 CH\nYES  Y AE1 S\n")
    again = align_corpus(corpus, user_dict=tmp_path / "my.dict", jobs=2, progress=False)
    assert again.aligned == 1 and again.kept == 1
    assert (corpus / "cen1-fash-b.phn").read_text().split()[2::3][-3:] == ["EY", "CH", "SIL"]
    assert not list(corpus.glob(".*.tmp"))


def test_an_edited_transcript_is_aligned_again_and_hand_labels_are_never_touched(an4_real, tmp_path):
    corpus = simple_corpus(an4_real, tmp_path / "c", utts=("an251-fash-b", "an253-fash-b"))
    hand = "0 8000 SIL\n8000 11200 G\n"  # a label this tool did not write
    (corpus / "an253-fash-b.PHN").write_text(hand)
    s = align_corpus(corpus, jobs=1, progress=False)
    assert (s.aligned, s.kept, s.foreign) == (1, 0, 1)
    # The transcript changes after alignment: its label no longer fits, and this one cannot be aligned.
    (corpus / "an251-fash-b.txt").write_text("SEVENTEEN SEVENTY SEVEN SEVENTEEN SEVENTY SEVEN\n")
    s = align_corpus(corpus, jobs=1, force=True, progress=False)
    assert (s.aligned, s.foreign) == (0, 1) and "stale" in s.skipped[0].reason
    assert not (corpus / "an251-fash-b.phn").exists() and (corpus / "an251-fash-b.phn.stale").is_file()
    assert (corpus / "an253-fash-b.PHN").read_text() == hand and not (corpus / "an253-fash-b.phn").exists()


def test_bad_command_line_input_gets_one_clear_line(tmp_path, capsys):
    (tmp_path / "d").write_text("GOOD  G UH D\nBAD  B QQ D\n")
    with pytest.raises(DataError, match=r"d:2: .*unknown: QQ"):
        read_user_dict(tmp_path / "d")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "text").write_text("u1 YES\n")
    for args, message in (([str(tmp_path / "nothing-here")], "nothing-here: not a folder"),
                          ([str(tmp_path / "c"), "--layout", "kaldi"], "wav.scp: not found"),
                          ([str(tmp_path / "c"), "--dict", str(tmp_path / "no.dict")], "no.dict: dictionary file not")):
        assert main(["align", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bench: error: ") and message in err[0]


def test_an4_layout_reads_the_corpus_file_lists(an4_real, tmp_path):
    items, problems = read_items(an4_real, out=tmp_path / "out")
    assert len(items) == 1077 and {i.utt for i in items} >= set(UTTS)
    yes = next(i for i in items if i.utt == "an251-fash-b")
    assert yes.words == ("YES",) and yes.phn == tmp_path / "out" / "wav" / "an4_clstk" / "fash" / "an251-fash-b.phn"
    # the shared copy lacks one utterance its transcription lists
    assert [(p.utt, p.reason.split(" (")[0]) for p in problems] == [("cen7-fash-b", "transcript without audio")]


def an4_layout(an4: Path, src: Path, replace: dict[str, str] | None = None) -> Path:
    """A few real utterances in AN4's own layout (wav/<part>/<speaker>/, etc/*.transcription and
    .fileids), without labels; `replace` gives some utterances other words."""
    text = transcripts(an4)
    lines = {"an4_train": [], "an4_test": []}
    for part, spk, utts in (("an4_clstk", "fash", ("an251-fash-b", "an253-fash-b", "cen1-fash-b")),
                            ("an4_clstk", "fbbh", ("an86-fbbh-b", "an87-fbbh-b")),
                            ("an4test_clstk", "fcaw", ("an406-fcaw-b", "an407-fcaw-b"))):
        (src / "wav" / part / spk).mkdir(parents=True, exist_ok=True)
        split = "an4_train" if part == "an4_clstk" else "an4_test"
        for utt in utts:
            shutil.copy(an4 / "wav" / part / spk / f"{utt}.flac", src / "wav" / part / spk)
            words = (replace or {}).get(utt) or text.get(utt) or next(
                line.rpartition("(")[0].strip() for line in (an4 / "etc" / f"{split}.transcription").read_text()
                .splitlines() if f"({utt})" in line)
            lines[split].append((f"{part}/{spk}/{utt}", f"<s> {words} </s> ({utt})"))
    (src / "etc").mkdir()
    for split, rows in lines.items():
        (src / "etc" / f"{split}.fileids").write_text("".join(f"{f}\n" for f, _ in rows))
        (src / "etc" / f"{split}.transcription").write_text("".join(f"{t}\n" for _, t in rows))
    return src


def test_the_speech_task_reads_an_aligned_corpus_and_leaves_unlabelled_audio_out(an4_real, tmp_path):
    """An AN4-layout corpus from a few real utterances, labelled by `bench align --out`; one
    utterance the aligner cannot label (its transcript replaced) is left out of training, counted."""
    src = an4_layout(an4_real, tmp_path / "src", replace={"cen1-fash-b": "SEVENTEEN SEVENTY SEVEN " * 6})
    assert main(["align", str(src), "--out", str(tmp_path / "root" / "an4"), "--jobs", "1"]) == 0
    assert len(list((tmp_path / "root" / "an4").rglob("*.phn"))) == 6

    kw = dict(corpus="an4", phone_set="an4", valid_speakers=["fbbh"], cache_dir=tmp_path / "cache", context=1, delay=2)
    with pytest.raises(DataError, match="cen1-fash-b.flac: no .phn label file beside it"):
        SpeechDataModule(tmp_path / "root", **kw).setup()  # strict without a bad-records policy
    dm = SpeechDataModule(tmp_path / "root", **kw, bad_records={"skip_above": 1, "max_fraction": 0.5})
    dm.setup()
    assert {s: len(d) for s, d in dm.sets.items()} == {"train": 2, "valid": 2, "test": 2}
    assert len(dm.skipped) == 1 and "cen1-fash-b" in dm.skipped[0]
    batch = next(iter(dm.train_dataloader()))
    assert batch["feats"].size(-1) == 3 * dm.features.dim == dm.model_kwargs()["input_size"]
    assert (batch["labels"][:2] == -100).all()  # the first `delay` steps ask for no label


def test_a_speech_run_labels_an4_audio_that_has_no_labels(an4_real, tmp_path):
    an4_layout(an4_real, tmp_path / "an4")  # the audio and transcripts, as GitHub's copy has them
    dm = SpeechDataModule(tmp_path, corpus="an4", phone_set="an4", valid_speakers=["fbbh"],
                          cache_dir=tmp_path / "cache")
    dm.prepare_data()
    assert len(list((tmp_path / "an4").rglob("*.phn"))) == 7
    stamp = (tmp_path / "an4" / REPORT).stat().st_mtime_ns
    dm.prepare_data()  # all labelled: nothing to do
    assert (tmp_path / "an4" / REPORT).stat().st_mtime_ns == stamp
    dm.setup()
    assert {s: len(d) for s, d in dm.sets.items()} == {"train": 3, "valid": 2, "test": 2}


def test_fetch_an4_checks_every_utterances_samples_then_aligns(an4_real, tmp_path, monkeypatch):
    """CMU's tarball layout (an4/wav/..., an4/etc/...) with SPHERE-like containers swapped for WAV:
    the check is on samples, so any lossless container passes; a changed sample fails it."""
    utts = ("an251-fash-b", "an253-fash-b")
    tarpath = tmp_path / "root" / "an4" / ".downloads" / "an4_sphere.tar.gz"
    tarpath.parent.mkdir(parents=True)
    text = transcripts(an4_real)

    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    def build(flip: bool):
        with tarfile.open(tarpath, "w:gz") as tar:
            for k, utt in enumerate(utts):
                samples, rate = sf.read(an4_real / "wav" / "an4_clstk" / "fash" / f"{utt}.flac", dtype="int16")
                if flip and k == 1:
                    samples = samples.copy()
                    samples[100] += 1
                buf = io.BytesIO()
                sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
                add(tar, f"an4/wav/an4_clstk/fash/{utt}.wav", buf.getvalue())
            add(tar, "an4/etc/an4_train.fileids", "".join(f"an4_clstk/fash/{u}\n" for u in utts).encode())
            add(tar, "an4/etc/an4_train.transcription", "".join(f"<s> {text[u]} </s> ({u})\n" for u in utts).encode())

    sums = {f"wav/an4_clstk/fash/{u}": hashlib.sha256(sf.read(an4_real / "wav" / "an4_clstk" / "fash" / f"{u}.flac",
                                                              dtype="int16")[0].astype("<i2").tobytes()).hexdigest()
            for u in utts}
    monkeypatch.setattr(sources, "AN4_SAMPLE_SUMS", sums)
    monkeypatch.setattr(fetch, "_remote_size", lambda url, timeout: None)  # no network here
    build(flip=True)
    with pytest.raises(DataError, match="1 of 2 AN4 utterances fail the sample check.*an253-fash-b.wav"):
        fetch.download_large(sources.AN4, tmp_path / "root")
    shutil.rmtree(tmp_path / "root" / "an4" / "wav")
    (tmp_path / "root" / "an4" / "SHA256SUMS").unlink()
    build(flip=False)
    fetch.download_large(sources.AN4, tmp_path / "root")  # an4 needs no --yes: 64 MB
    labels = sorted(p.name for p in (tmp_path / "root" / "an4").rglob("*.phn"))
    assert labels == [f"{u}.phn" for u in utts]


def test_audio_changed_to_the_same_size_is_aligned_again_and_old_size_keys_are_kept_once(an4_real, tmp_path):
    """A label stands for its words and its audio's samples: audio replaced by other samples of the
    same length (a denoised copy: the same size) is aligned again. A manifest from before content
    keys (words and size) keeps its labels, rewritten by content, instead of aligning everything again."""
    from datamodules.align import MANIFEST, label_key, size_key

    corpus = simple_corpus(an4_real, tmp_path / "c", utts=("an251-fash-b",))
    assert align_corpus(corpus, jobs=1, progress=False).aligned == 1
    audio = corpus / "an251-fash-b.flac"
    samples, rate = sf.read(audio, dtype="int16")
    sf.write(tmp_path / "quieter.wav", (samples // 2).astype(np.int16), rate)
    sf.write(corpus / "an251-fash-b.wav", samples, rate)  # the same audio as WAV: sizes compare exactly
    audio.unlink()
    items, _ = read_items(corpus, None, None)
    manifest = corpus / MANIFEST
    # An old manifest: the label keyed by words and size, as before.
    manifest.write_text(f"an251-fash-b.phn\t{size_key(items[0])}\n")
    s = align_corpus(corpus, jobs=1, progress=False)
    assert (s.aligned, s.kept) == (0, 1)
    assert manifest.read_text() == f"an251-fash-b.phn\t{label_key(items[0])}\n"
    shutil.copy(tmp_path / "quieter.wav", corpus / "an251-fash-b.wav")  # same size, other samples
    assert (corpus / "an251-fash-b.wav").stat().st_size == (tmp_path / "quieter.wav").stat().st_size
    assert align_corpus(corpus, jobs=1, progress=False).aligned == 1
