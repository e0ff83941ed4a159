"""The offline dashboard: `bench leaderboard` writes results/dashboard.html, one self-contained page,
and headless Chromium (Debian's package) renders every section of it without a console message."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results import read_rows, write_rows_atomic
from tests.test_sweeps import TINY, bench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A results folder of three tiny PTB runs (dropout off, on, and on under `locked`), as if of the
    preset as named."""
    from tests.conftest import write_ptb

    root = tmp_path_factory.mktemp("board")
    write_ptb(root / "data" / "ptb")
    for dropout, regularizer in (("on", "zaremba"), ("off", "zaremba"), ("on", "locked")):
        assert bench(root, "--task", "ptb", "--preset", "quick", "--dropout", dropout, "--regularizer", regularizer,
                     "--data-root", str(root / "data"), *TINY) == 0
    rows = read_rows(root / "results" / "runs.csv")
    write_rows_atomic(root / "results" / "runs.csv", [{**r, "overrides": ""} for r in rows])
    shutil.rmtree(root / "runs")  # the curves come from results/curves/, as in a clone of results/
    assert main(["leaderboard", "--results-dir", str(root / "results")]) == 0  # the board, then the page
    return root / "results"


def test_the_page_holds_every_section_and_needs_no_network(board):
    page = (board / "dashboard.html").read_text(encoding="utf-8")
    assert 'id="task-ptb"' in page and 'id="curves-ptb-quick"' in page
    assert "dropout on, valid (1 seed)" in page and "dropout off, train (1 seed)" in page
    # The effects in LEADERBOARD.md's own words: dropout's, and another regularizer's with its rates.
    assert "quick dropout <code>test_ppl</code> (lower is better): on − off = <b>" in page
    assert re.search(r"quick locked \(dropout=0\.0;locked=[0-9.]+\) <code>test_ppl</code> \(lower is better\)", page)
    assert not re.search(r"<script[^>]+src=", page)  # Plotly's JavaScript inlined: nothing to fetch


def test_other_regularizers_curves_are_drawn_hidden_until_their_legend_entry_is_clicked(board, monkeypatch):
    from types import SimpleNamespace

    from benchmark import dashboard, leaderboard

    real = leaderboard.seed_curves  # each run as two seeds apart, so that the bands are drawn too
    monkeypatch.setattr(leaderboard, "seed_curves", lambda *a: [
        {split: {e: v * k for e, v in curve[split].items()} for split in curve} for curve in real(*a) for k in (1, 1.1)])
    grouped = leaderboard.groups(leaderboard.load_runs(board))
    (chash,) = {h for (t, p, h, a, e) in grouped if (t, p) == ("ptb", "quick")}
    (locked,) = [a for a in leaderboard.arms(grouped, "ptb", "quick", chash) if a.startswith("locked ")]

    def legend(tm, on):
        fig = dashboard.curve_figure("ptb", "quick", chash, grouped, board, tm, on)
        groups = {}
        for trace in fig.data:
            groups.setdefault(trace.legendgroup, set()).add(trace.visible)
        assert all(len(g) == 1 for g in groups.values()), groups  # an arm's lines and bands show together
        assert sum(t.fill == "tonexty" for t in fig.data) == 2 * len(groups)  # a band per arm and split
        return {name: visible.pop() for name, visible in groups.items()}

    # The paper's dropout is what --dropout on trains: it and off shown, locked hidden until clicked.
    shown = legend(leaderboard.TaskMetrics("ptb", "quick"), "on")
    assert shown.pop("dropout off") is True and shown.pop("dropout on") is True
    assert list(shown) == [dashboard.arm_label(locked)] and shown[dashboard.arm_label(locked)] == "legendonly"
    # A preset whose own regularizer is locked (as ptb/*-variational's is variational): the paper's
    # dropout becomes one of the hidden others, under its name.
    shown = legend(SimpleNamespace(default_regularizer="locked", curve="ppl"), locked)
    assert shown == {"dropout off": True, "locked on": True, "dropout (zaremba)": "legendonly"}


