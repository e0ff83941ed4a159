"""Bad records in a large corpus cost a line, not a run; small and reference sets stay strict.

Each corpus reader sees the same policy (datamodules/bad_records.py): above `skip_above` records a
bad one is skipped, named in the run folder and counted in the row; over `max_fraction` bad stops
the run; at or below `skip_above` the first bad record stops it, naming file and line.
"""

from __future__ import annotations

import pytest

from benchmark.results import read_rows
from benchmark.runner import SKIPPED_FILE, RunOptions, run
from datamodules.bad_records import BadRecordPolicy, BadRecords
from datamodules.captions import CaptionsDataModule, FeatureCache, present, read_coco
from datamodules.parallel import read_corpus, read_text
from datamodules.speech import SpeechDataModule
from tasks.nn.errors import DataError
from tests.test_captioning import counting_encoder, write_coco
from tests.test_speech import an4_tree
from tests.test_translation import EN, FR, tiny_translation_preset, write_tab

TOLERANT = BadRecordPolicy(skip_above=10, max_fraction=0.05)


def test_policy_is_strict_at_or_below_its_size_and_rejects_unknown_keys():
    assert not BadRecords("x", 10, TOLERANT).tolerant and BadRecords("x", 11, TOLERANT).tolerant
    assert not BadRecords("x", 10**9).tolerant  # no policy: strict at any size
    with pytest.raises(DataError, match="data.bad_records: unknown key.*'skip_over'"):
        BadRecordPolicy.of({"skip_over": 5})
    with pytest.raises(DataError, match=r"max_fraction must be in \[0, 1\)"):
        BadRecordPolicy.of({"max_fraction": 1.5})


def _corpus_with_bad_lines(path, n=100, bad=(7, 42)):
    """n Tatoeba lines; line 7 is Latin-1, line 42 has no tab."""
    lines = [f"Sentence {i}.\tPhrase {i}.".encode() for i in range(1, n + 1)]
    lines[bad[0] - 1] = "Café {}.\tCafé.".format(bad[0]).encode("latin-1")
    lines[bad[1] - 1] = b"no tab on this line"
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_a_large_tab_corpus_skips_bad_lines_and_names_them(tmp_path):
    _corpus_with_bad_lines(tmp_path / "big.txt")
    pairs, skipped = read_corpus({"tab": "big.txt"}, tmp_path, "en-fr", TOLERANT)
    assert len(pairs) == 98 and ("Sentence 8.", "Phrase 8.") in pairs and ("Sentence 100.", "Phrase 100.") in pairs
    assert [s.split(": ", 1)[0] for s in skipped] == [f"{tmp_path / 'big.txt'}:7", f"{tmp_path / 'big.txt'}:42"]
    assert "not valid UTF-8" in skipped[0] and "expected 'source<TAB>target'" in skipped[1]
    # The same file under the strict default stops at the first bad line.
    with pytest.raises(DataError, match=r"big\.txt:7: not valid UTF-8"):
        read_corpus({"tab": "big.txt"}, tmp_path, "en-fr")
    # Too many bad lines is a broken file, not stray lines.
    with pytest.raises(DataError, match=r"big\.txt: 2 of 100 records bad, over the 1\.00% .*max_fraction.*big\.txt:7"):
        read_corpus({"tab": "big.txt"}, tmp_path, "en-fr", BadRecordPolicy(skip_above=10, max_fraction=0.01))


def test_too_many_bad_records_stop_the_reading_at_the_first_over_the_limit():
    """The total is known before reading, so the record that passes `max_fraction` stops the read:
    a broken large file fails at its first few bad lines, not after the whole file."""
    bad = BadRecords("big.txt", 1000, BadRecordPolicy(skip_above=10, max_fraction=0.002))  # 2 allowed
    for line in (3, 5):
        bad.add(DataError(f"big.txt:{line}: bad"))
    with pytest.raises(DataError, match=r"big\.txt: 3 of 1000 records bad, over the 0\.20% .*stopped.*big\.txt:3: bad"):
        bad.add(DataError("big.txt:9: bad"))
    assert len(bad.found) == 3  # nothing after the third was read


def test_a_corpus_whose_lines_are_mostly_bad_stops_at_the_limit(tmp_path):
    lines = [b"no tab here" if i % 2 else f"Sentence {i}.\tPhrase {i}.".encode() for i in range(1000)]
    (tmp_path / "big.txt").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"big\.txt: 11 of 1000 records bad, over the 1\.00% "):
        read_corpus({"tab": "big.txt"}, tmp_path, "en-fr", BadRecordPolicy(skip_above=10, max_fraction=0.01))


