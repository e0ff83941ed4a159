"""The results file: atomic appends, a header that grows with new metrics, concurrent writers."""

from __future__ import annotations

import csv
import multiprocessing as mp

from benchmark.results import CSV_LOG, append_row, last_logged, metric_logs, read_rows, set_log_aside


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


def test_a_row_replaces_only_a_row_of_the_same_run(tmp_path):
    append_row(tmp_path, {"task": "ptb", "run_dir": "runs/a", "run_id": "1", "test_ppl": 9.0})
    append_row(tmp_path, {"task": "ptb", "run_dir": "runs/b", "run_id": "2", "test_ppl": 8.0})
    append_row(tmp_path, {"task": "ptb", "run_dir": "runs/a", "test_ppl": 7.0})  # an older row, no id
    append_row(tmp_path, {"task": "ptb", "run_dir": "runs/a", "run_id": "1", "test_ppl": 9.0}, replaces="run_id")
    append_row(tmp_path, {"task": "ptb", "run_dir": "runs/a", "run_id": "3", "test_ppl": 6.0}, replaces="run_id")
    rows = read_rows(tmp_path / "runs.csv")
    assert [(r["run_id"], r["test_ppl"]) for r in rows] == [("2", "8.0"), ("", "7.0"), ("1", "9.0"), ("3", "6.0")]


def test_a_resumed_runs_csv_logs_are_kept_in_order_and_read_as_one(tmp_path):
    folder = tmp_path / CSV_LOG
    folder.mkdir()
    assert set_log_aside(tmp_path) is None and metric_logs(tmp_path) == []
    for i in range(1, 12):  # eleven resumes: part 10 and 11 sort after 9
        (folder / "metrics.csv").write_text(f"epoch,step,valid_ppl,train_loss\n{i},{i},{100 - i},\n{i},{i},,{i}.5\n")
        assert set_log_aside(tmp_path) == folder / f"metrics.part-{i}.csv"
    (folder / "metrics.part-3.csv").unlink()  # a part deleted by hand: the next number is still new
    (folder / "metrics.part-2 (copy).csv").write_text("not a part")
    (folder / "metrics.csv").write_text("epoch,step,valid_ppl,train_loss\n12,12,88.0,\n")
    assert set_log_aside(tmp_path) == folder / "metrics.part-12.csv"
    (folder / "metrics.csv").write_text("epoch,step,test_ppl\n13,13,5.0\n")
    assert [p.name for p in metric_logs(tmp_path)] == [*(f"metrics.part-{i}.csv" for i in (1, 2, *range(4, 13))),
                                                       "metrics.csv"]
    assert last_logged(tmp_path, ("valid_", "train_")) == {"valid_ppl": 88.0, "train_loss": 11.5}
