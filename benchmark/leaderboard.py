"""results/runs.csv + each preset's `paper:` numbers -> leaderboard.csv, effects.csv, LEADERBOARD.md
and one learning-curve plot per task and preset, all in the same results folder.

Rows pool only when they share a `config_hash` (benchmark/identity.py): the same model, data,
trainer settings, precision and data files. Per task and preset the newest hash is the current
setting; rows of older hashes (or from before hashes existed) are listed as superseded and never
pooled, except where a preset's newest row has no hash (a preset run only before hashes existed):
then its hashless rows are the current ones, and no effect is claimed from several of their seeds
(they may mix versions of the preset). Only runs of
a preset as named count (rows with `overrides` stay in runs.csv, off the board); a seed run twice
counts by its latest row. A metric that is not finite (a diverged run's perplexity) is left out of
means, spreads and pairs, and counted where it was left out.

Regularizers (`bench run --regularizer`): the `dropout` axis is an arm: `off`, `on` (the paper's
dropout, `zaremba`), or another regularizer at its rates; every arm pairs with the same `off` runs.

leaderboard.csv: one row per task x preset x hash x arm (x ensemble size): the task's headline
metric (`headline` on its LightningModule) as mean and std over seeds, the same for the
best-by-validation checkpoint, the paper's figure for that setting and our difference from it (on
`paper_metric`, our number computed as the paper computed its own: translation's tokenized BLEU), the
train/valid/test values of the learning-curve metric, and where, how long and from which commit.

effects.csv: each regularizer on minus off per task x preset x hash, paired by seed, with a 95%
t-interval (benchmark/stats.py), and for BLEU tasks sacrebleu's paired bootstrap per seed.
"""

from __future__ import annotations

import csv
import logging
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from benchmark import config, stats
from benchmark.results import RUNS_FILE, checkpoint_kind, metric_logs, read_rows, write_rows_atomic
from benchmark.results import row_regularizer as regularizer
from tasks import registry
from tasks.nn.errors import ConfigError, DataError
from tasks.nn.mechanisms import ZAREMBA

log = logging.getLogger(__name__)
LEADERBOARD_FILE = "leaderboard.csv"
EFFECTS_FILE = "effects.csv"
MARKDOWN_FILE = "LEADERBOARD.md"
LEGACY = "legacy"  # the hash shown for rows written before runs had one
COLUMNS = ["task", "preset", "config_hash", "status", "dropout", "regularizer", "rates", "ensemble", "metric", "mean", "std", "seeds",
           "best_mean", "best_std", "paper_metric", "paper", "diff", "diff_pct", "split_metric", "train", "valid", "test", "epochs",
           "best_epoch", "nonfinite", "wall_s", "tokens_per_s", "device", "host", "precision", "devices", "env", "commit",
           "date", "command"]
EFFECT_COLUMNS = ["task", "preset", "config_hash", "regularizer", "rates", "metric", "better", "pairs", "off_mean", "on_mean", "diff",
                  "ci_low", "ci_high", "verdict", "nonfinite_pairs", "bootstrap", "env", "pairs_across_envs", "p_value",
                  "arms", "holm", "commits"]
class TaskMetrics:
    """A task's headline and learning-curve metrics (its registry entry) and a preset's paper numbers."""

    def __init__(self, task: str, preset: str) -> None:
        spec = registry.get(task)
        self.title, self.headline, self.curve = spec.title, spec.headline, spec.curve
        self.paper_metric = spec.paper_metric or spec.headline  # what the paper's figure is compared with
        self._preset, self.default_regularizer = None, ZAREMBA
        try:
            self._preset = config.load_preset(task, preset)
        except ConfigError:  # a preset since deleted: its rows still show, without the paper's numbers
            return
        self.default_regularizer = self._preset.default_regularizer  # what `--dropout on` trains with

    def paper(self, dropout: str, regularizer: str) -> dict[str, float]:
        """The paper's figures for an arm: `on` ones only for the preset's default regularizer."""
        return {} if self._preset is None else config.paper_numbers(self._preset, dropout, regularizer)


def _fmt(x: float | None, like: float | None = None) -> str:
    """4 decimals for accuracies (<= 1), 2 for perplexities and BLEU; `like` picks by another value
    (a difference is written as precisely as the number it is the difference of)."""
    if x is None or math.isnan(x):  # nan: no finite pair to average
        return ""
    return f"{x:.4f}" if abs(x if like is None else like) <= 1 else f"{x:.2f}"


