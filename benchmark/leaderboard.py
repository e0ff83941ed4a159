"""results/runs.csv + each preset's `paper:` numbers -> results/leaderboard.csv, LEADERBOARD.md and
one learning-curve plot per task and preset.

One leaderboard row per task x preset x dropout (and per ensemble size): the task's headline metric
(`headline` on its LightningModule) as mean and std over seeds, the paper's figure for that setting
and our difference from it, the train/valid/test values of the task's learning-curve metric
(perplexity or frame accuracy), and where, how long and from which commit. Only runs of a preset as
named count (rows with `overrides` stay in runs.csv, off the board); a seed run twice counts by its
latest row.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

from benchmark import config
from benchmark.errors import ConfigError
from benchmark.results import RUNS_FILE, read_rows, write_rows_atomic

log = logging.getLogger(__name__)
LEADERBOARD_FILE = "leaderboard.csv"
MARKDOWN_FILE = "LEADERBOARD.md"
COLUMNS = ["task", "preset", "dropout", "ensemble", "metric", "mean", "std", "seeds", "paper", "diff", "diff_pct",
           "split_metric", "train", "valid", "test", "epochs", "wall_s", "tokens_per_s", "device", "precision",
           "devices", "commit", "date", "command"]
# What each task's table is, as the paper has it.
TITLES = {
    "ptb": "Word-level perplexity on the Penn Tree Bank (Sec. 4.1, Table 1)",
    "speech": "Frame-level accuracy, acoustic modeling (Sec. 4.2, Table 2)",
    "translation": "English to French translation (Sec. 4.3, Table 3)",
    "captioning": "Image caption generation (Sec. 4.4, Table 4)",
}


class TaskMetrics:
    """A task's headline metric and learning-curve metric, read off its LightningModule."""

    def __init__(self, task: str, preset: str) -> None:
        self.headline, self.curve, self.paper_by_dropout = "test_ppl", "ppl", {}
        try:
            p = config.load_preset(task, preset)
            module = config.import_class(p.module, p.path)
        except ConfigError:  # a preset since deleted: its rows still show, without the paper's numbers
            return
        self.headline = getattr(module, "headline", self.headline)
        self.curve = module.monitor[0].removeprefix("valid_")
        self.paper_by_dropout = {d: config.paper_numbers(p, d) for d in ("on", "off")}


def _fmt(x: float | None, like: float | None = None) -> str:
    """4 decimals for accuracies (<= 1), 2 for perplexities and BLEU; `like` picks by another value
    (a difference is written as precisely as the number it is the difference of)."""
    if x is None:
        return ""
    return f"{x:.4f}" if abs(x if like is None else like) <= 1 else f"{x:.2f}"


