"""Trained quick models put to use, on real data: `bench eval` against each run's own test, `bench
translate` against a run's samples, ensembles of the members against each member, and the time an
evaluation takes beside the time training took, for every task.

    bench run --task ptb,speech --preset quick --dropout on --seeds 0,1,2 --runs-dir runs/model-use
    bench run --task translation,captioning --preset quick --dropout on --seeds 0,1 --runs-dir runs/model-use
    python scripts/model_use_check.py --runs-dir runs/model-use --data-root data --results-dir results

The evaluation and ensemble rows go to <results-dir>/runs.csv; the summary to
<results-dir>/model-use.md and .json.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import infer, trained  # noqa: E402
from benchmark.ensemble import run_ensemble  # noqa: E402
from benchmark.evaluate import evaluate  # noqa: E402
from tasks import registry  # noqa: E402


def members(runs_dir: Path, task: str) -> list[Path]:
    """The finished dropout-on runs of the task's quick preset, by seed."""
    found = [p for p in runs_dir.glob(f"{task}-quick-*-dropout_on-seed*") if (p / "result.json").is_file()]
    by_hash: dict[str, list[Path]] = {}
    for p in found:  # <task>-quick-<hash>-dropout_on-seed<N>: runs of one setting only
        by_hash.setdefault(p.name.split("-")[2], []).append(p)
    if not by_hash:
        return []
    newest = max(by_hash.values(), key=lambda ps: max(q.stat().st_mtime for q in ps))
    return sorted(newest, key=lambda p: int(p.name.rsplit("seed", 1)[1]))


def sample_sources(run_dir: Path) -> list[tuple[str, str]]:
    """(source, beam output) pairs of a translation run's samples/test.txt."""
    text = (run_dir / "samples" / "test.txt").read_text(encoding="utf-8")
    pairs = []
    for block in text.strip().split("\n\n"):
        fields = dict(re.match(r"\s*([^:]+): (.*)", line).groups() for line in block.splitlines())
        beam = next(v for k, v in fields.items() if k.startswith(("beam", "greedy")))
        pairs.append((fields["source"], beam))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--results-dir", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=registry.names())
    args = ap.parse_args()
    command = shlex.join(["python", *sys.argv])
    report = {}
    for task in args.tasks:
        runs = members(args.runs_dir, task)
        if len(runs) < 2:
            print(f"{task}: fewer than 2 finished quick runs in {args.runs_dir}; skipped")
            continue
        spec = registry.get(task)
        own = json.loads((runs[0] / "result.json").read_text())["row"]
        ev = evaluate(runs[0], "last", args.data_root, args.results_dir, command=command)
        same = {k: (own[k], ev[k]) for k in ev if k.startswith("test_") and k in own and own[k] != ""}
        train_s = float(own["train_s_per_epoch"]) * int(own["epochs"])
        out = {"members": [r.name for r in runs],
               "eval_equals_own_test": bool(same) and all(a == b for a, b in same.values()),
               "compared": same, "eval_s": float(ev["wall_s"]), "train_s": round(train_s, 1),
               "run_wall_s": float(own["wall_s"]),
               "eval_over_train": round(float(ev["wall_s"]) / max(train_s, 1e-9), 4), "headline": spec.headline}
        # The same test split given by path, where a task's test split is a file or folder of its own.
        by_path = {"ptb": ([args.data_root / "ptb" / "ptb.test.txt"], "test_ptb_ppl", "test_ppl"),
                   "speech": ([args.data_root / "an4" / "wav" / "an4test_clstk"], "test_an4test_clstk_frame_acc",
                              "test_frame_acc")}
        if task in by_path and by_path[task][0][0].exists():
            paths, key, own_key = by_path[task]
            ev = evaluate(runs[0], "last", args.data_root, args.results_dir, tests=[paths], command=command)
            out["by_path"] = {"test": str(paths[0]), key: ev[key], own_key: own[own_key], "same": ev[key] == own[own_key],
                              "eval_s": float(ev["wall_s"])}
        if task == "translation":
            t = trained.load(runs[0])
            pairs = sample_sources(runs[0])
            start = time.perf_counter()
            got = infer.translate(t, [s for s, _ in pairs])
            out["translate_samples"] = {"sentences": len(pairs), "same": sum(g == b for g, (_, b) in zip(got, pairs)),
                                        "seconds": round(time.perf_counter() - start, 2)}
        ens = run_ensemble(task, runs, args.data_root, args.results_dir, command=command)
        out["ensemble"] = {k: ens[k] for k in ens if k.startswith(("test_", "valid_", "members_"))}
        report[task] = out
        print(task, json.dumps(out, indent=1), flush=True)
    (args.results_dir / "model-use.json").write_text(json.dumps({"command": command, "tasks": report}, indent=1) + "\n")
    lines = [f"# Trained quick models put to use\n\n`{command}` (members: `bench run --preset quick --dropout on`, "
             f"in {args.runs_dir})\n",
             "| task | headline | `bench eval` = the run's own test | eval s | training s | eval / training | "
             "ensemble | members |", "|---|---|---|---:|---:|---:|---:|---|"]
    for task, out in report.items():
        h = out["headline"]
        lines.append(f"| {task} | {h} | {'yes' if out['eval_equals_own_test'] else 'NO'} ({len(out['compared'])} "
                     f"metrics) | {out['eval_s']:.1f} | {out['train_s']:.0f} | {out['eval_over_train']:.3f} | "
                     f"{out['ensemble'].get(h, '')} (of {len(out['members'])}) | {out['ensemble'].get('members_' + h, '')} |")
    for task, out in report.items():
        if "by_path" in out:
            b = out["by_path"]
            lines.append(f"\n{task}: the test split given by path (`bench eval RUN --test {b['test']}`): "
                         f"{'the same' if b['same'] else 'NOT the same'} as the run's own test "
                         f"({', '.join(f'{k} {v}' for k, v in b.items() if k.startswith('test_'))}).")
    if "translation" in report:
        s = report["translation"]["translate_samples"]
        lines.append(f"\n`bench translate` on the translation run's sample sources: {s['same']} of {s['sentences']} "
                     f"outputs are the run's own, in {s['seconds']} s.")
    (args.results_dir / "model-use.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