def _values(rows: list[dict], key: str) -> tuple[list[float], int]:
    """The finite values of `key` over the rows that have it, and how many were not finite (inf or
    nan: a run that diverged), which no mean or interval can take in."""
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    finite = [v for v in values if math.isfinite(v)]
    return finite, len(values) - len(finite)


def _mean(rows: list[dict], key: str) -> float | None:
    values, _ = _values(rows, key)
    return mean(values) if values else None


def pool_hash(row: dict[str, str]) -> str:
    """What a row pools by: its settings hash, and the world size it ran with when that is not 1
    (a preset that leaves `devices` to Lightning's "auto" runs DDP on a machine with several GPUs)."""
    devices = row.get("devices") or "1"
    return (row.get("config_hash") or LEGACY) + ("" if devices == "1" else f"@{devices}")


def current_hashes(runs: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    """(task, preset) -> the hash of its newest run of the preset as named: the current setting."""
    newest: dict[tuple[str, str], dict[str, str]] = {}
    for row in runs:
        if row.get("overrides") or row.get("ensemble") or row.get("evaluation"):
            continue
        key = (row["task"], row["preset"])
        if key not in newest or row.get("finished_utc", "") >= newest[key].get("finished_utc", ""):
            newest[key] = row
    return {key: pool_hash(row) for key, row in newest.items()}


def arm(row: dict[str, str]) -> str:
    """`off`, `on` (the paper's dropout) or `NAME dropout=0.0;locked=0.5`: a regularizer other than
    the paper's with its rates (they are not in the settings hash, so they keep pools apart here)."""
    name = regularizer(row)
    if name in ("none", ZAREMBA):
        return row["dropout"]
    return f"{name} {';'.join(sorted(row.get('dropout_rate', '').split(';')))}"  # the same rates in any order


def groups(runs: list[dict[str, str]]) -> dict[tuple[str, str, str, str, str], list[dict[str, str]]]:
    """(task, preset, hash, arm, ensemble) -> its rows, one per seed (the latest)."""
    out: dict[tuple[str, str, str, str, str], dict[str, dict[str, str]]] = defaultdict(dict)
    for row in sorted(runs, key=lambda r: r.get("finished_utc", "")):
        if not row.get("overrides") and not row.get("evaluation"):  # `bench eval` rows are not training runs
            key = (row["task"], row["preset"], pool_hash(row), arm(row), ensemble_label(row))
            out[key]["+".join(sorted(str(row["seed"]).split("+"), key=int))] = row  # an ensemble's 1+0 is its 0+1
    return {k: list(v.values()) for k, v in sorted(out.items())}


def ensemble_label(row: dict[str, str]) -> str:
    """'' for a training run; else the member count, and which checkpoints when not the last ones
    (rows from before the `checkpoint` column: read off their files)."""
    size = row.get("ensemble") or ""
    if not size:
        return ""
    kind = row.get("checkpoint") or (checkpoint_kind(row["run_dir"].split()) if row.get("run_dir") else "last")
    return size if kind == "last" else f"{size}, {kind} checkpoints"


def _envs(rows: list[dict[str, str]]) -> str:
    """The environment fingerprint the rows share (benchmark/environment.py), or how many they mix:
    rows from before fingerprints count as one "unrecorded" environment."""
    envs = sorted({r.get("env") or "unrecorded" for r in rows})
    if not envs:  # an effect with no finite pair
        return ""
    return envs[0] if len(envs) == 1 else f"{len(envs)} environments: {', '.join(envs)}"


def _stat(rows: list[dict], key: str) -> tuple[str, str, list[float]]:
    values, _ = _values(rows, key)
    if not values:
        return "", "", values
    return _fmt(mean(values)), _fmt(stdev(values), like=mean(values)) if len(values) > 1 else "", values


def board_rows(runs: list[dict[str, str]]) -> list[dict]:
    current = current_hashes(runs)
    out = []
    for (task, preset, chash, arm_name, ensemble), rows in groups(runs).items():
        tm = TaskMetrics(task, preset)
        dropout, reg = rows[0]["dropout"], regularizer(rows[0])
        ours, std, values = _stat(rows, tm.headline)
        nonfinite = _values(rows, tm.headline)[1]
        if not values and not nonfinite:
            continue
        best, best_std, _ = _stat(rows, f"best_{tm.headline}")
        # The paper's figure is one model's: an ensemble is not compared with it.
        ref = None if ensemble else tm.paper(dropout, reg).get(tm.paper_metric)
        like = values if tm.paper_metric == tm.headline else _stat(rows, tm.paper_metric)[2]
        diff = mean(like) - ref if ref is not None and like else None
        last = max(rows, key=lambda r: r.get("finished_utc", ""))
        wall, rate = _mean(rows, "wall_s"), _mean(rows, "tokens_per_s")
        out.append({
            "task": task, "preset": preset, "config_hash": chash,
            "status": "current" if current.get((task, preset)) == chash else "superseded",
            "dropout": dropout, "regularizer": reg, "rates": rows[0].get("dropout_rate", ""),
            "ensemble": ensemble, "metric": tm.headline, "mean": ours, "std": std,
            "seeds": len(values), "best_mean": best, "best_std": best_std, "paper_metric": tm.paper_metric,
            "paper": "" if ref is None else ref,
            "diff": "" if diff is None else _fmt(diff, like=ref),
            "diff_pct": "" if diff is None else f"{100 * diff / ref:+.1f}",
            "split_metric": tm.curve,
            **{s: _fmt(_mean(rows, f"{s}_{tm.curve}")) for s in ("train", "valid", "test")},
            "epochs": last.get("epochs", ""), "best_epoch": last.get("best_epoch", ""), "nonfinite": nonfinite or "",
            "wall_s": f"{wall:.0f}" if wall else "", "tokens_per_s": f"{rate:.0f}" if rate else "",
            "device": last.get("device", ""), "host": last.get("host", ""), "precision": last.get("precision", ""),
            "devices": last.get("devices", ""), "env": _envs(rows), "commit": last.get("git_commit", ""),
            "date": last.get("finished_utc", "")[:10], "command": last.get("command", ""),
        })
    return out


def _bootstraps(on: list[dict], off: list[dict], results_dir: Path) -> str:
    """Per seed with both outputs files: `seed 0: 21.3 -> 23.0 (p=0.001)`, sacrebleu's paired bootstrap."""
    parts = []
    off_by_seed = {r["seed"]: r for r in off}
    for row in sorted(on, key=lambda r: int(r["seed"])):
        other = off_by_seed.get(row["seed"])
        files = [results_dir / r["outputs"] for r in (other, row) if r is not None and r.get("outputs")]
        if len(files) < 2:  # rows from before runs kept their outputs
            continue
        missing = [f for f in files if not f.is_file()]
        if missing:
            log.warning("%s: not found; seed %s is left out of the paired bootstrap, copy it again from its run "
                        "folder's outputs/", missing[0], row["seed"])
            continue
        try:
            result = stats.bleu_bootstrap(*files)
        except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as err:  # damaged or half-copied
            log.warning("%s or %s: unreadable test outputs (%s); seed %s is left out of the paired bootstrap, "
                        "copy the file again from its run folder's outputs/", *files, err, row["seed"])
            continue
        if result is None:
            log.warning("%s and %s do not hold the same test sentences; seed %s is left out of the paired bootstrap",
                        *files, row["seed"])
        else:
            parts.append(f"seed {row['seed']}: {result.off:.2f} -> {result.on:.2f} (p={result.p_value:.4f})")
    return "; ".join(parts)


def arms(grouped: dict, task: str, preset: str, chash: str) -> list[str]:
    """The arms run for one setting, the paper's first, then the other regularizers by name."""
    found = {a for (t, p, h, a, e) in grouped if (t, p, h, e) == (task, preset, chash, "")}
    return sorted(found - {"off"}, key=lambda a: (a != "on", a))


def arm_parts(arm: str) -> tuple[str, list[str]]:
    """`locked dropout=0.0;locked=0.3` -> ("locked", ["locked=0.3"]): the name and which of its rate
    sets; `on` (the paper's dropout) -> ("dropout (zaremba)", [])."""
    if arm == "on":
        return "dropout (zaremba)", []
    name, _, rates = arm.partition(" ")
    return name, [r for r in rates.split(";") if r and r != "dropout=0.0"]


def on_arm(grouped: dict, task: str, preset: str, chash: str, default_regularizer: str) -> str | None:
    """The arm `--dropout on` trains: the paper's dropout, or the preset's own regularizer (ptb/*-variational)
    with its newest rates (they are not in the hash); None where that regularizer has no runs."""
    if default_regularizer == ZAREMBA:
        return "on"
    named = [a for a in arms(grouped, task, preset, chash) if a.split(" ")[0] == default_regularizer]
    return max(named, default=None,
               key=lambda a: max(r.get("finished_utc", "") for r in grouped[(task, preset, chash, a, "")]))


def effect_rows(runs: list[dict[str, str]], results_dir: Path) -> list[dict]:
    """Each regularizer on minus off, paired by seed, for every current setting run both ways."""
    grouped, out = groups(runs), []
    for (task, preset), chash in sorted(current_hashes(runs).items()):
        off = grouped.get((task, preset, chash, "off", ""), [])
        setting = []
        for arm_name in arms(grouped, task, preset, chash) if off else []:
            setting += _effects(task, preset, chash, grouped[(task, preset, chash, arm_name, "")], off, results_dir)
        # The paper's dropout is the one comparison each preset is built for, tested alone at 95%. The
        # other regularizers, each against the same `off` runs, are one family per metric: Holm over them.
        own = on_arm(grouped, task, preset, chash, TaskMetrics(task, preset).default_regularizer)
        for e in setting:
            if e.pop("_arm") == own:  # what `--dropout on` trains (ptb/*-variational: its own regularizer)
                e.pop("_p")
                e["arms"], e["holm"] = 1, ""
        for metric in dict.fromkeys(e["metric"] for e in setting if "_p" in e):
            family = [e for e in setting if e["metric"] == metric and "_p" in e]
            p_values = [e.pop("_p") for e in family]
            tested = sum(p is not None for p in p_values)  # the arms Holm divides among
            for e, held in zip(family, stats.holm(p_values)):
                e["arms"] = tested
                e["holm"] = "" if tested < 2 or held is None else (
                    "beyond seed noise" if held else "not beyond seed noise")
        out += setting
    return out


def _effects(task: str, preset: str, chash: str, on: list[dict], off: list[dict], results_dir: Path) -> list[dict]:
    out, tm = [], TaskMetrics(task, preset)
    for metric in (tm.headline, f"best_{tm.headline}"):
        paired = [{int(r["seed"]): r for r in rows if r.get(metric)} for rows in (on, off)]
        # A pair with a diverged run (inf or nan) has no difference to average: left out, and counted.
        both = set(paired[0]) & set(paired[1])
        dropped = {s for s in both if not all(math.isfinite(float(arm[s][metric])) for arm in paired)}
        paired = [{s: r for s, r in arm.items() if s not in dropped} for arm in paired]
        effect = stats.paired_effect(*({s: float(r[metric]) for s, r in arm.items()} for arm in paired))
        if effect is None and dropped:  # every pair had a diverged run: say so rather than show nothing
            effect = stats.Effect(0, math.nan, math.nan, math.nan, None, None)
        if effect is None:
            continue
        lower = stats.lower_is_better(metric)
        # Only a verdict of the effect's own can carry a p-value (and so enter Holm's family): a pair
        # left out because a run diverged is not missing at random (a regularizer may be what keeps a
        # run from diverging), and legacy rows may mix versions of the preset.
        verdict = None
        if not effect.pairs:
            verdict = "no finite pair: every paired seed has a run that diverged"
        elif dropped:
            verdict = (f"no claim: {len(dropped)} paired seed(s) left out because a run diverged, and the pairs "
                       "that remain cannot speak for them")
        elif chash.startswith(LEGACY) and effect.pairs > 1:
            verdict = "no claim: rows from before settings hashes may mix versions of the preset"
        p_value = effect.p if verdict is None else None
        verdict = verdict or effect.verdict(lower, subject=_name(on[0]))
        # A pair run in two environments differs by more than the regularizer (a fixed seed does
        # not carry across CPUs): still a fair draw, but not like with like, so it is counted.
        seeds = sorted(set(paired[0]) & set(paired[1]))
        across = sum((paired[0][s].get("env") or "unrecorded") != (paired[1][s].get("env") or "unrecorded")
                     for s in seeds)
        out.append({
            "task": task, "preset": preset, "config_hash": chash, "regularizer": regularizer(on[0]),
            "rates": on[0].get("dropout_rate", ""), "metric": metric,
            "better": "lower" if lower else "higher", "pairs": effect.pairs,
            "off_mean": _fmt(effect.off), "on_mean": _fmt(effect.on),
            **{k: _fmt(v, like=effect.off) for k, v in (("diff", effect.diff), ("ci_low", effect.low),
                                                        ("ci_high", effect.high))},
            "verdict": verdict,
            "nonfinite_pairs": len(dropped) or "",
            "bootstrap": _bootstraps(on, off, results_dir) if "bleu" in metric and metric == tm.headline else "",
            "env": _envs([paired[i][s] for s in seeds for i in (0, 1)]),
            "pairs_across_envs": across,
            "p_value": "" if p_value is None else f"{p_value:.4g}", "_p": p_value, "_arm": arm(on[0]),
            # The settings hash leaves the code out (a later commit may change no number): how many made these pairs.
            "commits": len({paired[i][s].get("git_commit", "") for s in seeds for i in (0, 1)}),
        })
    return out


def _name(row: dict[str, str]) -> str:
    """How an effect line names what was switched on: the paper's `dropout`, or the regularizer."""
    name = regularizer(row)
    return "dropout" if name == ZAREMBA else name


def arm_order(r: dict) -> tuple:
    """A setting's rows: off, the paper's dropout, then the other regularizers; ensembles after."""
    return (r["preset"], r["config_hash"], r["ensemble"], {"none": 0, ZAREMBA: 1}.get(r["regularizer"], 2),
            r["regularizer"])


def _table(trs: list[dict]) -> list[str]:
    head, curve, like = trs[0]["metric"], trs[0]["split_metric"], trs[0]["paper_metric"]
    # Where the paper's figure is computed otherwise than the headline, Δ is taken on our number
    # computed its way (translation: tokenized BLEU), and the header says so.
    paper = "paper | Δ" if like == head else f"paper ({like}) | Δ (our {like} − paper)"
    lines = [f"| setting | dropout | regularizer | seeds | **{head}** (last epoch) | best-valid checkpoint | {paper} | "
             f"train {curve} | valid {curve} | test {curve} | epochs | wall s | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(trs, key=arm_order):
        reg = r["regularizer"] if r["regularizer"] in ("none", ZAREMBA) else f"{r['regularizer']} ({r['rates']})"
        setting = r["preset"] + (f" (ensemble of {r['ensemble']})" if r["ensemble"] else "")
        setting += " (legacy: before settings hashes)" if r["config_hash"] == LEGACY else f" `{r['config_hash']}`"
        ours = r["mean"] + (f" ± {r['std']}" if r["std"] else "")
        seeds = f"{r['seeds']}" + (f" (+{r['nonfinite']} diverged: not finite)" if r.get("nonfinite") else "")
        best = r["best_mean"] + (f" ± {r['best_std']}" if r["best_std"] else "")
        best += f" (epoch {r['best_epoch']})" if r["best_mean"] and r["best_epoch"] and not r["std"] else ""
        lines.append(f"| {setting} | {r['dropout']} | {reg} | {seeds} | **{ours}** | {best} | {r['paper']} | "
                     f"{r['diff']} | {r['train']} | {r['valid']} | {r['test']} | {r['epochs']} | {r['wall_s']} | "
                     f"{r['device']} |")
    return lines


def holds_after_holm(e: dict) -> bool | None:
    """Whether an effect row's claim survives Holm's correction over its family of arms; None where
    there is no claim to test (only a claim can fall: with its interval holding 0 a test stays short
    of any corrected level) or no family (the paper's dropout alone)."""
    if not e.get("holm") or "beyond seed noise" not in e["verdict"] or e["verdict"].startswith("not"):
        return None
    return e["holm"] == "beyond seed noise"


def effect_lines(effects: list[dict]) -> list[str]:
    lines = []
    for e in effects:
        # A zero-width interval (every pair differs alike) sizes nothing: the verdict says so instead.
        ci = f", 95% CI [{e['ci_low']}, {e['ci_high']}]" if e["ci_low"] and not e["verdict"].startswith("no spread") else ""
        what = "dropout" if e["regularizer"] == ZAREMBA else f"{e['regularizer']} ({e['rates']})"
        lines.append(f"- {e['preset']} {what} `{e['metric']}` ({e['better']} is better): on − off = **{e['diff']}**{ci} "
                     f"over {e['pairs']} paired seed(s): {e['verdict']}.")
        if e.get("nonfinite_pairs"):
            lines.append(f"  - {e['nonfinite_pairs']} more pair(s) left out: a run's {e['metric']} is not finite "
                         "(it diverged)")
        if " environments" in e["env"]:
            across = int(e.get("pairs_across_envs") or 0)
            split = (f"; {across} of {e['pairs']} pairs ran on and off in different environments" if across
                     else "; each pair ran in one")
            lines.append(f"  - the pairs mix {e['env']}{split} (runs.csv's env columns say what differs)")
        held = holds_after_holm(e)
        if held is not None:
            lines.append(f"  - {'holds' if held else '**does not hold**'} after Holm's correction over the "
                         f"{e['arms']} regularizers beside the paper's dropout tested against these `off` runs "
                         f"(p = {e['p_value']})")
        if int(e.get("commits") or 0) > 1:
            lines.append(f"  - the paired runs come from {e['commits']} commits (runs.csv's git_commit): the settings "
                         "hash does not cover the code")
        if e["bootstrap"]:
            lines.append(f"  - paired bootstrap per seed (sacrebleu, off -> on): {e['bootstrap']}")
    return lines


def hidden_effect_notes(trs: list[dict]) -> list[str]:
    """A preset's newest run sets its current hash: a newer run of one arm only (`--dropout on` after a
    preset edit) leaves its setting with no effect to show, while an older hash run both ways had one.
    Say where that one went rather than let it vanish from the board."""
    def both(preset: str, chash: str) -> bool:
        done = {r["dropout"] for r in trs if (r["preset"], r["config_hash"], r["ensemble"]) == (preset, chash, "")}
        return {"on", "off"} <= done

    notes = []
    for preset, chash in sorted({(r["preset"], r["config_hash"]) for r in trs if r["status"] == "current"}):
        older = sorted({r["config_hash"] for r in trs if r["preset"] == preset and r["status"] == "superseded"
                        and both(preset, r["config_hash"])})
        if older and not both(preset, chash):
            notes.append(f"\n{preset}: its newest setting `{chash}` has runs of one arm only, so no effect is shown for "
                         f"it; the superseded {', '.join(f'`{h}`' for h in older)} ran on and off (their rows stay in "
                         "runs.csv): run the other arm to compare again")
    return notes


def markdown(rows: list[dict], effects: list[dict] = ()) -> str:
    """One table per task, laid out like the paper's, then dropout's effect beyond seed noise."""
    lines = ["# Leaderboard", "",
             "<!-- generated by `bench leaderboard` from runs.csv; do not edit -->",
             "Mean over seeds (± sample std when there are several). The headline scores the model as training "
             "left it (last epoch); *best-valid checkpoint* scores the epoch with the best validation metric. "
             "*paper*: the paper's number for the same setting, where it reports one. Rows pool only within one "
             "`config_hash` (settings and data files); a pool whose rows come from different environments (installed "
             "packages, CPU vector path or GPU driver: the `env` columns) says so under its table. "
             "Learning curves: `curves-<task>-<preset>.png`."]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, trs in by_task.items():
        current = [r for r in trs if r["status"] == "current"]
        lines += ["", f"## {task}: {registry.get(task).title}", ""]
        if current:
            lines += _table(current)
            lines += [f"\n{r['preset']} `{r['config_hash']}` dropout {r['dropout']} pools rows from {r['env']} "
                      f"(runs.csv's env columns say what differs)" for r in current if " environments" in r["env"]]
        task_effects = [e for e in effects if e["task"] == task]
        if task_effects:
            lines += ["", "Effect of dropout (and of each other regularizer run), against the same `off` runs:", ""]
            lines += effect_lines(task_effects)
        lines += hidden_effect_notes(trs)
        old = sorted({(r["preset"], r["config_hash"]) for r in trs if r["status"] == "superseded"})
        if old:
            lines += ["", "Superseded (older settings, not pooled): " +
                      ", ".join(f"{p} `{h}`" for p, h in old) + "; their rows stay in runs.csv."]
        lines += ["", "Commands:", ""] + [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in current)]
    return "\n".join(lines) + "\n"


def _curve(logs: list[Path], metric: str) -> dict[str, dict[int, float]]:
    """{train: {epoch: value}, valid: {...}} from a run's Lightning CSV logs, oldest first (a resumed
    run's later value for an epoch wins)."""
    out: dict[str, dict[int, float]] = {"train": {}, "valid": {}}
    for path in logs:
        read: dict[str, dict[int, float]] = {"train": {}, "valid": {}}
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                for row in csv.DictReader(f):
                    for split in read:
                        value = row.get(f"{split}_{metric}")
                        if value:
                            read[split][int(row["epoch"]) + 1] = float(value)
        except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as err:
            log.warning("%s: unreadable learning curve (%s), left out of the plots; copy it again from its run "
                        "folder's csv/metrics.csv", path, err)
            continue
        for split in out:
            out[split].update(read[split])
    return out


def seed_curves(rows: list[dict[str, str]], metric: str, results_dir: Path) -> list[dict[str, dict[int, float]]]:
    """Each row's curve: the per-epoch copy its run left in <results>/curves/, else (rows from before
    runs kept one) its run folder's CSV logs where that folder is here. The copy wins: a run folder
    found by a relative path belongs to whoever works in this directory, not to the row."""
    logs = []
    for r in rows:
        kept = Path(results_dir) / r["curves"] if r.get("curves") else None
        if kept is not None and kept.is_file():
            paths = [kept]
        else:
            paths = metric_logs(Path(r["run_dir"])) if r.get("run_dir") else []
        logs.append(paths)
    return [_curve(paths, metric) for paths in logs if paths]


def _draw(ax, curves: list[dict[str, dict[int, float]]], color: str, arm_label: str) -> int:
    """Mean over seeds as a line, min to max over seeds as a band; train dashed, valid solid."""
    drawn = 0
    for split, style in (("train", "--"), ("valid", "-")):
        epochs = sorted(set.intersection(*(set(c[split]) for c in curves))) if curves else []
        if not epochs:
            continue
        values = [[c[split][e] for c in curves] for e in epochs]
        ax.plot(epochs, [mean(v) for v in values], style, color=color, marker=".",
                label=f"{arm_label}, {split} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if len(curves) > 1:
            ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.15,
                            linewidth=0)
        drawn += 1
    return drawn


def plot_curves(runs: list[dict[str, str]], results_dir: Path) -> list[Path]:
    """curves-<task>-<preset>.png for each current setting: train (dashed) and valid (solid) curve
    metric per epoch, dropout on vs off, the mean over seeds with a min-max band; the gap between
    the dashed and solid line of one colour is the overfitting the paper's dropout closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    grouped, written = groups(runs), []
    for (task, preset), chash in sorted(current_hashes(runs).items()):
        tm = TaskMetrics(task, preset)
        # The other regularizers are compared in regularizers-<task>-<preset>.png.
        reg, on = tm.default_regularizer, on_arm(grouped, task, preset, chash, tm.default_regularizer)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = sum(_draw(ax, seed_curves(grouped.get((task, preset, chash, a, ""), []), tm.curve, results_dir),
                          color, label) if a else 0
                    for a, color, label in (("off", "tab:red", "dropout off"),
                                            (on, "tab:blue", "dropout on" if reg == ZAREMBA else f"{reg} on")))
        if not drawn:
            plt.close(fig)
            log.info("%s/%s: no run folder with a CSV log here and no curves/ copy; its plot is left as it was",
                     task, preset)
            continue
        if tm.curve == "ppl":
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"ppl": "perplexity per word (log scale)", "frame_acc": "frame accuracy"}.get(tm.curve, tm.curve))
        ax.set_title(f"{task}/{preset} ({chash}): train (dashed) vs valid (solid)")
        fig.text(0.01, 0.01, "mean over seeds, band: min to max; train: mean over the epoch, dropout active; "
                 "valid: end of epoch, no dropout", fontsize=6.5, color="0.4")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, Path(results_dir) / f"curves-{task}-{preset}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip("."))
    plt.close(fig)
    tmp.replace(path)  # a plot is the old one or the new one, never half of one
    return path


def plot_regularizers(runs: list[dict[str, str]], results_dir: Path) -> list[Path]:
    """regularizers-<task>-<preset>.png for each current setting run with regularizers beyond the
    paper's: the headline test metric of every seed (dots) and their mean with a 95% t-interval
    (bar), per regularizer, `off` first; each column has the seeds run for it (its label counts them),
    and effects.csv pairs them by seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped, written = groups(runs), []
    for (task, preset), chash in sorted(current_hashes(runs).items()):
        names = arms(grouped, task, preset, chash)
        if not any(a != "on" for a in names):
            continue
        tm = TaskMetrics(task, preset)
        columns = [("off", grouped.get((task, preset, chash, "off", ""), []))] + [
            (a, grouped[(task, preset, chash, a, "")]) for a in names]
        fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 2, 4.2))
        labels = []
        for x, (name, rows) in enumerate(columns):
            values = _values(rows, tm.headline)[0]
            label, rates = arm_parts(name)
            labels.append("\n".join([label, *rates, f"{len(values)} seed(s)"]))
            if not values:
                continue
            ax.plot([x] * len(values), values, "o", color="0.55", markersize=4)
            half = stats.t_half_width(values)
            ax.errorbar([x], [mean(values)], yerr=[half] if half else None, fmt="_", color="tab:blue",
                        markersize=18, capsize=6, linewidth=1.5)
        ax.set_xticks(range(len(columns)), labels, fontsize=7)
        ax.set_ylabel(f"{tm.headline} ({'lower' if stats.lower_is_better(tm.headline) else 'higher'} is better)")
        ax.set_title(f"{task}/{preset} ({chash}): test metric by regularizer", fontsize=10)
        fig.text(0.01, 0.01, "dots: seeds; bar: mean with 95% t-interval over seeds; rates in LEADERBOARD.md",
                 fontsize=6.5, color="0.4")
        ax.grid(True, axis="y", alpha=0.3)
        written.append(_save(fig, Path(results_dir) / f"regularizers-{task}-{preset}.png"))
    return written


