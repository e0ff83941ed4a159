"""The results file: atomic appends, a header that grows with new metrics, concurrent writers."""

from __future__ import annotations

import csv
import multiprocessing as mp

from benchmark.results import append_row, read_rows


def _append_many(results_dir, worker):
    for i in range(10):
        append_row(results_dir, {"task": "ptb", "worker": worker, "i": i})


def test_header_is_the_union_of_rows(tmp_path):
    append_row(tmp_path, {"task": "ptb", "test_ppl": 1.0})
    append_row(tmp_path, {"task": "speech", "test_acc": 0.5})
    rows = read_rows(tmp_path / "runs.csv")
    assert rows == [{"task": "ptb", "test_ppl": "1.0", "test_acc": ""},
                    {"task": "speech", "test_ppl": "", "test_acc": "0.5"}]
    assert not list(tmp_path.glob("*.tmp"))


def test_concurrent_runs_lose_no_row(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    with open(tmp_path / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["worker"], r["i"]) for r in rows) == sorted((str(w), str(i)) for w in range(3) for i in range(10))
