"""The leaderboard as one self-contained web page: `bench leaderboard` writes <results>/dashboard.html.

Per task, for each current setting: the learning curves (train dashed, valid solid; dropout on blue,
off red, each other regularizer in its own colour, hidden until its legend entry is clicked; the mean
over seeds with a min-to-max band), interactive (Plotly, its JavaScript inlined:
the page opens with no network); the leaderboard rows beside the paper's number; each
regularizer's effect with its interval; a few test outputs of the runs (translations, captions, phone strings). Built
from the same rows, effects and curves as LEADERBOARD.md, so the two never disagree.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import re
import zlib
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path

from benchmark import leaderboard
from tasks import registry

log = logging.getLogger(__name__)

PAGE_FILE = "dashboard.html"
COLORS = {"off": ("#d62728", "rgba(214,39,40,0.15)"), "on": ("#1f77b4", "rgba(31,119,180,0.15)")}
OTHER_COLORS = [("#2ca02c", "rgba(44,160,44,0.12)"), ("#9467bd", "rgba(148,103,189,0.12)"),  # the other
                ("#8c564b", "rgba(140,86,75,0.12)"), ("#e377c2", "rgba(227,119,194,0.12)"),  # regularizers
                ("#ff7f0e", "rgba(255,127,14,0.12)"), ("#17becf", "rgba(23,190,207,0.12)"),
                ("#bcbd22", "rgba(188,189,34,0.12)"), ("#7f7f7f", "rgba(127,127,127,0.12)")]
KNOWN = ("variational", "locked", "weight_drop", "embedding", "zoneout", "recurrent", "zaremba", "awd")
SAMPLES = 3  # test outputs shown per run
BOARD_COLUMNS = [("dropout", "dropout"), ("regularizer", "regularizer"), ("rates", "rates"), ("ensemble", "ensemble of"), ("seeds", "seeds"), ("nonfinite", "diverged (left out)"), ("mean", "headline (last epoch)"), ("std", "± std"),
                 ("best_mean", "best-valid checkpoint"), ("paper", "paper"), ("diff", "Δ paper"),
                 ("train", "train"), ("valid", "valid"), ("test", "test"), ("epochs", "epochs"),
                 ("wall_s", "wall s"), ("device", "device"), ("commit", "commit")]


def curve_figure(task: str, preset: str, chash: str, grouped: dict, results_dir: Path,
                 tm: leaderboard.TaskMetrics, on: str | None):
    """Plotly figure of one setting's learning curves, or None when neither `off` nor `on` (the arm
    `--dropout on` trains, leaderboard.on_arm) left curves. Every other regularizer run for the setting
    is drawn too but hidden until its legend entry is clicked, so the paper's comparison stays readable."""
    import plotly.graph_objects as go

    lines = [("off", "dropout off", COLORS["off"], True),
             (on, "dropout on" if tm.default_regularizer == leaderboard.ZAREMBA else f"{tm.default_regularizer} on",
              COLORS["on"], True)]
    lines += [(a, arm_label(a), other_color(a), False) for a in leaderboard.arms(grouped, task, preset, chash) if a != on]
    fig, shown_lines, hidden_lines = go.Figure(), 0, 0
    for arm, label, (line, band), shown in lines:
        curves = leaderboard.seed_curves(grouped.get((task, preset, chash, arm, ""), []), tm.curve, results_dir)
        visible = True if shown else "legendonly"  # a legend click toggles an arm's lines and bands together
        for split, dash in (("train", "dash"), ("valid", "solid")):
            epochs = sorted(set.intersection(*(set(c[split]) for c in curves))) if curves else []
            if not epochs:
                continue
            values = [[c[split][e] for c in curves] for e in epochs]
            name = f"{label}, {split} ({len(curves)} seed{'s' * (len(curves) > 1)})"
            if len(curves) > 1:
                fig.add_scatter(x=epochs, y=[max(v) for v in values], mode="lines", line={"width": 0},
                                showlegend=False, hoverinfo="skip", legendgroup=label, visible=visible)
                fig.add_scatter(x=epochs, y=[min(v) for v in values], mode="lines", line={"width": 0},
                                fill="tonexty", fillcolor=band, showlegend=False, hoverinfo="skip",
                                legendgroup=label, visible=visible)
            fig.add_scatter(x=epochs, y=[sum(v) / len(v) for v in values], mode="lines+markers", name=name,
                            line={"color": line, "dash": dash}, legendgroup=label, visible=visible)
            shown_lines, hidden_lines = shown_lines + shown, hidden_lines + (not shown)
    if not shown_lines:
        return None
    label = {"ppl": "perplexity per word", "frame_acc": "frame accuracy"}.get(tm.curve, tm.curve)
    more = "; other regularizers: click their legend entries" if hidden_lines else ""
    # The key under the name, on its own line: on one line it ran under Plotly's mode bar (top right).
    fig.update_layout(title=f"{task}/{preset} ({chash})<br><sup>train (dashed) vs valid (solid), band: min to max "
                            f"over seeds{more}</sup>",
                      xaxis_title="epoch", yaxis_title=label, yaxis_type="log" if tm.curve == "ppl" else "linear",
                      height=440, margin={"l": 60, "r": 20, "t": 80, "b": 50}, template="plotly_white")
    return fig