NUMERIC_PREFIXES = ("train_", "valid_", "test_", "best_")  # every such column is a number (or empty)


def check_values(path: Path, runs: list[dict[str, str]]) -> None:
    """What the board computes with must be numbers: a hand-edited `n/a` is a line to fix, not a traceback."""
    for i, row in enumerate(runs, start=1):
        seed = row.get("seed", "")
        # An ensemble's members: 0+1+2. A `bench eval` row (off the board) of a checkpoint trained
        # elsewhere has no seed.
        parts = seed.split("+") if row.get("ensemble") else [seed]
        if not row.get("evaluation") and not all(part.isdigit() for part in parts):
            raise DataError(f"{path}: data line {i} has seed {seed!r}, not a whole number; fix or delete that line")
        # A typo here would make an arm of its own and quietly take a seed out of its pair.
        if not row.get("evaluation") and row.get("dropout") not in ("on", "off"):
            raise DataError(f"{path}: data line {i} has dropout {row.get('dropout')!r}, not on or off; fix or delete "
                            f"that line")
        for key, value in row.items():
            if value and (key.startswith(NUMERIC_PREFIXES) or key in ("wall_s", "tokens_per_s")):
                try:
                    float(value)
                except ValueError:
                    raise DataError(f"{path}: data line {i} has {key} = {value!r}, not a number; fix or delete "
                                    f"that line") from None


