"""Speech frames: framing/label alignment, phone folding, feature cache, padding, bad files, real data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.phones import PHONE_SETS, TIMIT_FOLDING
from datamodules.speech import (
    IGNORE,
    Features,
    SpeechDataModule,
    Utterance,
    delay_labels,
    find_splits,
    frame_labels,
    pad_batch,
    read_phn,
    stack_context,
)
from tasks.frame_classifier import FrameClassifier, collapse, drop_short_runs
from tasks.nn.errors import DataError
from tests.conftest import REAL_DATA_ROOT, find_run, need_real_data

RATE = 16_000


def write_utt(folder, name, segments, seconds=1.0, freqs=None):
    """A tone per segment (so the audio really changes at the boundaries) and its .phn."""
    folder.mkdir(parents=True, exist_ok=True)
    n = int(RATE * seconds)
    wave = np.zeros(n, dtype=np.float32)
    for k, (start, end, _) in enumerate(segments):
        t = np.arange(start, min(end, n)) / RATE
        wave[start:end] = 0.3 * np.sin(2 * math.pi * (freqs or [220, 880, 440, 660])[k % 4] * t)
    sf.write(folder / f"{name}.flac", wave, RATE)
    (folder / f"{name}.phn").write_text("".join(f"{s} {e} {p}\n" for s, e, p in segments))
    return folder / f"{name}.flac"


def an4_tree(root, speakers=("fabc", "mdef", "fghi"), test=("mtst",), per_speaker=2, vary=False):
    """A tiny corpus in AN4's layout: wav/an4_clstk/<spk>/, wav/an4test_clstk/<spk>/; one-second
    utterances (98 frames) of silence, "AA", silence. `vary`: each utterance's "AA" starts later
    than the one before, so that the order a model sees them in changes what it learns."""
    k = 0
    for part, spks in (("an4_clstk", speakers), ("an4test_clstk", test)):
        for spk in spks:
            for i in range(per_speaker):
                start = 4000 + 400 * k if vary else 4000
                k += 1
                write_utt(root / "an4" / "wav" / part / spk, f"u{i}-{spk}", [(0, start, "SIL"), (start, 12000, "AA"),
                                                                          (12000, 16000, "SIL")])
    return root


def test_frame_labels_follow_the_centre_sample(tmp_path):
    segments = [(0, 4000, 0), (4000, 12000, 1), (12000, 16000, 0)]
    n_frames = 1 + (RATE - 400) // 160  # Kaldi's snip_edges framing: 98
    labels = frame_labels(segments, n_frames, shift=160, window=400)
    # frame i's centre is 160 i + 200: inside [4000, 12000) for i = 24 .. 73
    assert labels[23] == 0 and labels[24] == 1 and labels[73] == 1 and labels[74] == 0
    assert (labels == 1).sum() == 50


def test_features_and_labels_line_up_on_a_synthetic_utterance(tmp_path):
    audio = write_utt(tmp_path / "u", "tone", [(0, 4000, "SIL"), (4000, 12000, "AA"), (12000, 16000, "SIL")])
    dm = SpeechDataModule(tmp_path, corpus="an4", phone_set="an4", cache_dir=tmp_path / "cache")
    feats, labels = dm._features(Utterance("x", audio, audio.with_suffix(".phn")))
    assert feats.shape == (98, 120) and labels.shape == (98,)
    aa, sil = PHONE_SETS["an4"].train_index()["AA"], PHONE_SETS["an4"].train_index()["SIL"]
    assert labels[24:74].eq(aa).all() and labels[:24].eq(sil).all() and labels[74:].eq(sil).all()
    # the 880 Hz tone of the AA segment puts its energy in different mel bins than the 220 Hz one
    fb = feats[:, :40]
    assert (fb[30:70].argmax(1) != fb[5:20].argmax(1).mode().values).all()


def test_folding_table_covers_timit():
    assert len(TIMIT_FOLDING) == 61
    t61, t48 = PHONE_SETS["timit61"], PHONE_SETS["timit48"]
    assert len(t61.train) == 61 and len(t48.train) == 48 and len(t61.score) == len(t48.score) == 39
    assert [p for p in t61.train if t61.fold[p] is None] == ["q"]  # the glottal stop: no class
    folded = {t61.score[i] for i in t61.fold_ids() if i >= 0}
    assert folded == set(t61.score)  # every scoring class is reachable
    assert t61.fold["ao"] == "aa" and t61.fold["zh"] == "sh" and t61.fold["pcl"] == "sil" and t61.fold["ix"] == "ih"
    assert len(PHONE_SETS["an4"].train) == 34


def test_feature_cache_reused_and_invalidated(tmp_path, monkeypatch):
    audio = write_utt(tmp_path / "u", "tone", [(0, 16000, "SIL")])
    utt = Utterance("x", audio, audio.with_suffix(".phn"))
    calls = []
    real = Features.compute
    monkeypatch.setattr(Features, "compute", lambda self, w, r: calls.append(self.deltas) or real(self, w, r))
    for deltas in (True, True, False, True):
        SpeechDataModule(tmp_path, deltas=deltas, cache_dir=tmp_path / "cache")._features(utt)
    assert calls == [True, False]  # computed once per setting, then read back
    write_utt(tmp_path / "u", "tone", [(0, 16000, "SIL")], freqs=[300])  # new audio, new hash
    SpeechDataModule(tmp_path, deltas=True, cache_dir=tmp_path / "cache")._features(utt)
    assert calls == [True, False, True]


def test_padding_is_masked_out_of_loss_and_metrics():
    torch.manual_seed(0)
    ps = PHONE_SETS["an4"]
    model = FrameClassifier(input_size=6, num_classes=len(ps.train), fold_ids=ps.fold_ids(),
                            score_names=list(ps.score), hidden_size=8, num_layers=2).eval()
    long_, short = (torch.randn(9, 6), torch.randint(0, 34, (9,))), (torch.randn(4, 6), torch.randint(0, 34, (4,)))
    batch = pad_batch([long_, short])
    assert batch["labels"][4:, 1].eq(IGNORE).all() and int(batch["num_tokens"]) == 13
    loss = model._step(batch, "test")
    batch["feats"][4:, 1] = 1e3  # garbage in the padding changes nothing
    assert torch.equal(loss, model._step(batch, "test"))
    assert int(model.counts["test_frames"].compute()) == 2 * 13
    alone = model(short[0].unsqueeze(1))
    torch.testing.assert_close(model(batch["feats"])[:4, 1], alone[:, 0])


def test_context_frames_and_label_delay():
    feats, labels = torch.arange(8.0).view(4, 2), torch.tensor([5, 6, 7, 8])  # 4 frames of 2 features
    stacked = stack_context(feats, 1)
    assert stacked.shape == (4, 6)
    assert stacked[0].tolist() == [0, 1, 0, 1, 2, 3] and stacked[2].tolist() == [2, 3, 4, 5, 6, 7]  # t-1, t, t+1
    assert stacked[3].tolist() == [4, 5, 6, 7, 6, 7]  # the edge frame repeated
    f, y = delay_labels(feats, labels, 2)
    assert y.tolist() == [IGNORE, IGNORE, 5, 6, 7, 8] and f[4:].tolist() == [[6, 7], [6, 7]]
    # every label still scored once, each at its step + delay
    batch = pad_batch([(feats, labels), (feats[:2], labels[:2])], context=1, delay=2)
    assert batch["feats"].shape == (6, 2, 6) and int((batch["labels"] != IGNORE).sum()) == 6


def test_minimum_duration_decoding_drops_flickers_but_keeps_real_phones():
    assert drop_short_runs([1, 1, 1, 2, 1, 1, 1], 3) == [1]  # a one-frame flicker is no phone
    assert drop_short_runs([1, 1, 1, 2, 2, 2, 1, 1, 1], 3) == [1, 2, 1]
    assert drop_short_runs([4, 5], 3) == [4, 5]  # all runs short: nothing to go on, collapse as is
    ps = PHONE_SETS["an4"]
    model = FrameClassifier(input_size=3, num_classes=len(ps.train), fold_ids=ps.fold_ids(),
                            score_names=list(ps.score), hidden_size=4, num_layers=1)
    ref = torch.tensor([0] * 6 + [1] * 6)
    flicker = torch.tensor([0, 0, 2, 0, 0, 0] + [1] * 6)
    model.forward = lambda feats: torch.nn.functional.one_hot(flicker, len(ps.train)).float().unsqueeze(1) * 10
    model._step({"feats": torch.zeros(12, 1, 3), "labels": ref.unsqueeze(1)}, "test")
    c = {k: int(model.counts[f"test_{k}"].compute()) for k in ("edits", "edits_smoothed", "phones")}
    assert c == {"edits": 2, "edits_smoothed": 0, "phones": 2}  # raw: 0 2 0 1 against 0 1


def test_predicted_q_frames_leave_the_phone_strings_as_the_reference_s_do():
    """TIMIT's q has no scoring class: its reference frames drop out, and frames predicted as q
    drop out of the predicted phone strings too, not counted as an inserted phone."""
    ps = PHONE_SETS["timit61"]
    aa, q, sil = (ps.train_index()[p] for p in ("aa", "q", "h#"))
    model = FrameClassifier(input_size=3, num_classes=len(ps.train), fold_ids=ps.fold_ids(),
                            score_names=list(ps.score), hidden_size=4, num_layers=1)
    ref = torch.tensor([aa] * 8 + [q] * 2 + [sil] * 4)
    hyp = torch.tensor([aa] * 3 + [q] * 3 + [aa] * 2 + [q] * 2 + [sil] * 4)  # q over 3 scored aa frames
    model.forward = lambda feats: torch.nn.functional.one_hot(hyp, len(ps.train)).float().unsqueeze(1) * 10
    model._step({"feats": torch.zeros(14, 1, 3), "labels": ref.unsqueeze(1)}, "test")
    c = {k: int(model.counts[f"test_{k}"].compute()) for k in ("correct", "frames", "edits", "edits_smoothed", "phones")}
    assert c == {"correct": 9, "frames": 12, "edits": 0, "edits_smoothed": 0, "phones": 2}
    assert model.samples == [["aa sil", "aa sil"]]  # h# scores as sil


def test_collapse_and_per_match_jiwer():
    assert collapse([3, 3, 5, 5, 5, 3]) == [3, 5, 3]
    import jiwer
    out = jiwer.process_words("1 2 3 4", "1 3 4 4")
    assert (out.substitutions + out.deletions + out.insertions) / 4 == jiwer.wer("1 2 3 4", "1 3 4 4")


@pytest.mark.parametrize("line, match", [
    ("10 99999 AA", "past the audio"), ("10 100 ZZ", "unknown phone 'ZZ'"), ("10 x AA", "expected 'start_sample"),
    ("500 100 AA", "ends .100. before it starts"), ("5 20 AA", "starts at 5, before the previous one ends .10."),
    ("0 1\u00b2 AA", "expected 'start_sample"),
])
def test_bad_phn_files_name_file_and_line(tmp_path, line, match):
    (tmp_path / "u.phn").write_text("0 10 SIL\n" + line + "\n")
    with pytest.raises(DataError, match=rf"u.phn:2: .*{match}"):
        read_phn(tmp_path / "u.phn", 16000, PHONE_SETS["an4"])


def test_corrupt_audio_is_named(tmp_path):
    (tmp_path / "bad.flac").write_bytes(b"fLaC truncated")
    (tmp_path / "bad.phn").write_text("0 10 SIL\n")
    dm = SpeechDataModule(tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="bad.flac: unreadable or corrupt audio"):
        dm._features(Utterance("x", tmp_path / "bad.flac", tmp_path / "bad.phn"))


def test_splits_are_speaker_disjoint_and_missing_corpus_says_where(tmp_path):
    an4_tree(tmp_path)
    splits = find_splits(tmp_path, "an4", valid_speakers=["mdef"], test_speakers=[])
    assert {u.speaker for u in splits["valid"]} == {"mdef"} and {u.speaker for u in splits["test"]} == {"mtst"}
    assert len(splits["train"]) == 4
    with pytest.raises(DataError, match="timit-sample: not found.*timit.zip"):
        find_splits(tmp_path, "timit-sample", [], [])
    with pytest.raises(DataError, match="no speaker folder named nobody"):  # a typo moves nobody, silently
        find_splits(tmp_path, "an4", valid_speakers=["nobody"], test_speakers=[])
    # Only TIMIT's SA sentences are left out, not every name starting with "sa".
    write_utt(tmp_path / "an4" / "wav" / "an4_clstk" / "fabc", "sarah-01", [(0, 16000, "SIL")])
    write_utt(tmp_path / "an4" / "wav" / "an4_clstk" / "fabc", "sa1", [(0, 16000, "SIL")])
    names = {u.audio.stem for u in find_splits(tmp_path, "an4", valid_speakers=["mdef"], test_speakers=[])["train"]}
    assert "sarah-01" in names and "sa1" not in names


def test_settings_a_fixed_split_would_ignore_are_refused(tmp_path):
    """AN4's and TIMIT's test sets are fixed: a test speaker list, or a validation speaker taken from
    the test set (or TIMIT's training set), was silently ignored or shrank the test set."""
    an4_tree(tmp_path)
    with pytest.raises(DataError, match=r"^data.test_speakers: an4's test set is fixed .*remove it"):
        find_splits(tmp_path, "an4", valid_speakers=["mdef"], test_speakers=["fghi"])
    with pytest.raises(DataError, match=r"an4test_clstk/mtst: data.valid_speakers names a speaker of AN4's test set"):
        find_splits(tmp_path, "an4", valid_speakers=["mdef", "mtst"], test_speakers=[])
    for spk in ("train/dr1/mtrn0", "test/dr1/mdab0", "test/dr2/mval0"):  # mdab0: a core test speaker
        write_utt(tmp_path / "timit" / spk, "si1", [(0, 16000, "h#")])
    assert {k: [u.speaker for u in v] for k, v in find_splits(tmp_path, "timit", [], []).items()} == \
        {"train": ["mtrn0"], "valid": ["mval0"], "test": ["mdab0"]}
    with pytest.raises(DataError, match=r"^data.test_speakers: timit's test set is fixed"):
        find_splits(tmp_path, "timit", [], ["mval0"])
    for spk, role in (("mtrn0", "training"), ("mdab0", "core test")):
        with pytest.raises(DataError, match=rf"{spk}: data.valid_speakers names a TIMIT {role} speaker"):
            find_splits(tmp_path, "timit", ["mval0", spk], [])
    (tmp_path / "timit-sample").mkdir()
    with pytest.raises(DataError, match="data.valid_speakers and data.test_speakers both name dr1-x"):
        find_splits(tmp_path, "timit-sample", ["dr1-x"], ["dr1-x", "dr2-y"])


def test_an_utterance_in_two_formats_is_read_once(tmp_path, caplog):
    an4_tree(tmp_path)
    folder = tmp_path / "an4" / "wav" / "an4_clstk" / "fabc"
    before = find_splits(tmp_path, "an4", valid_speakers=["mdef"], test_speakers=[])["train"]
    flac = sorted(folder.glob("*.flac"))[0]
    data, rate = sf.read(flac)
    sf.write(flac.with_suffix(".wav"), data, rate)  # a converted copy left beside the original
    with caplog.at_level("WARNING"):
        after = find_splits(tmp_path, "an4", valid_speakers=["mdef"], test_speakers=[])["train"]
    assert after == before  # the same utterances, in the same order, each once
    assert f"also as {flac.stem}.wav; reading it once, from {flac.name}" in caplog.text


def test_train_speakers_keeps_a_fixed_spread_of_speakers():
    from datamodules.speech import some_speakers

    names = ["fa", "fb", "fc", "fd", "ma", "mb", "mc", "md"]
    utts = [Utterance(n, Path(f"{n}-{i}.flac"), None) for n in names for i in range(2)]
    kept = some_speakers(utts, 4)
    assert [u.speaker for u in kept] == ["fa", "fa", "fc", "fc", "ma", "ma", "mc", "mc"]  # both sexes, every utterance
    assert some_speakers(utts, 8) == utts == some_speakers(utts, 20)
    with pytest.raises(DataError, match="train_speakers must be a positive"):
        SpeechDataModule("data", train_speakers=0)


def test_train_statistics_only_normalise(tmp_path):
    an4_tree(tmp_path)
    dm = SpeechDataModule(tmp_path, valid_speakers=["mdef"], cache_dir=tmp_path / "cache", batch_size=2)
    dm.setup()
    train = torch.cat(dm.sets["train"].datasets[0])  # the features of every training utterance
    torch.testing.assert_close(train.mean(0), torch.zeros(120), atol=1e-4, rtol=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["feats"].shape[1:] == (2, 120) and dm.model_kwargs()["num_classes"] == 34


@pytest.mark.real_data
def test_timit_sample_splits_and_a_short_run_learns(tmp_path):
    root = REAL_DATA_ROOT
    need_real_data(root / "timit-sample")
    from benchmark.config import load_preset
    from benchmark.runner import RunOptions, run

    preset = load_preset("speech", "timit-sample-quick")
    splits = find_splits(root, "timit-sample", preset.data["valid_speakers"], preset.data["test_speakers"])
    assert {k: len(v) for k, v in splits.items()} == {"train": 80, "valid": 24, "test": 24}  # SA left out
    preset.trainer.update(max_epochs=2, enable_progress_bar=False)
    preset.data["cache_dir"] = str(tmp_path / "cache")
    row = run(preset, RunOptions(data_root=root, results_dir=tmp_path, runs_dir=tmp_path))
    # 39 classes: chance is far below 20%; two epochs on 80 utterances already beat it
    assert float(row["test_frame_acc"]) > 0.2 and 0 < float(row["test_per"]) < 1.5
    assert float(row["train_eval_frame_acc"]) > 0.2  # the training set rescored without dropout
    samples = (find_run(tmp_path, "speech-timit-sample-quick-dropout_on-seed0") / "samples" / "test.txt").read_text()
    assert samples.count("reference: sil ") == 5 and samples.count("predicted:") == 5  # 39-class phone names


@pytest.mark.real_data
def test_timit_sample_download_checks_every_file(tmp_path, monkeypatch):
    """NLTK's archive layout (timit/<speaker>/<file>) rebuilt from the real files, served by file://."""
    import dataclasses
    import zipfile

    from datamodules import sources

    src = need_real_data(REAL_DATA_ROOT / "timit-sample")
    archive = tmp_path / "timit.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in sources.TIMIT_SAMPLE.sha256:
            z.write(src / name, f"timit/{name}")
    monkeypatch.setattr(sources, "TIMIT_SAMPLE", dataclasses.replace(sources.TIMIT_SAMPLE, url=archive.as_uri()))
    SpeechDataModule(tmp_path / "root", corpus="timit-sample", phone_set="timit61").prepare_data()
    assert (tmp_path / "root" / "timit-sample" / "dr1-fvmh0" / "sa1.phn").read_bytes() == (src / "dr1-fvmh0" / "sa1.phn").read_bytes()
    bad = tmp_path / "bad.zip"  # a tampered file fails the check, naming it
    with zipfile.ZipFile(bad, "w") as z:
        for name in sources.TIMIT_SAMPLE.sha256:
            z.writestr(f"timit/{name}", b"tampered" if name.endswith("sa2.wav") else (src / name).read_bytes())
    monkeypatch.setattr(sources, "TIMIT_SAMPLE", dataclasses.replace(sources.TIMIT_SAMPLE, url=bad.as_uri()))
    with pytest.raises(DataError, match=r"publisher now serves other contents \(dr\d-\w+/sa2.wav has sha256"):
        SpeechDataModule(tmp_path / "root2", corpus="timit-sample", phone_set="timit61").prepare_data()
    assert not (tmp_path / "root2" / "timit-sample" / "dr1-fvmh0").exists()


def test_a_flac_of_unknown_length_and_an_unwritable_label_folder_are_one_line(tmp_path):
    import numpy as np

    from datamodules.align import Manifest
    from datamodules.speech import read_audio

    path = tmp_path / "piped.flac"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000, format="FLAC")
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0  # STREAMINFO's 36-bit sample count: 0, as a FLAC written to a pipe has it
    data[22:26] = b"\0\0\0\0"
    for decode in (False, True):
        with pytest.raises(DataError, match=r"piped\.flac: audio of unknown length"):
            read_audio(path, bytes(data), decode)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match=r"afile: cannot write labels there"):
        Manifest(tmp_path / "afile")


def test_audio_the_aligner_skipped_is_not_aligned_again_on_every_run(tmp_path, monkeypatch):
    """A fetched AN4 keeps a few utterances pocketsphinx cannot align, listed in align-report.tsv:
    a run must not realign them each time (nor try to write into a read-only copy for them)."""
    from datamodules import sources
    from datamodules.align import REPORT

    an4_tree(tmp_path)
    folder = tmp_path / "an4"
    (folder / "etc").mkdir()
    lost = next(a for a in folder.glob("wav/an4_clstk/fabc/*") if a.suffix != ".phn")
    lost.with_suffix(".phn").unlink()
    calls = []
    monkeypatch.setattr(sources, "label_an4", lambda f: calls.append(f))
    dm = SpeechDataModule(tmp_path, corpus="an4", phone_set="an4", cache_dir=tmp_path / "cache")
    dm.prepare_data()
    assert calls == [folder]  # unlabelled and never tried: label it
    (folder / REPORT).write_text(f"utterance\tpath\treason\n{lost.stem}\t{lost}\tno path through the words\n")
    dm.prepare_data()
    assert calls == [folder]  # the aligner's own skip: left as it is
