"""Dropout's effect in the leaderboard: paired seeds, a t-interval, settings that never pool, and
sacrebleu's paired bootstrap between the on and off outputs of a seed."""

from __future__ import annotations

import gzip
import json

import pytest
from scipy import stats as scipy_stats

from benchmark import stats
from benchmark.leaderboard import build
from benchmark.results import append_row, read_rows


def test_paired_effect_is_a_t_interval_over_the_seed_differences():
    on, off = {0: 10.0, 1: 12.0, 2: 11.0}, {0: 8.0, 1: 9.0, 2: 9.5, 3: 1.0}  # seed 3 has no pair
    e = stats.paired_effect(on, off)
    diffs = [2.0, 3.0, 1.5]
    low, high = scipy_stats.t.interval(0.95, 2, loc=sum(diffs) / 3, scale=scipy_stats.sem(diffs))
    assert e.pairs == 3 and e.diff == pytest.approx(13 / 6)
    assert (e.low, e.high) == (pytest.approx(low), pytest.approx(high))
    assert e.verdict(lower_better=False) == "dropout better, beyond seed noise"
    assert e.verdict(lower_better=True) == "dropout worse, beyond seed noise"
    noisy = stats.paired_effect({0: 1.0, 1: 3.0}, {0: 2.0, 1: 1.0})
    assert noisy.low < 0 < noisy.high and "not beyond seed noise" in noisy.verdict(False)
    assert stats.paired_effect({0: 1.0}, {0: 2.0}).verdict(False) == "one seed: a smoke test, no claim"
    assert stats.paired_effect({0: 1.0}, {1: 2.0}) is None
    assert stats.lower_is_better("test_ppl") and stats.lower_is_better("best_test_per")
    assert not stats.lower_is_better("test_bleu") and not stats.lower_is_better("test_frame_acc")


def _row(dropout, seed, acc, chash, when, **kw):
    return {"task": "speech", "preset": "quick", "dropout": dropout, "seed": str(seed), "overrides": "",
            "config_hash": chash, "test_frame_acc": str(acc), "finished_utc": when, "command": "bench run", **kw}


def test_rows_pool_only_within_one_settings_hash_and_older_ones_are_superseded(tmp_path):
    for seed, (on, off) in enumerate([(0.60, 0.50), (0.62, 0.55), (0.61, 0.52)]):
        append_row(tmp_path, _row("on", seed, on, "aaaa", f"2026-11-30T10:0{seed}:00Z", best_test_frame_acc=on + 0.01))
        append_row(tmp_path, _row("off", seed, off, "aaaa", f"2026-11-30T10:0{seed}:30Z", best_test_frame_acc=0.58))
    append_row(tmp_path, _row("on", 0, 0.10, "old0", "2026-11-29T10:00:00Z"))  # an older setting of the preset
    append_row(tmp_path, _row("off", 0, 0.99, "", "2026-11-28T10:00:00Z"))  # from before rows had a hash
    append_row(tmp_path, _row("off", 1, 0.97, "aaaa", "2026-11-28T10:00:00Z", devices="2"))  # same hash, 2 ranks
    board = read_rows(build(tmp_path, plots=False))
    current = {r["dropout"]: r for r in board if r["status"] == "current"}
    assert current["on"]["mean"] == "0.6100" and current["on"]["seeds"] == "3" and current["on"]["config_hash"] == "aaaa"
    assert current["off"]["mean"] == "0.5233" and current["on"]["best_mean"] == "0.6200"
    assert {(r["config_hash"], r["status"]) for r in board} >= {("old0", "superseded"), ("legacy", "superseded"),
                                                               ("aaaa@2", "superseded")}
    effects = {e["metric"]: e for e in read_rows(tmp_path / "effects.csv")}
    head = effects["test_frame_acc"]
    assert head["pairs"] == "3" and head["diff"] == "0.0867" and head["verdict"] == "dropout better, beyond seed noise"
    assert float(head["ci_low"]) > 0
    assert effects["best_test_frame_acc"]["diff"] == "0.0400"
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "over 3 paired seed(s): dropout better, beyond seed noise." in md
    assert "Superseded (older settings, not pooled): quick `aaaa@2`, quick `legacy`, quick `old0`" in md


