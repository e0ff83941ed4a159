"""The README's per-regularizer table of one task and preset, from the committed leaderboard.

    python scripts/regularizer_table.py translation quick test_bleu [--results-dir results]

One row per regularizer arm of the current settings (best mean first): seeds, mean ± std of the
headline metric at the last epoch, on − off over paired seeds with its 95% t-interval (from
effects.csv), the best-validation checkpoint's mean and the training perplexity (measured with the
arm's own noise on). tests/test_claims.py checks that the README's tables are this script's output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.leaderboard import EFFECTS_FILE, LEADERBOARD_FILE
from benchmark.results import read_rows


def table(results_dir: Path, task: str, preset: str, metric: str) -> str:
    """The Markdown table, header included, one line a row."""
    board = [r for r in read_rows(results_dir / LEADERBOARD_FILE)
             if (r["task"], r["preset"], r["status"], r["ensemble"], r["metric"]) == (task, preset, "current", "", metric)]
    effects = {r["regularizer"]: r for r in read_rows(results_dir / EFFECTS_FILE)
               if (r["task"], r["preset"], r["metric"]) == (task, preset, metric)}
    if not board:
        raise SystemExit(f"{results_dir / LEADERBOARD_FILE}: no current {task}/{preset} rows with metric "
                         f"{metric}; run `bench leaderboard --results-dir {results_dir}` first")
    lines = [f"| regularizer | seeds | {metric} | on − off, 95% CI | best-valid {metric} | train ppl |",
             "|---|---|---|---|---|---|"]
    for r in sorted(board, key=lambda r: -float(r["mean"])):
        e = effects.get(r["regularizer"]) if r["dropout"] == "on" else None
        ci = (f"{float(e['diff']):+.2f} [{float(e['ci_low']):+.2f}, {float(e['ci_high']):+.2f}] ({e['pairs']} pairs)"
              if e else "")
        name = r["regularizer"] + (f" ({r['rates']})" if r["rates"] else "")
        lines.append(f"| {name} | {r['seeds']} | {r['mean']} ± {r['std']} | {ci} | {r['best_mean']} | {r['train']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task")
    p.add_argument("preset")
    p.add_argument("metric", help="the headline column, e.g. test_bleu, test_bleu4, test_ppl")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    args = p.parse_args()
    print(table(args.results_dir, args.task, args.preset, args.metric))


if __name__ == "__main__":
    main()
