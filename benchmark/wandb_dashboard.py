"""`bench dashboard`: the paper's comparison as a W&B workspace and report (wandb-workspaces).

The definitions come from a results folder and the runs it names: per task, the metrics those runs
logged (read from their CSV logs, and from their offline W&B files where they have them), grouped
into the learning curves (train/valid per epoch, dropout on against off, seeds as a min-max band),
the headline beside the paper's figure (a run's summary holds it), the test metrics, the sample-output tables, and the step panels
(throughput, gradient norm, learning rate, loss). Online they are saved to W&B and their URLs
printed; offline (no account) they are written to a JSON file that `bench dashboard --upload FILE`
publishes later, after `wandb sync` has uploaded the runs.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from benchmark import leaderboard, wandb_log
from benchmark.results import metric_logs
from tasks import registry
from tasks.nn.errors import ConfigError

DEFINITIONS_FILE = "wandb-dashboard.json"
STEP_PREFIXES = ("train_loss", "train_nll", "loss_scale", "grad_norm", "tok/s", "lr-")
ALWAYS_STEP = ("grad_norm", "tok/s")  # the throughput and gradient-norm panels every task section has
# Config keys every run logs (benchmark/runner.py). A group is one setting's seeds, as the leaderboard
# pools them: presets, settings hashes and regularizers never average together.
GROUP_KEYS = ("task", "preset", "config_hash", "dropout", "regularizer")
SAMPLE_TABLES = ("test", "valid")  # the sample tables the runs log (tasks/nn/text_metrics.py: log_samples)


def logged_keys(run_dir: Path) -> set[str]:
    """Every metric a run logged: its CSV logs' columns and its offline W&B files' history and summary."""
    keys: set[str] = set()
    for path in metric_logs(run_dir):
        with open(path, newline="") as f:
            keys |= set(next(csv.reader(f), []))
    for run_file in Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"):
        # A run that ended moments ago may still be flushing its file (wandb_log.offline_run_keys);
        # an older file without an exit record is a crashed attempt, not worth waiting for.
        fresh = time.time() - run_file.stat().st_mtime < FLUSH_S
        found = wandb_log.offline_run_keys(run_file, wait_s=FLUSH_S if fresh else 0.0)
        keys |= {k for k in found["history"] | found["summary"] if not k.startswith("_")}
    return keys - AXES


AXES = {"epoch", "step", "trainer/global_step"}  # what the others are plotted against
FLUSH_S = 60.0  # how long after its last write a W&B run file may still be flushing


def definitions(results_dir: Path, project: str, entity: str | None, runs_dir: Path | None = None) -> dict[str, Any]:
    """What the workspace and the report show, as plain data (the JSON file offline)."""
    runs = leaderboard.load_runs(results_dir)
    rows = [r for r in runs if not r.get("ensemble") and not r.get("evaluation")]
    if runs_dir is not None:  # one sweep's runs: those it put under its runs folder, `--set` ones included
        rows = [r for r in rows if Path(r.get("run_dir", "")).resolve().is_relative_to(Path(runs_dir).resolve())]
    else:  # the board's: each preset's current settings as named, no superseded hashes, no `--set` runs
        current = leaderboard.current_hashes(runs)
        rows = [r for r in rows if not r.get("overrides") and current.get((r["task"], r["preset"])) == leaderboard.pool_hash(r)]
    if not rows:
        raise ConfigError(f"{results_dir / 'runs.csv'}: no training runs" + (f" under {runs_dir}" if runs_dir else ""))
    # The on/off comparison, `on` being what `--dropout on` trains with (the paper's dropout, or the
    # preset's own regularizer); the other regularizers' rows are in the leaderboard table (its section).
    board_rows = [r for r in leaderboard.board_rows(rows) if r["status"] == "current"]
    default = {(t, p): leaderboard.TaskMetrics(t, p).default_regularizer  # one preset load per setting
               for t, p in {(r["task"], r["preset"]) for r in board_rows}}
    board = {(r["task"], r["preset"], r["dropout"]): r for r in board_rows
             if r["regularizer"] in ("none", default[(r["task"], r["preset"])])}
    effects = leaderboard.effect_rows(rows, results_dir)
    tasks = []
    for task in sorted({r["task"] for r in rows}):
        spec, task_rows = registry.get(task), [r for r in rows if r["task"] == task]
        keys = set().union(*(logged_keys(Path(r["run_dir"])) for r in task_rows if r.get("run_dir")))
        # The rows' metrics too: all that is known of runs whose folders are not here.
        keys |= {k for r in task_rows for k in r if k.startswith(spec.result_keys) and r[k]}
        epoch = {k for k in keys if k.startswith(("train_", "valid_")) and not k.startswith((*STEP_PREFIXES, "train_eval_"))}
        test = {k for k in keys if k.startswith(("test_", "best_test_", "train_eval_"))}
        tables = {k for k in keys if k in SAMPLE_TABLES}
        paper = {k for k in keys if k.startswith("paper/")}  # the paper's figures, in a run's summary
        tasks.append({
            "task": task, "title": spec.title, "headline": spec.headline, "curve": spec.curve,
            "epoch_metrics": sorted(epoch), "test_metrics": sorted(test), "tables": sorted(tables),
            # throughput, gradient norm, lr, loss, ...; the first two always, every run with a logger logs
            # them (benchmark/callbacks.py), though rows whose run folders are elsewhere cannot show it here
            "step_metrics": sorted((keys - epoch - test - tables - paper) | set(ALWAYS_STEP)),
            "paper_metrics": sorted(paper),
            "paper_metric": spec.paper_metric or spec.headline,  # ours computed as the paper computed its figure
            "board": [{k: b[k] for k in ("preset", "dropout", "seeds", "mean", "std", "paper", "diff")}
                      for (t, _, _), b in sorted(board.items()) if t == task],
            "hashes": sorted({r.get("config_hash", "") for r in task_rows}),  # "": rows from before hashes
            "effects": [{k: e.get(k, "") for k in ("preset", "regularizer", "metric", "diff", "ci_low", "ci_high", "pairs",
                                                   "verdict", "p_value", "arms", "holm")}
                        for e in effects if e["task"] == task],
            "runs": sorted({Path(r["run_dir"]).name for r in task_rows if r.get("run_dir")}),
        })
    return {"project": project, "entity": entity, "title": "rnnreg-bench: dropout on the non-recurrent connections",
            "tasks": tasks, "leaderboard": (Path(results_dir) / leaderboard.MARKDOWN_FILE).read_text()
            if (Path(results_dir) / leaderboard.MARKDOWN_FILE).is_file() else ""}


def _line(title: str, keys: list[str], x: str = "epoch"):
    import wandb_workspaces.reports.v2 as wr

    return wr.LinePlot(title=title, x=x, y=keys, groupby_aggfunc="mean", groupby_rangefunc="minmax")


def _task_panels(t: dict[str, Any]) -> list:
    import wandb_workspaces.reports.v2 as wr

    # The headline beside the paper's figure per group (the paper's is the same in every run that has
    # one); where the paper computed it otherwise (tokenized BLEU), ours computed its way too.
    like = t.get("paper_metric", t["headline"])  # absent from the files of older versions
    ours, paper = dict.fromkeys([t["headline"], like]), f"paper/{like}"
    panels = [wr.BarPlot(title=f"{t['task']}: {t['headline']} against the paper", metrics=[*ours, paper],
                         groupby_aggfunc="mean", groupby_rangefunc="minmax")] if paper in t.get("paper_metrics", ()) else []
    panels += [_line(f"{t['task']}: {k}", [k]) for k in t["epoch_metrics"]]
    panels += [wr.BarPlot(title=f"{t['task']}: {k}", metrics=[k], groupby_aggfunc="mean", groupby_rangefunc="minmax")
               for k in t["test_metrics"]]
    panels += [_line(f"{t['task']}: {k}", [k], x="Step") for k in t["step_metrics"]]
    panels += [wr.WeavePanelSummaryTable(table_name=name) for name in t["tables"] or SAMPLE_TABLES]
    return panels


def workspace(defs: dict[str, Any], entity: str):
    """Sections per task; runs grouped by task, dropout and regularizer, so each curve is a mean with
    its seed band.
    Last, the leaderboard table that `bench leaderboard --logger wandb` logs in a run of its own."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    names = sorted(n for t in defs["tasks"] for n in t["runs"]) + [wandb_log.LEADERBOARD_RUN]
    return ws.Workspace(
        entity=entity, project=defs["project"], name=defs["title"],
        sections=[ws.Section(name=f"{t['task']}: {t['title']}", panels=_task_panels(t), is_open=True)
                  for t in defs["tasks"]]
        + [ws.Section(name="Leaderboard", panels=[wr.WeavePanelSummaryTable(table_name=wandb_log.LEADERBOARD_RUN)],
                      is_open=True)],
        runset_settings=ws.RunsetSettings(groupby=[ws.Config(key) for key in GROUP_KEYS],
                                          query="^(" + "|".join(names) + ")$", regex_query=True))


