"""The README's per-regularizer table of one task and preset, from the committed leaderboard.

    python scripts/regularizer_table.py translation quick test_bleu [--results-dir results]
    python scripts/regularizer_table.py speech quick test_frame_acc --extra train_eval_frame_acc

One row per regularizer arm of the current settings (best mean first): seeds, mean ± std of the
headline metric at the last epoch, on − off over paired seeds with its 95% t-interval (from
effects.csv), the best-validation checkpoint's mean and the training split's metric (perplexity or
frame accuracy, measured with the arm's own noise on); then the mean of each `--extra` column of the
arm's rows in runs.csv. tests/test_claims.py checks that the README's tables are this script's output.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean

from benchmark.leaderboard import EFFECTS_FILE, LEADERBOARD_FILE, groups, regularizer
from benchmark.results import RUNS_FILE, read_rows


def _signed(number: str) -> str:
    """effects.csv's figure as written (its precision fits the metric), with its sign."""
    return number if number.startswith("-") else f"+{number}"


def _extra_means(results_dir: Path, task: str, preset: str, chash: str, columns: list[str]) -> dict:
    """(dropout, regularizer, rates) of each arm -> the mean of each column over the rows it pools."""
    out = {}
    for (t, p, h, _, ensemble), rows in groups(read_rows(results_dir / RUNS_FILE)).items():
        if (t, p, h, ensemble) == (task, preset, chash, ""):
            key = (rows[0]["dropout"], regularizer(rows[0]), rows[0].get("dropout_rate", ""))
            out[key] = [f"{mean(v):.3f}" if (v := [float(r[c]) for r in rows if r.get(c)]) else "" for c in columns]
    return out


def table(results_dir: Path, task: str, preset: str, metric: str, extra: list[str] = ()) -> str:
    """The Markdown table, header included, one line a row."""
    board = [r for r in read_rows(results_dir / LEADERBOARD_FILE)
             if (r["task"], r["preset"], r["status"], r["ensemble"], r["metric"]) == (task, preset, "current", "", metric)]
    effects = {r["regularizer"]: r for r in read_rows(results_dir / EFFECTS_FILE)
               if (r["task"], r["preset"], r["metric"]) == (task, preset, metric)}
    if not board:
        raise SystemExit(f"{results_dir / LEADERBOARD_FILE}: no current {task}/{preset} rows with metric "
                         f"{metric}; run `bench leaderboard --results-dir {results_dir}` first")
    extra = list(extra)
    means = _extra_means(results_dir, task, preset, board[0]["config_hash"], extra) if extra else {}
    lines = [f"| regularizer | seeds | {metric} | on − off, 95% CI | best-valid {metric} | "
             f"train {board[0]['split_metric']} |{''.join(f' {c} |' for c in extra)}",
             "|---|---|---|---|---|---|" + "---|" * len(extra)]
    for r in sorted(board, key=lambda r: -float(r["mean"]) if r["mean"] else float("inf")):  # "": every seed diverged
        e = effects.get(r["regularizer"]) if r["dropout"] == "on" else None
        ci = (f"{_signed(e['diff'])} [{_signed(e['ci_low'])}, {_signed(e['ci_high'])}] ({e['pairs']} pairs)"
              if e and e["pairs"] != "0" else e["verdict"] if e else "")
        name = r["regularizer"] + (f" ({r['rates']})" if r["rates"] else "")
        cells = means.get((r["dropout"], r["regularizer"], r["rates"]), [""] * len(extra))
        lines.append(f"| {name} | {r['seeds']} | {r['mean']} ± {r['std']} | {ci} | {r['best_mean']} | {r['train']} |"
                     + "".join(f" {c} |" for c in cells))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task")
    p.add_argument("preset")
    p.add_argument("metric", help="the headline column, e.g. test_bleu, test_bleu4, test_ppl")
    p.add_argument("--extra", action="append", default=[], metavar="COLUMN",
                   help="also the mean of this runs.csv column per arm, e.g. train_eval_frame_acc")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    args = p.parse_args()
    print(table(args.results_dir, args.task, args.preset, args.metric, args.extra))


if __name__ == "__main__":
    main()
