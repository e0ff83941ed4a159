"""results/runs.csv + each preset's `paper:` numbers -> results/leaderboard.csv.

Long format, one line per (task, preset, dropout, metric): the mean over seeds of our runs, the
number of runs, the paper's figure where it reports one, and the command that reproduces the row.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

from benchmark import config
from benchmark.errors import ConfigError
from benchmark.results import RUNS_FILE, read_rows, write_rows_atomic

LEADERBOARD_FILE = "leaderboard.csv"


def build(results_dir: Path) -> Path:
    runs = read_rows(Path(results_dir) / RUNS_FILE)
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in runs:
        groups[(row["task"], row["preset"], row["dropout"])].append(row)
    out = []
    for (task, preset, dropout), rows in sorted(groups.items()):
        try:
            p = config.load_preset(task, preset)
            paper = p.paper if dropout == p.default_dropout else {}  # the paper ran one setting per preset
        except ConfigError:
            paper = {}
        metrics = sorted({k for r in rows for k, v in r.items() if v and k.endswith(("_ppl", "_acc", "bleu"))}
                         | {k for r in rows for k, v in r.items() if v and "_ppl_b" in k})
        for metric in metrics:
            values = [float(r[metric]) for r in rows if r.get(metric)]
            ours = mean(values)
            ref = paper.get(metric)
            out.append({
                "task": task, "preset": preset, "dropout": dropout, "metric": metric,
                "ours": f"{ours:.2f}", "runs": len(values), "seeds": " ".join(sorted({r['seed'] for r in rows})),
                "paper": "" if ref is None else ref,
                "vs_paper_pct": "" if ref is None else f"{100 * (ours - ref) / ref:+.1f}",
                "epochs": rows[-1].get("epochs", ""), "device": rows[-1].get("device", ""),
                "command": rows[-1].get("command", ""),
            })
    path = Path(results_dir) / LEADERBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows_atomic(path, out, ["task", "preset", "dropout", "metric", "ours", "runs", "seeds", "paper",
                                  "vs_paper_pct", "epochs", "device", "command"])
    return path