def test_line_aligned_files_drop_a_bad_line_with_its_twin(tmp_path):
    en = [f"one {i}" for i in range(20)]
    (tmp_path / "a.en").write_bytes("\n".join(en).encode().replace(b"one 3", "un café".encode("latin-1")) + b"\n")
    (tmp_path / "a.fr").write_text("\n".join(f"un {i}" for i in range(20)) + "\n")
    pairs, skipped = read_corpus({"src": "a.en", "ref": "a.fr"}, tmp_path, "en-fr", TOLERANT)
    assert len(pairs) == 19 and ("one 4", "un 4") in pairs and all(p[1] != "un 3" for p in pairs)
    assert len(skipped) == 1 and skipped[0].startswith(f"{tmp_path / 'a.en'}:4: not valid UTF-8")


def test_sgm_segments_stay_aligned_when_each_side_skips_a_different_line(tmp_path):
    """A skipped <seg> keeps its place: with one bad segment in each file, at different places, every
    remaining pair is still a sentence and its own translation."""
    def sgm(lang: str, word: str, bad_at: int) -> bytes:
        segs = [f'<seg id="{i}">{word} {i}</seg>'.encode() for i in range(20)]
        segs[bad_at] = f'<seg id="{bad_at}">{word} café</seg>'.encode("latin-1")
        return b"\n".join([b'<srcset setid="x">', b'<doc docid="d">', *segs, b"</doc>", b"</srcset>"]) + b"\n"

    (tmp_path / "t.en.sgm").write_bytes(sgm("en", "one", 3))
    (tmp_path / "t.fr.sgm").write_bytes(sgm("fr", "un", 7))
    pairs, skipped = read_corpus({"src": "t.en.sgm", "ref": "t.fr.sgm"}, tmp_path, "en-fr", TOLERANT)
    assert len(pairs) == 18 and len(skipped) == 2
    assert all(en.split()[1] == fr.split()[1] for en, fr in pairs)  # "one 8" with "un 8", never "un 9"


def test_undecodable_image_fails_a_small_set_and_is_skipped_in_a_large_one(tmp_path):
    root = write_coco(tmp_path / "c", n=12)
    entries = read_coco(root / "images", root / "captions.json")
    entries[2].path.write_bytes(b"\xff\xd8 not really a jpeg")
    entries[5].path.unlink()
    cache = FeatureCache(counting_encoder(), 32, tmp_path / "cache")
    with pytest.raises(DataError, match=rf"{entries[5].path.name}: unreadable \(No such file"):
        cache(entries, "t")
    entries[5].path.write_bytes(entries[4].path.read_bytes())
    with pytest.raises(DataError, match=rf"{entries[2].path.name}: not a decodable image"):
        cache(entries, "t")
    entries[5].path.unlink()
    bad = BadRecords("t images", len(entries), BadRecordPolicy(skip_above=10, max_fraction=0.2))
    feats, kept = cache(entries, "t", bad)
    assert feats.shape[0] == 10 and entries[2] not in kept and entries[5] not in kept
    skipped = bad.check()
    assert sorted(s.split(": ", 1)[0] for s in skipped) == sorted(str(entries[i].path) for i in (2, 5))


def test_an_empty_image_file_is_a_bad_record_like_an_undecodable_one(tmp_path):
    root = write_coco(tmp_path / "c", n=12)
    entries = read_coco(root / "images", root / "captions.json")
    entries[4].path.write_bytes(b"")  # torch.frombuffer raised a ValueError on it, which escaped
    cache = FeatureCache(counting_encoder(), 32, tmp_path / "cache")
    with pytest.raises(DataError, match=rf"{entries[4].path.name}: not a decodable image \(an empty file\)"):
        cache(entries, "t")
    bad = BadRecords("t images", len(entries), BadRecordPolicy(skip_above=10, max_fraction=0.1))
    feats, kept = cache(entries, "t", bad)
    assert feats.shape[0] == 11 and entries[4] not in kept and bad.check()[0].startswith(f"{entries[4].path}: ")


def test_missing_image_files_stop_a_small_set_counted_and_are_skipped_in_a_large_one(tmp_path):
    root = write_coco(tmp_path / "c", n=12)
    entries = read_coco(root / "images", root / "captions.json")
    for i in (3, 8):
        entries[i].path.unlink()
    with pytest.raises(DataError, match=rf"{entries[3].path}: image file not found \(2 of the 12 train images "
                                        rf"listed in {root / 'captions.json'} are missing\)"):
        present(entries, BadRecords("train images", len(entries)), root / "captions.json")
    bad = BadRecords("train images", len(entries), BadRecordPolicy(skip_above=10, max_fraction=0.2))
    kept = present(entries, bad, root / "captions.json")
    assert kept == [e for i, e in enumerate(entries) if i not in (3, 8)]
    assert [s.split(": ", 1)[0] for s in bad.check()] == [str(entries[i].path) for i in (3, 8)]
    # Too many missing is a folder not there, not stray files.
    bad = BadRecords("train images", len(entries), BadRecordPolicy(skip_above=10, max_fraction=0.1))
    with pytest.raises(DataError, match=r"train images: 2 of 12 records bad, over the 10\.00%"):
        present(entries, bad, root / "captions.json")