def arm_label(arm: str) -> str:
    """`locked dropout=0.0;locked=0.3` -> `locked (locked=0.3)`; `on` (shown this way where a preset
    trains another regularizer by default) -> `dropout (zaremba)`."""
    name, rates = leaderboard.arm_parts(arm)
    return f"{name} ({', '.join(rates)})" if rates else name


def other_color(arm: str) -> tuple[str, str]:
    """One colour per regularizer name on every task's figure (a preset's own combinations by hash)."""
    name = "zaremba" if arm == "on" else arm.partition(" ")[0]
    i = KNOWN.index(name) if name in KNOWN else len(KNOWN) + zlib.crc32(name.encode())
    return OTHER_COLORS[i % len(OTHER_COLORS)]


def samples(rows: list[dict[str, str]], results_dir: Path) -> list[tuple[str, str, str]]:
    """(run, output, reference) of the first test outputs of each run that kept its outputs."""
    out = []
    for row in rows:
        path = Path(results_dir) / row["outputs"] if row.get("outputs") else None
        if path is None or not path.is_file():
            continue
        reg = row.get("regularizer", "")
        what = f" ({reg})" if reg not in ("", "none", leaderboard.ZAREMBA) else ""
        shown = []
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for item in map(json.loads, f):
                    if len(shown) == SAMPLES:
                        break
                    if item.get("stream") != "test":
                        continue
                    if "hyp" in item:
                        hyp, ref = item["hyp"], " | ".join(item["refs"][:2])
                    else:  # speech: every scored frame -> the phone sequence the frames spell
                        hyp, ref = (" ".join(k for k, _ in groupby(item[key].split()))
                                    for key in ("hyp_frames", "ref_frames"))
                    shown.append((f"dropout {row['dropout']}{what} seed {row['seed']}", hyp, ref))
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("%s: unreadable test outputs (%s), no samples from it; copy it again from its run folder's "
                        "outputs/", path, err)
            continue
        out += shown
    return out


def _inline(markdown: str) -> str:
    """The leaderboard's effect lines use **bold** and `code` only."""
    text = html.escape(markdown)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text))


def effect_html(e: dict) -> str:
    """An effect as LEADERBOARD.md words it (Holm's correction, mixed environments, the bootstrap), in HTML."""
    head, *more = leaderboard.effect_lines([e])
    sub = "".join(f"<li>{_inline(m.strip().removeprefix('- '))}</li>" for m in more)
    return f'<p class="effect">{_inline(head.removeprefix("- "))}</p>' + (f"<ul>{sub}</ul>" if sub else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_page(results_dir: Path, computed: leaderboard.Board | None = None) -> Path:
    """dashboard.html; `computed`: the board LEADERBOARD.md was just built from (else read again)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    results_dir = Path(results_dir)
    computed = computed or leaderboard.compute(results_dir)
    runs, board, effects = computed.runs, computed.rows, computed.effects
    grouped, parts = leaderboard.groups(runs), []
    for task in registry.names():
        current = sorted((p, h) for (t, p), h in leaderboard.current_hashes(runs).items() if t == task)
        if not current:
            continue
        parts.append(f'<section id="task-{task}" class="task"><h2>{html.escape(registry.get(task).title)}</h2>')
        for preset, chash in current:
            tm = leaderboard.TaskMetrics(task, preset)
            on = leaderboard.on_arm(grouped, task, preset, chash, tm.default_regularizer)
            by_arm = {"off": grouped.get((task, preset, chash, "off", ""), []),
                      "on": grouped.get((task, preset, chash, on, ""), []) if on else []}
            parts.append(f"<h3>{task}/{preset} <code>{chash}</code></h3>")
            fig = curve_figure(task, preset, chash, grouped, results_dir, tm, on)
            parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"curves-{task}-{preset}")
                         if fig else '<p class="none">No learning curves: these rows come from before runs kept '
                                     'theirs in results/curves/, and their run folders are not here.</p>')
            rows = sorted((r for r in board if (r["task"], r["preset"], r["config_hash"]) == (task, preset, chash)),
                          key=leaderboard.arm_order)
            if rows:
                parts.append(f"<p>Headline: <b>{html.escape(rows[0]['metric'])}</b>; paper figure compared on "
                             f"{html.escape(rows[0]['paper_metric'])}.</p>")
                parts.append(_table([label for _, label in BOARD_COLUMNS],
                                    [[r.get(k, "") for k, _ in BOARD_COLUMNS] for r in rows]))
            parts += [effect_html(e) for e in effects if (e["task"], e["preset"]) == (task, preset)]
            # The first seed's outputs each way: the same test items, on against off.
            first = [min(rows, key=lambda r: int(r["seed"])) for rows in (by_arm["on"], by_arm["off"]) if rows]
            shown = samples(first, results_dir)
            if shown:
                parts.append("<h4>Test outputs</h4>" + _table(["run", "output", "reference(s)"], [list(s) for s in shown]))
        parts.append("</section>")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rnnreg-bench dashboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} .none {{ color: #777; }} section.task {{ margin-bottom: 2.5em; }}
</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>rnnreg-bench: dropout on the non-recurrent connections, on against off</h1>
<p>Built by <code>bench leaderboard</code> from {html.escape(str(results_dir / 'runs.csv'))} ({len(runs)} rows),
{when}. Headline: the last epoch's test metric; mean over seeds. The same numbers as LEADERBOARD.md.</p>
{''.join(parts)}
</body></html>
"""
    path = results_dir / PAGE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