def load_runs(results_dir: Path) -> list[dict[str, str]]:
    """runs.csv's rows of the tasks registered now."""
    runs = read_rows(Path(results_dir) / RUNS_FILE)
    lacking = sorted({"task", "preset", "dropout", "seed"} - set(runs[0])) if runs else []
    if lacking:
        raise DataError(f"{Path(results_dir) / RUNS_FILE}: no {', '.join(lacking)} column: not a results file "
                        f"`bench run` wrote; pass the folder it wrote to")
    check_values(Path(results_dir) / RUNS_FILE, runs)
    unknown = sorted({r["task"] for r in runs} - set(registry.names()))
    if unknown:  # a task since removed (or a plugin's, not loaded now): its rows stay in runs.csv
        log.warning("%s: rows of unregistered task(s) %s are left off the board", Path(results_dir) / RUNS_FILE,
                    ", ".join(unknown))
        runs = [r for r in runs if r["task"] not in unknown]
    return runs


@dataclass
class Board:
    """What one read of runs.csv gives: its rows, the board's rows and the effects. LEADERBOARD.md and
    the dashboard are built from one of these, so they cannot disagree (nor bootstrap twice)."""
    runs: list[dict[str, str]]
    rows: list[dict]
    effects: list[dict]


def compute(results_dir: Path) -> Board:
    results_dir = Path(results_dir)
    if not (results_dir / RUNS_FILE).is_file():  # a mistyped folder would otherwise get an empty board
        raise DataError(f"{results_dir / RUNS_FILE}: not found; pass the folder `bench run --results-dir` wrote to "
                        f"(default runs/results; the published reference is results/)")
    runs = load_runs(results_dir)
    if not runs:  # an emptied file would otherwise overwrite the board with an empty one
        raise DataError(f"{results_dir / RUNS_FILE}: no runs in it (empty, or a header alone); the board files are "
                        f"left as they were. Restore it (git checkout, or a backup) or point at another folder")
    return Board(runs, board_rows(runs), effect_rows(runs, results_dir))


def build(results_dir: Path, plots: bool = True, board: Board | None = None) -> Path:
    """leaderboard.csv, effects.csv, LEADERBOARD.md; with `plots`, the curves' PNGs. `board`: one
    already computed from this folder."""
    results_dir = Path(results_dir)
    board = board or compute(results_dir)
    runs, out, effects = board.runs, board.rows, board.effects
    path = results_dir / LEADERBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows_atomic(path, out, COLUMNS)
    write_rows_atomic(results_dir / EFFECTS_FILE, effects, EFFECT_COLUMNS)
    md = path.parent / MARKDOWN_FILE
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(markdown(out, effects))
    tmp.replace(md)
    if plots:
        for png in plot_curves(runs, results_dir) + plot_regularizers(runs, results_dir):
            log.info("wrote %s", png)
    return path