def test_a_captions_datamodule_lists_what_its_large_split_skipped(tmp_path, monkeypatch):
    root = write_coco(tmp_path / "data" / "coco", n=40)
    entries = read_coco(root / "images", root / "captions.json")
    entries[0].path.write_bytes(b"broken")
    monkeypatch.setattr("datamodules.captions.build_encoder", lambda *a: counting_encoder())
    kw = dict(images="coco/images", captions="coco/captions.json", split={"valid": 0.1, "test": 0.1, "salt": "s"},
              image_size=32, min_count=1, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="not a decodable image"):
        CaptionsDataModule(tmp_path / "data", **kw).setup()
    dm = CaptionsDataModule(tmp_path / "data", **kw, bad_records={"skip_above": 5, "max_fraction": 0.1})
    dm.setup()
    assert len(dm.skipped) == 1 and dm.skipped[0].startswith(f"{entries[0].path}: not a decodable image")


def test_speech_skips_a_corrupt_utterance_only_where_the_preset_allows(tmp_path):
    an4_tree(tmp_path, speakers=("fabc", "mdef", "fghi", "fjkl"))
    bad = next((tmp_path / "an4" / "wav" / "an4_clstk" / "fabc").glob("*.flac"))
    bad.write_bytes(b"fLaC truncated")
    kw = dict(valid_speakers=["mdef"], cache_dir=tmp_path / "cache", batch_size=2)
    with pytest.raises(DataError, match=f"{bad.name}: unreadable or corrupt audio"):
        SpeechDataModule(tmp_path, **kw).setup()
    dm = SpeechDataModule(tmp_path, **kw, bad_records={"skip_above": 3, "max_fraction": 0.2})
    dm.setup()  # train has 6 utterances (> 3): one skipped; valid and test have 2 each and stay strict
    assert len(dm.sets["train"]) == 5 and len(dm.skipped) == 1 and bad.name in dm.skipped[0]


def test_a_run_on_a_large_corpus_with_bad_lines_lists_them_and_counts_them_in_its_row(tmp_path):
    write_tab(tmp_path / "tab.txt")  # 400 lines
    with open(tmp_path / "tab.txt", "ab") as f:
        f.write(b"a line without its tab\n" + "Caf\u00e9.\tCaf\u00e9.\n".encode("latin-1"))
    (tmp_path / "news.en").write_text("\n".join(EN) + "\n")
    (tmp_path / "news.fr").write_text("\n".join(FR) + "\n")
    preset = tiny_translation_preset(tmp_path, bad_records={"skip_above": 100, "max_fraction": 0.01})
    preset.trainer.update({"max_epochs": 1})
    opts = RunOptions(dropout="on", data_root=tmp_path, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs")
    row = run(preset, opts)
    assert row["skipped_records"] == 2 and read_rows(tmp_path / "results" / "runs.csv")[0]["skipped_records"] == "2"
    listed = (tmp_path / "runs" / row["run_dir"].rsplit("/", 1)[-1] / SKIPPED_FILE).read_text().splitlines()
    assert sorted(s.split(": ", 1)[0] for s in listed) == [f"{tmp_path / 'tab.txt'}:401", f"{tmp_path / 'tab.txt'}:402"]


def test_strict_and_tolerant_reads_split_lines_alike(tmp_path):
    text = "a\tA\r\nb\u2028c\tB\nd\x85\tD"  # CRLF; U+2028 and NEL inside lines; no final newline
    (tmp_path / "clean.txt").write_bytes(text.encode())
    strict, _ = read_text(tmp_path / "clean.txt")
    (tmp_path / "dirty.txt").write_bytes(text.encode() + b"\n\xff\tX\n")
    tolerant, bad = read_text(tmp_path / "dirty.txt", BadRecordPolicy(skip_above=1, max_fraction=0.5))
    assert strict == ["a\tA", "b\u2028c\tB", "d\x85\tD"] and tolerant == [*strict, None]
    assert bad.found == [f"{tmp_path / 'dirty.txt'}:4: not valid UTF-8 (invalid start byte); convert the file to "
                         f"UTF-8 (e.g. iconv -f latin1 -t utf-8)"]
