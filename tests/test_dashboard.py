"""The offline dashboard: `bench leaderboard` writes results/dashboard.html, one self-contained page,
and headless Chromium (Debian's package) renders every section of it without a console message."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from benchmark.cli import main
from benchmark.results import read_rows, write_rows_atomic
from tests.test_sweeps import TINY, bench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A results folder of two tiny PTB runs (dropout on and off), as if of the preset as named."""
    from tests.conftest import write_ptb

    root = tmp_path_factory.mktemp("board")
    write_ptb(root / "data" / "ptb")
    for dropout in ("on", "off"):
        assert bench(root, "--task", "ptb", "--preset", "quick", "--dropout", dropout, "--data-root",
                     str(root / "data"), *TINY) == 0
    rows = read_rows(root / "results" / "runs.csv")
    write_rows_atomic(root / "results" / "runs.csv", [{**r, "overrides": ""} for r in rows])
    shutil.rmtree(root / "runs")  # the curves come from results/curves/, as in a clone of results/
    assert main(["leaderboard", "--results-dir", str(root / "results")]) == 0  # the board, then the page
    return root / "results"


def test_the_page_holds_every_section_and_needs_no_network(board):
    page = (board / "dashboard.html").read_text(encoding="utf-8")
    assert 'id="task-ptb"' in page and 'id="curves-ptb-quick"' in page
    assert "dropout on, valid (1 seed)" in page and "dropout off, train (1 seed)" in page
    assert "test_ppl (lower is better): on − off" in page  # dropout's effect, with its verdict
    assert not re.search(r"<script[^>]+src=", page)  # Plotly's JavaScript inlined: nothing to fetch


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)")
def test_headless_chromium_renders_every_section_without_console_messages(board, tmp_path):
    url = (board / "dashboard.html").resolve().as_uri()
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    done = subprocess.run([*common, "--enable-logging=stderr", "--v=0", "--dump-dom", url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # an error (or any message) the page's scripts wrote
    dom = done.stdout
    for section in re.findall(r'id="(curves-[\w-]+)"', dom):  # each figure drew its SVG
        div = dom[dom.index(f'id="{section}"'):]
        assert 'class="main-svg"' in div[:20000], section
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20000


def test_wandb_definitions_name_every_task_and_metric_the_runs_logged(tmp_path, monkeypatch):
    """A real (tiny) sweep logged to W&B offline; `bench dashboard` offline writes the workspace and
    report definitions, which name every metric each run's offline W&B file holds."""
    from benchmark import wandb_log
    from tests.conftest import write_ptb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    write_ptb(tmp_path / "data" / "ptb")
    for dropout in ("on", "off"):
        assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--dropout", dropout, "--data-root",
                     str(tmp_path / "data"), "--logger", "csv,wandb", "--set", "trainer.log_every_n_steps=1",
                     *TINY) == 0
    assert main(["dashboard", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]) == 0
    defs = json.loads((tmp_path / "results" / "wandb-dashboard.json").read_text())
    (task,) = defs["tasks"]
    assert task["task"] == "ptb" and len(task["runs"]) == 2 and task["headline"] == "test_ppl"
    named = set(task["epoch_metrics"]) | set(task["test_metrics"]) | set(task["step_metrics"]) | set(task["tables"])
    assert {"train_ppl", "valid_ppl", "test_ppl", "grad_norm", "tok/s"} <= named
    for run_file in (tmp_path / "runs").glob("*/wandb/offline-run-*/run-*.wandb"):
        found = wandb_log.offline_run_keys(run_file)
        logged = {k for k in found["history"] | found["summary"] if not k.startswith("_")} - {"epoch", "trainer/global_step"}
        assert logged and logged <= named, logged - named
    sections = [s["name"] for s in defs["workspace_view"]["spec"]["section"]["panelBankConfig"]["sections"]]
    assert any(name.startswith("ptb:") for name in sections)