def holm_note(e: dict[str, Any]) -> str:
    """What LEADERBOARD.md adds under a claim that Holm's correction over the arms undoes."""
    if leaderboard.holds_after_holm(e) is False:
        return f"; does not hold after Holm's correction over {e['arms']} regularizers (p = {e['p_value']})"
    return ""


def report(defs: dict[str, Any], entity: str):
    """Per task: the paper's number, ours on and off, dropout's effect, then the task's panels."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    blocks: list = [wr.H1(defs["title"]), wr.P("Dropout on the non-recurrent connections only (Zaremba et al. 2014), "
                                               "on against off, per task; seeds as bands.")]
    for t in defs["tasks"]:
        lines = [f"{b['preset']} dropout {b['dropout']}: {t['headline']} {b['mean']}"
                 + (f" ± {b['std']}" if b["std"] else "") + f" over {b['seeds']} seed(s)"
                 + (f"; paper {b['paper']}" if b["paper"] else "") for b in t["board"]]
        lines += [f"{e['preset']} {e['regularizer']} {e['metric']}: on − off {e['diff']}"
                  + (f" [{e['ci_low']}, {e['ci_high']}]" if e["ci_low"] else "") + f", {e['verdict']}"
                  + holm_note(e) for e in t["effects"]]
        # Only the settings this results folder's board shows, not every run of the task in the project;
        # runs from before settings hashes log none to filter on (and older definitions name none).
        hashes = t.get("hashes") or [""]
        by_hash = [ws.Config("config_hash").isin(hashes)] if "" not in hashes else []
        runset = wr.Runset(entity=entity, project=defs["project"], name=t["task"],
                           filters=[ws.Config("task") == t["task"], *by_hash],
                           # a report's runset reads a bare name as a run attribute ("group", "name")
                           groupby=[f"config.{key}" for key in GROUP_KEYS[1:]])
        blocks += [wr.H2(t["title"]), wr.UnorderedList(items=lines or ["no current rows"]),
                   wr.PanelGrid(runsets=[runset], panels=_task_panels(t))]
    if defs["leaderboard"]:
        blocks += [wr.H2("Leaderboard"), wr.MarkdownBlock(text=defs["leaderboard"])]
    return wr.Report(project=defs["project"], entity=entity, title=defs["title"], blocks=blocks)


def publish(defs: dict[str, Any], entity: str | None = None) -> tuple[str, str]:
    """Save the workspace and the report to W&B; their URLs."""
    import wandb

    entity = entity or defs.get("entity") or wandb.Api().default_entity
    saved_ws = workspace(defs, entity).save()
    saved_report = report(defs, entity).save()
    return saved_ws.url, saved_report.url


def write_offline(defs: dict[str, Any], path: Path) -> Path:
    """The definitions, plus the workspace as W&B stores it (built here, without network, so an
    unpublishable definition fails now and not at upload)."""
    wire = workspace(defs, defs.get("entity") or "ENTITY")._to_model().model_dump(by_alias=True, mode="json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**defs, "workspace_view": wire}, indent=1) + "\n")
    tmp.replace(path)
    return path