def _mean(rows: list[dict], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return mean(values) if values else None


def board_rows(runs: list[dict[str, str]]) -> list[dict]:
    groups: dict[tuple[str, str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in runs:
        if row.get("overrides"):
            continue
        groups[(row["task"], row["preset"], row["dropout"], row.get("ensemble") or "")].append(row)
    out = []
    for (task, preset, dropout, ensemble), rows in sorted(groups.items()):
        rows = list({r["seed"]: r for r in rows}.values())
        tm = TaskMetrics(task, preset)
        values = [float(r[tm.headline]) for r in rows if r.get(tm.headline)]
        if not values:
            continue
        ours = mean(values)
        ref = tm.paper_by_dropout.get(dropout, {}).get(tm.headline)
        last = max(rows, key=lambda r: r.get("finished_utc", ""))
        wall, rate = _mean(rows, "wall_s"), _mean(rows, "tokens_per_s")
        out.append({
            "task": task, "preset": preset, "dropout": dropout, "ensemble": ensemble,
            "metric": tm.headline, "mean": _fmt(ours), "std": _fmt(stdev(values)) if len(values) > 1 else "",
            "seeds": len(values), "paper": "" if ref is None else ref,
            "diff": "" if ref is None else _fmt(ours - ref, like=ours),
            "diff_pct": "" if ref is None else f"{100 * (ours - ref) / ref:+.1f}",
            "split_metric": tm.curve,
            **{s: _fmt(_mean(rows, f"{s}_{tm.curve}")) for s in ("train", "valid", "test")},
            "epochs": last.get("epochs", ""), "wall_s": f"{wall:.0f}" if wall else "",
            "tokens_per_s": f"{rate:.0f}" if rate else "",
            "device": last.get("device", ""), "precision": last.get("precision", ""),
            "devices": last.get("devices", ""), "commit": last.get("git_commit", ""),
            "date": last.get("finished_utc", "")[:10], "command": last.get("command", ""),
        })
    return out


def markdown(rows: list[dict]) -> str:
    """One table per task, laid out like the paper's: setting, then train / valid / test."""
    lines = ["# Leaderboard", "",
             "<!-- generated by `bench leaderboard` from results/runs.csv; do not edit -->",
             "Mean over seeds (± sample std when there are several). *paper*: the paper's number for the same "
             "setting, where it reports one. Learning curves: `curves-<task>-<preset>.png`."]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, trs in by_task.items():
        head, curve = trs[0]["metric"], trs[0]["split_metric"]
        lines += ["", f"## {task}: {TITLES.get(task, task)}", "",
                  f"| setting | dropout | seeds | **{head}** | paper | Δ | train {curve} | valid {curve} | "
                  f"test {curve} | epochs | wall s | device |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in trs:
            setting = r["preset"] + (f" (ensemble of {r['ensemble']})" if r["ensemble"] else "")
            ours = r["mean"] + (f" ± {r['std']}" if r["std"] else "")
            lines.append(f"| {setting} | {r['dropout']} | {r['seeds']} | **{ours}** | {r['paper']} | {r['diff']} | "
                         f"{r['train']} | {r['valid']} | {r['test']} | {r['epochs']} | {r['wall_s']} | "
                         f"{r['device']} |")
        lines += ["", "Commands:", ""] + [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in trs)]
    return "\n".join(lines) + "\n"


def _curve(metrics_csv: Path, metric: str) -> dict[str, dict[int, float]]:
    """{train: {epoch: value}, valid: {...}} from a run's Lightning CSV log (a resumed run's later
    value for an epoch wins)."""
    out: dict[str, dict[int, float]] = {"train": {}, "valid": {}}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for split in out:
                value = row.get(f"{split}_{metric}")
                if value:
                    out[split][int(row["epoch"]) + 1] = float(value)
    return out


def plot_curves(runs: list[dict[str, str]], results_dir: Path) -> list[Path]:
    """curves-<task>-<preset>.png: train (dashed) and valid (solid) curve metric per epoch, dropout
    on vs off on one figure; the gap between the dashed and solid line of one colour is the
    overfitting the paper's dropout closes. Each line is the lowest seed's latest run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    latest: dict[tuple[str, str, str], dict[str, str]] = {}
    for row in sorted(runs, key=lambda r: r.get("finished_utc", ""), reverse=True):  # newest first
        if row.get("overrides") or row.get("ensemble"):
            continue
        key = (row["task"], row["preset"], row["dropout"])
        if key not in latest or int(row["seed"]) < int(latest[key]["seed"]):
            latest[key] = row
    written = []
    for task, preset in sorted({(t, p) for t, p, _ in latest}):
        tm = TaskMetrics(task, preset)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = 0
        for dropout, color in (("off", "tab:red"), ("on", "tab:blue")):
            row = latest.get((task, preset, dropout))
            metrics_csv = Path(row["run_dir"]) / "csv" / "metrics.csv" if row and row.get("run_dir") else None
            if metrics_csv is None or not metrics_csv.is_file():
                continue
            curves = _curve(metrics_csv, tm.curve)
            for split, style in (("train", "--"), ("valid", "-")):
                if curves[split]:
                    epochs = sorted(curves[split])
                    ax.plot(epochs, [curves[split][e] for e in epochs], style, color=color, marker=".",
                            label=f"dropout {dropout}, {split}")
                    drawn += 1
        if not drawn:
            plt.close(fig)
            log.info("%s/%s: no run folder with a CSV log here; its plot is left as it was", task, preset)
            continue
        if tm.curve == "ppl":
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"ppl": "perplexity per word (log scale)", "frame_acc": "frame accuracy"}.get(tm.curve, tm.curve))
        ax.set_title(f"{task}/{preset}: train (dashed) vs valid (solid)")
        fig.text(0.01, 0.01, "train: mean over the epoch, dropout active; valid: end of epoch, no dropout",
                 fontsize=7, color="0.4")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(results_dir) / f"curves-{task}-{preset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def build(results_dir: Path, plots: bool = True) -> Path:
    runs = read_rows(Path(results_dir) / RUNS_FILE)
    out = board_rows(runs)
    path = Path(results_dir) / LEADERBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows_atomic(path, out, COLUMNS)
    md = path.parent / MARKDOWN_FILE
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(markdown(out))
    tmp.replace(md)
    if plots:
        for png in plot_curves(runs, results_dir):
            log.info("wrote %s", png)
    return path