def test_uploading_definitions_of_an_older_bench_dashboard_says_to_rebuild_them(tmp_path, capsys):
    old = tmp_path / "wandb-dashboard.json"
    old.write_text(json.dumps({"project": "p", "tasks": [{"task": "ptb", "effects": [{"preset": "quick", "diff": "1"}]}]}))
    assert main(["dashboard", "--upload", str(old)]) == 2
    assert f"{old}: written by an older `bench dashboard`" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)")
def test_headless_chromium_renders_every_section_without_console_messages(board, tmp_path):
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    page = board / "dashboard.html"

    def render(page):  # the DOM after the scripts ran, and what they wrote to the console
        done = subprocess.run([*common, "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]

    # The check can fail: a copy of the page whose script reports an error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", "<script>console.error('dashboard check')</script></body>"), encoding="utf-8")
    assert any("dashboard check" in line for line in render(broken)[1])

    dom, console = render(page)
    assert not console, console  # an error (or any message) the page's scripts wrote
    sections = re.findall(r'<section id="(task-[\w-]+)"', dom)
    assert sections == ["task-ptb"]
    for section in sections:  # each task: its figure drew its SVG, then the board and dropout's effect
        body = dom[dom.index(f'id="{section}"'):].split("</section>")[0]
        assert re.search(r'id="curves-[\w-]+"', body) and 'class="main-svg"' in body, section
        assert "<table" in body and 'class="effect"' in body, section
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", page.resolve().as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20000


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)")
def test_the_committed_dashboard_renders_all_four_tasks_without_console_messages():
    """results/dashboard.html, the page the README shows: every task's figure, board, dropout's
    effect and, where a task decodes, its test outputs."""
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "results" / "dashboard.html"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                           "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    dom = done.stdout
    sections = re.findall(r'<section id="(task-[\w-]+)"', dom)
    assert sorted(sections) == ["task-captioning", "task-ptb", "task-speech", "task-translation"]
    for section in sections:
        body = dom[dom.index(f'id="{section}"'):].split("</section>")[0]
        assert 'class="main-svg"' in body and "<table" in body and 'class="effect"' in body, section
        assert ("Test outputs" in body) == (section != "task-ptb"), section


def test_wandb_definitions_name_every_task_and_metric_the_runs_logged(tmp_path, monkeypatch):
    """A real (tiny) sweep logged to W&B offline; `bench dashboard` offline writes the workspace and
    report definitions, which name every metric each run's offline W&B file holds."""
    from benchmark import wandb_log
    from tests.conftest import write_ptb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    write_ptb(tmp_path / "data" / "ptb")
    for dropout in ("on", "off"):  # ptb/small: the paper ran it without dropout (114.5)
        assert bench(tmp_path, "--task", "ptb", "--preset", "small", "--dropout", dropout, "--data-root",
                     str(tmp_path / "data"), "--logger", "csv,wandb", "--set", "trainer.log_every_n_steps=1",
                     *TINY) == 0
    assert main(["dashboard", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]) == 0
    defs = json.loads((tmp_path / "results" / "wandb-dashboard.json").read_text())
    (task,) = defs["tasks"]
    assert task["task"] == "ptb" and len(task["runs"]) == 2 and task["headline"] == "test_ppl"
    named = {k for part in ("epoch_metrics", "test_metrics", "step_metrics", "tables", "paper_metrics") for k in task[part]}
    # The paper's figures: a bar beside the headline, not curves over steps.
    assert task["paper_metrics"] == ["paper/test_ppl", "paper/train_ppl", "paper/valid_ppl"]
    assert not {k for k in task["step_metrics"] if k.startswith("paper/")}
    assert {"train_ppl", "valid_ppl", "test_ppl", "grad_norm", "tok/s"} <= named
    run_files = list((tmp_path / "runs").glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 2
    for run_file in run_files:
        found = wandb_log.offline_run_keys(run_file, wait_s=60)
        logged = {k for k in found["history"] | found["summary"] if not k.startswith("_")} - {"epoch", "trainer/global_step"}
        assert {"grad_norm", "tok/s", "train_ppl", "valid_ppl", "test_ppl"} <= logged  # the panels have data
        assert logged <= named, logged - named
    sections = [s["name"] for s in defs["workspace_view"]["spec"]["section"]["panelBankConfig"]["sections"]]
    assert any(name.startswith("ptb:") for name in sections)
    assert "ptb: test_ppl against the paper" in json.dumps(defs["workspace_view"])


def test_the_committed_wandb_definitions_cover_all_four_tasks_and_every_regularizer_effect():
    """results/wandb-dashboard.json, built from the committed rows: a section per task with its headline
    among the test metrics, the throughput and gradient-norm panels, and every effect in effects.csv."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "results"
    defs = json.loads((results / "wandb-dashboard.json").read_text())
    tasks = {t["task"]: t for t in defs["tasks"]}
    assert sorted(tasks) == ["captioning", "ptb", "speech", "translation"]
    for t in tasks.values():
        assert t["headline"] in t["test_metrics"] and {"grad_norm", "tok/s"} <= set(t["step_metrics"]), t["task"]
    effects = read_rows(results / "effects.csv")
    assert sorted((e["task"], e["preset"], e["regularizer"], e["metric"]) for e in effects) == sorted(
        (t["task"], e["preset"], e["regularizer"], e["metric"]) for t in tasks.values() for e in t["effects"])


def test_online_dashboard_saves_the_workspace_and_a_report_grouped_by_config(board, monkeypatch, capsys):
    """The online path with W&B's server stood in for: `bench dashboard` builds both views as W&B
    stores them, saves them and prints their URLs; the report's runsets group by the config keys
    every run logs (a bare name would be read as a run attribute, and nothing would group)."""
    from types import SimpleNamespace

    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.reports.v2.interface as wri
    import wandb_workspaces.workspaces as ws

    monkeypatch.setattr(wri, "_get_api", lambda: None)  # the report resolves its project's id by GraphQL
    monkeypatch.setattr(wri, "execute_graphql", lambda *a, **k: {"project": {"internalId": "UHJvamVjdDox"}})
    saved = {}

    def fake_save(kind):
        def save(self, *args, **kwargs):
            saved[kind] = self._to_model().model_dump(by_alias=True, mode="json")
            return SimpleNamespace(url=f"https://wandb.test/{kind}")
        return save

    monkeypatch.setattr(ws.Workspace, "save", fake_save("workspace"))
    monkeypatch.setattr(wr.Report, "save", fake_save("report"))
    assert main(["dashboard", "--results-dir", str(board), "--wandb-mode", "online", "--wandb-entity", "team"]) == 0
    assert capsys.readouterr().out.split() == ["https://wandb.test/workspace", "https://wandb.test/report"]
    assert saved["workspace"]["entity"] == "team" and saved["report"]["project"]["entityName"] == "team"
    config = [{"section": "config", "name": f"{key}.value"}
              for key in ("task", "preset", "config_hash", "dropout", "regularizer")]
    for kind, keys in (("workspace", config), ("report", config[1:])):
        groupings = re.findall(r'"grouping": (\[[^\]]*\])', json.dumps(saved[kind]))
        assert groupings and all(json.loads(g) == keys for g in groupings), (kind, groupings)
    report = json.dumps(saved["report"])
    assert "ptb" in report and "test_ppl" in report
    chash = read_rows(board / "runs.csv")[0]["config_hash"]
    assert "config_hash" in report and chash in report  # only the board's settings, not every ptb run in the project
    assert "quick zaremba test_ppl: on" in report and "quick locked test_ppl: on" in report  # each effect named
    sections = [s["name"] for s in saved["workspace"]["spec"]["section"]["panelBankConfig"]["sections"]]
    assert sections[0].startswith("ptb:") and sections[-1] == "Leaderboard"


def test_wandb_disabled_sends_nothing_and_still_writes_the_definitions(board, tmp_path, monkeypatch, capsys):
    """WANDB_MODE=disabled wins over `--wandb-mode online`: nothing is published, and the local
    definitions file is written with a line that says W&B is off, not that it is offline."""
    from benchmark import wandb_dashboard

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(wandb_dashboard, "publish", lambda *a, **k: pytest.fail("published with W&B disabled"))
    out = tmp_path / "defs.json"
    assert main(["dashboard", "--results-dir", str(board), "--wandb-mode", "online", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"][0]["task"] == "ptb"
    out = capsys.readouterr().out
    assert out.startswith("W&B disabled by WANDB_MODE=disabled, nothing sent:")
    assert "wandb sync" not in out and "without WANDB_MODE=disabled" in out  # no offline runs to upload


def test_wandb_definitions_hold_the_boards_rows_only(board, tmp_path):
    """Superseded settings and `--set` runs stay off the W&B views as they stay off the board: a
    group is one setting's seeds, never an average over presets or hashes."""
    from benchmark import wandb_dashboard

    results = tmp_path / "results"
    shutil.copytree(board, results)
    rows = read_rows(results / "runs.csv")
    older = {**rows[0], "config_hash": "0123456789", "finished_utc": "2000-01-01T00:00:00Z",
             "run_dir": "runs/ptb-quick-0123456789-dropout_on-seed0"}
    tweaked = {**rows[1], "overrides": "model.lr=2", "run_dir": "runs/ptb-quick-tweaked-dropout_off-seed0"}
    write_rows_atomic(results / "runs.csv", [*rows, older, tweaked])
    defs = wandb_dashboard.definitions(results, "rnnreg-bench", None)
    (task,) = defs["tasks"]
    assert task["hashes"] == [rows[0]["config_hash"]]
    assert sorted(task["runs"]) == sorted(Path(r["run_dir"]).name for r in rows)
    assert wandb_dashboard.GROUP_KEYS == ("task", "preset", "config_hash", "dropout", "regularizer")


def test_the_page_and_the_wandb_report_say_when_holms_correction_undoes_a_claim():
    from benchmark import dashboard, wandb_dashboard

    effect = {"task": "speech", "preset": "quick", "regularizer": "locked", "rates": "locked=0.5",
              "metric": "test_frame_acc", "better": "higher", "diff": "0.0400", "ci_low": "0.0100",
              "ci_high": "0.0700", "pairs": "3", "verdict": "locked better, beyond seed noise", "holm": "not beyond",
              "arms": "6", "p_value": "0.0185", "env": "one environment", "bootstrap": "", "commits": "1"}
    for text in (dashboard.effect_html(effect), wandb_dashboard.holm_note(effect)):
        assert "does not hold" in text and "0.0185" in text
    held = {**effect, "holm": "beyond seed noise"}
    assert "holds after Holm" in dashboard.effect_html(held) and wandb_dashboard.holm_note(held) == ""


def test_the_curves_come_from_the_results_folder_not_a_run_folder_found_here(board, tmp_path, monkeypatch):
    """A row's run_dir is relative to wherever it ran; a folder of that name under the current
    directory (someone's own run) must not replace the reference curve kept in results/curves/."""
    from benchmark import leaderboard

    rows = read_rows(board / "runs.csv")
    row = next(r for r in rows if r.get("curves"))
    kept = leaderboard.seed_curves([row], "ppl", board)
    monkeypatch.chdir(tmp_path)
    local = tmp_path / row["run_dir"] / "csv"
    local.mkdir(parents=True)
    (local / "metrics.csv").write_text("epoch,train_ppl,valid_ppl\n0,999,888\n")
    assert leaderboard.seed_curves([row], "ppl", board) == kept and kept[0]["valid"] != {1: 888.0}


def test_damaged_outputs_and_curves_files_are_left_out_with_a_line_not_a_traceback(board, tmp_path, caplog):
    from benchmark import dashboard, leaderboard

    results = tmp_path / "results"
    shutil.copytree(board, results)
    row = next(r for r in read_rows(results / "runs.csv") if r.get("curves"))
    row["outputs"] = "outputs/half-copied.jsonl.gz"  # PTB keeps none: a translation run's, cut short
    item = {"stream": "test", "hyp": "un chat", "refs": ["un chat noir"]}
    whole = gzip.compress(("\n".join(json.dumps(item) for _ in range(2000)) + "\n").encode())
    (results / "outputs").mkdir(exist_ok=True)
    (results / row["outputs"]).write_bytes(whole[:40])
    curve = results / row["curves"]
    curve.write_text(curve.read_text().replace("\n0,", "\nn/a,", 1))
    assert dashboard.samples([row], results) == []
    assert leaderboard.seed_curves([row], "ppl", results) == [{"train": {}, "valid": {}}]
    assert "unreadable test outputs" in caplog.text and "unreadable learning curve" in caplog.text
    assert main(["leaderboard", "--results-dir", str(results)]) == 0  # the board and the page still build