def test_no_spread_between_seeds_is_no_interval_and_no_claim():
    """Every pair differing by the same amount (metrics rounded on a small test set) gives a
    zero-width interval: that is no evidence, not certainty."""
    e = stats.paired_effect({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
    assert e.low == e.high == 0.5 and e.p is None
    assert e.verdict(False) == "no spread between the paired seeds: no interval, no claim"
    rounded = stats.paired_effect({0: 0.5, 1: 0.6, 2: 0.8}, {0: 0.4, 1: 0.5, 2: 0.7})  # 0.1 each, up to rounding
    assert rounded.p is None and "no claim" in rounded.verdict(False)
    assert stats.paired_effect({0: 10.0, 1: 12.0, 2: 11.0}, {0: 8.0, 1: 9.0, 2: 9.5}).p == pytest.approx(
        scipy_stats.ttest_rel([10.0, 12.0, 11.0], [8.0, 9.0, 9.5]).pvalue)


def test_holm_keeps_only_what_survives_testing_every_arm():
    assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 <= 0.05/3; 0.03 > 0.05/2 stops the rest
    assert stats.holm([0.001, 0.02, None]) == [True, True, None]  # 0.02 <= 0.05/1 once 0.001 held
    assert stats.holm([0.2]) == [False]


def test_arms_against_the_same_off_runs_are_corrected_together(tmp_path):
    """Several regularizers at 95% each against one `off`: a claim is marked where Holm's correction
    over them drops it. The paper's dropout, the comparison a preset is built for, stands alone. The
    commits that made the pairs are counted (the hash leaves code out)."""
    # on - off per seed: 0.10, 0.05, 0.09 (p about 0.035 alone) and 0.03, 0.06, 0.04 (about 0.039):
    # each beyond seed noise at 95%, neither at Holm's first step (0.05 / 2).
    offs = [0.50, 0.55, 0.52]
    ons = {"zaremba": [0.60, 0.60, 0.61], "locked": [0.53, 0.61, 0.56], "zoneout": [0.60, 0.60, 0.61]}
    for seed, off in enumerate(offs):
        append_row(tmp_path, _row("off", seed, off, "aaaa", f"2026-11-30T10:0{seed}:30Z", regularizer="none",
                                  git_commit="c1"))
        for name, accs in ons.items():
            append_row(tmp_path, _row("on", seed, accs[seed], "aaaa", f"2026-11-30T10:0{seed}:00Z", regularizer=name,
                                      dropout_rate="dropout=0.5" if name == "zaremba" else f"{name}=0.5",
                                      git_commit="c2" if seed == 2 else "c1"))
    build(tmp_path, plots=False)
    effects = {e["regularizer"]: e for e in read_rows(tmp_path / "effects.csv") if e["metric"] == "test_frame_acc"}
    for e in effects.values():
        assert 0.025 < float(e["p_value"]) < 0.05 and "better, beyond seed noise" in e["verdict"]
    assert (effects["zaremba"]["arms"], effects["zaremba"]["holm"]) == ("1", "")
    assert {(e["arms"], e["holm"]) for r, e in effects.items() if r != "zaremba"} == {("2", "not beyond seed noise")}
    assert effects["zaremba"]["commits"] == "2"
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert md.count("**does not hold** after Holm's correction over the 2 regularizers beside the paper's dropout") == 2
    assert "the paired runs come from 2 commits" in md


def test_a_damaged_outputs_file_leaves_its_seed_out_of_the_bootstrap_only(tmp_path, caplog):
    refs = [[f"the cat number {i} sat on the mat"] for i in range(20)]
    for seed in (0, 1):
        for dropout in ("on", "off"):
            name = f"translation-quick-h1-dropout_{dropout}-seed{seed}"
            _outputs(tmp_path / "outputs" / f"{name}.jsonl.gz", [r[0] for r in refs], refs)
            append_row(tmp_path, {"task": "translation", "preset": "quick", "dropout": dropout, "seed": str(seed),
                                  "overrides": "", "config_hash": "h1", "test_bleu": str(50 + seed + (dropout == "on")),
                                  "outputs": f"outputs/{name}.jsonl.gz", "finished_utc": f"2026-11-30T10:0{seed}:00Z",
                                  "command": "bench run"})
    damaged = tmp_path / "outputs" / "translation-quick-h1-dropout_on-seed1.jsonl.gz"
    damaged.write_bytes(damaged.read_bytes()[:30])  # half copied
    build(tmp_path, plots=False)
    effect = next(e for e in read_rows(tmp_path / "effects.csv") if e["metric"] == "test_bleu")
    assert effect["bootstrap"].startswith("seed 0: ") and "seed 1" not in effect["bootstrap"]
    assert "unreadable test outputs" in caplog.text and damaged.name in caplog.text


def test_a_results_file_saved_again_by_a_spreadsheet_still_reads(tmp_path):
    """A byte-order mark before the header (Excel's UTF-8 CSV) must not hide the `task` column."""
    append_row(tmp_path, _row("on", 0, 0.6, "aaaa", "2026-11-30T10:00:00Z", device="Xeon® (2 threads)"))
    path = tmp_path / "runs.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_rows(path)[0]["task"] == "speech" and read_rows(path)[0]["device"] == "Xeon® (2 threads)"
    build(tmp_path, plots=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "runs.csv").write_text("a,b\n1,2\n")
    from tasks.nn.errors import DataError
    with pytest.raises(DataError, match=r"runs.csv: no dropout, preset, seed, task column"):
        build(tmp_path / "other", plots=False)


def _outputs(path, hyps, refs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, (h, r) in enumerate(zip(hyps, refs)):
            f.write(json.dumps({"stream": "test", "key": str(i), "hyp": h, "refs": r}) + "\n")


def test_bleu_effect_carries_a_paired_bootstrap_per_seed(tmp_path):
    refs = [[f"the cat number {i} sat on the mat", f"a cat {i} sat on a mat"] for i in range(40)]
    good = [r[0] for r in refs]
    bad = [f"dog {i} stood" for i in range(40)]
    for seed in (0, 1):
        for dropout, hyps, bleu in (("on", good, 90 + seed), ("off", bad, 5 + 2 * seed)):
            name = f"translation-quick-h1-dropout_{dropout}-seed{seed}"
            _outputs(tmp_path / "outputs" / f"{name}.jsonl.gz", hyps, refs)
            append_row(tmp_path, {"task": "translation", "preset": "quick", "dropout": dropout, "seed": str(seed),
                                  "overrides": "", "config_hash": "h1", "test_bleu": str(bleu), "outputs": f"outputs/{name}.jsonl.gz",
                                  "finished_utc": f"2026-11-30T10:0{seed}:00Z", "command": "bench run"})
    build(tmp_path, plots=False)
    effect = next(e for e in read_rows(tmp_path / "effects.csv") if e["metric"] == "test_bleu")
    assert effect["pairs"] == "2" and effect["verdict"] == "dropout better, beyond seed noise"
    parts = effect["bootstrap"].split("; ")
    assert len(parts) == 2 and parts[0].startswith("seed 0: ") and "-> 100.00 (p=0.0010)" in parts[0]


def test_the_paper_column_compares_like_with_like(tmp_path):
    """translation/paper's 29.03 is tokenized BLEU: Δ is taken on our tokenized BLEU, not on the
    sacrebleu headline, and the table's header says so."""
    row = {"task": "translation", "preset": "paper", "dropout": "on", "seed": "0", "overrides": "",
           "config_hash": "tttt", "test_bleu": "27.00", "test_bleu_tok": "30.00", "finished_utc": "2026-11-30T10:00:00Z",
           "command": "bench run"}
    append_row(tmp_path, row)
    (board,) = read_rows(build(tmp_path, plots=False))
    assert (board["metric"], board["mean"], board["paper_metric"]) == ("test_bleu", "27.00", "test_bleu_tok")
    assert (board["paper"], board["diff"], board["diff_pct"]) == ("29.03", "0.97", "+3.3")
    assert "paper (test_bleu_tok) | Δ (our test_bleu_tok − paper)" in (tmp_path / "LEADERBOARD.md").read_text()


def test_the_bootstrap_scores_an_unk_as_the_rows_do(tmp_path):
    """Its two BLEUs are the rows' BLEUs of the same outputs: each <unk> one wrong word."""
    from tasks.nn import text_metrics

    refs = [[f"the cat number {i} sat on the mat"] for i in range(30)]
    on = [f"the cat number {i} sat on the <unk>" for i in range(30)]
    off = [f"the <unk> number {i} sat <unk> the mat" for i in range(30)]
    _outputs(tmp_path / "on.jsonl.gz", on, refs)
    _outputs(tmp_path / "off.jsonl.gz", off, refs)
    result = stats.bleu_bootstrap(tmp_path / "off.jsonl.gz", tmp_path / "on.jsonl.gz")
    assert result.on == pytest.approx(text_metrics.bleu(on, refs)[0].score)
    assert result.off == pytest.approx(text_metrics.bleu(off, refs)[0].score)


def test_the_data_fingerprint_leaves_out_the_aligners_report(tmp_path):
    """align-report.tsv lists the utterances the aligner skipped by absolute path: were it hashed, a
    checkout moved to another folder would change every speech run's settings hash (and folder)."""
    from benchmark.identity import data_fingerprint
    from datamodules.align import REPORT

    corpus = tmp_path / "an4"
    (corpus / "wav").mkdir(parents=True)
    (corpus / "wav" / "a.phn").write_text("0 10 sil\n")
    before = data_fingerprint([corpus], tmp_path)
    (corpus / REPORT).write_text(f"utterance\tpath\treason\nx\t{tmp_path}/an4/wav/x.flac\tno path\n")
    (corpus / ".align-labels.tsv.123.tmp").write_text("half written")
    assert data_fingerprint([corpus], tmp_path) == before
    (corpus / "wav" / "b.phn").write_text("0 10 sil\n")
    assert data_fingerprint([corpus], tmp_path) != before  # data it reads still counts


def test_a_changed_copy_of_a_published_file_hashes_apart_and_bench_fetch_says_so(tmp_path, monkeypatch, caplog,
                                                                               capsys):
    """A file whose publisher gives its sha256 hashes by name and size when it is the publisher's, and
    apart when its contents differ at the same size (edited, or cut and padded by hand), with a warning;
    `bench fetch` refuses to call such a folder ready."""
    import hashlib
    import os

    from benchmark import identity
    from benchmark.cli import main
    from datamodules.download import sha256_of
    from datamodules.sources import PTB
    from tests.conftest import write_ptb

    folder = write_ptb(tmp_path / "ptb")  # made the publisher's: its digests stand in for Mikolov's
    for split in ("train", "valid", "test"):
        monkeypatch.setitem(PTB.sha256, f"ptb.{split}.txt", sha256_of(folder / f"ptb.{split}.txt"))
    identity._published.cache_clear()
    try:
        by_name_and_size = hashlib.sha256("".join(
            f"ptb/ptb.{s}.txt\t{(folder / f'ptb.{s}.txt').stat().st_size}\n" for s in ("test", "train", "valid")
        ).encode()).hexdigest()
        assert identity.data_fingerprint([folder], tmp_path) == by_name_and_size
        assert main(["fetch", "ptb", "--data-root", str(tmp_path)]) == 0

        train = folder / "ptb.train.txt"
        text = train.read_bytes()
        train.write_bytes(text[:-2] + b"x\n")  # one word changed, the size kept
        os.utime(train, ns=(1, 1))  # a new modification time, whatever the clock's resolution
        assert identity.data_fingerprint([folder], tmp_path) != by_name_and_size
        assert f"{train}: not the publisher's" in caplog.text and "`bench fetch ptb`" in caplog.text
        identity.data_fingerprint([folder], tmp_path)
        assert caplog.text.count("not the publisher's") == 1  # said once, however many runs hash it
        capsys.readouterr()
        assert main(["fetch", "ptb", "--data-root", str(tmp_path)]) == 2
        assert f"{train}: not the publisher's file" in capsys.readouterr().err
        assert train.read_bytes() == text[:-2] + b"x\n"  # said, never replaced behind the user's back
    finally:
        identity._published.cache_clear()


def test_a_preset_whose_own_regularizer_is_not_the_papers_stands_alone_and_the_papers_joins_the_family(tmp_path):
    """ptb/medium-variational's `--dropout on` trains Gal & Ghahramani's variational LSTM: that is the
    comparison the preset is built for, tested alone; the paper's dropout run beside it is one more
    arm against the same `off` runs, corrected with the others."""
    offs = [120.0, 118.0, 121.0]
    ons = {"variational": ([100.0, 99.0, 101.5], "embedding=0.2;hidden=0.2;locked=0.5;per_gate=True"),
           "zaremba": ([110.0, 111.5, 112.0], "dropout=0.5"), "locked": ([112.0, 110.0, 113.5], "locked=0.5")}
    for seed, off in enumerate(offs):
        when = f"2026-11-30T10:0{seed}"
        append_row(tmp_path, {"task": "ptb", "preset": "medium-variational", "dropout": "off", "regularizer": "none",
                              "seed": str(seed), "config_hash": "vvvv", "test_ppl": str(off),
                              "finished_utc": f"{when}:30Z"})
        for name, (ppls, rates) in ons.items():
            append_row(tmp_path, {"task": "ptb", "preset": "medium-variational", "dropout": "on", "regularizer": name,
                                  "dropout_rate": rates, "seed": str(seed), "config_hash": "vvvv",
                                  "test_ppl": str(ppls[seed]), "finished_utc": f"{when}:00Z"})
    build(tmp_path, plots=False)
    effects = {e["regularizer"]: e for e in read_rows(tmp_path / "effects.csv") if e["metric"] == "test_ppl"}
    assert (effects["variational"]["arms"], effects["variational"]["holm"]) == ("1", "")
    assert {effects[r]["arms"] for r in ("zaremba", "locked")} == {"2"}
    assert all(effects[r]["holm"] for r in ("zaremba", "locked"))
