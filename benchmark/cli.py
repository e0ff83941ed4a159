"""`bench`: run presets, fetch data, list presets, build the leaderboard."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from benchmark.errors import BenchError, RunInterrupted

DEFAULT_DATA_ROOT = os.environ.get("RNNREG_DATA_ROOT", "data")
# A user's own rows: apart from results/, the project's published reference (made with
# `--results-dir results` by whoever publishes it), so the two never blend in one table.
DEFAULT_RESULTS_DIR = Path("runs/results")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and test task presets; each finished run appends a row to "
                                          "<results-dir>/runs.csv")
    r.add_argument("--task", required=True, help="a task (a folder of configs/), a comma list, or 'all'")
    r.add_argument("--preset", default=None, help="a preset of each task (configs/<task>/<preset>.yaml) or a "
                                                   "YAML path; default: each task's 'small', else 'quick'")
    r.add_argument("--dropout", type=_dropouts, default=None, metavar="on|off|on,off",
                   help="on: the preset's dropout rates; off: all zero; on,off: both, same seed; "
                        "default: the paper's choice for the preset")
    seeds = r.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="one seed (default 0)")
    seeds.add_argument("--seeds", type=_seeds, default=None, metavar="N|S1,S2,...",
                       help="N seeds (0..N-1) or a list; every task x dropout runs with each")
    r.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT),
                   help="folder holding ptb/ etc. (env RNNREG_DATA_ROOT; default ./data)")
    r.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                   help="where runs.csv and test outputs go (default runs/results; results/ is the project's "
                        "published reference)")
    r.add_argument("--runs-dir", type=Path, default=Path("runs"), help="checkpoints and logs go to RUNS_DIR/<run>")
    r.add_argument("--run-dir", type=Path, default=None, help="exact folder for a single run's checkpoints and logs")
    r.add_argument("--resume", action="store_true",
                   help="pick up where a run or sweep stopped: finished runs are skipped, an interrupted one "
                        "continues from its last epoch checkpoint, the rest start")
    r.add_argument("--dry-run", action="store_true", help="print each run's resolved config and folder; train nothing")
    r.add_argument("--logger", type=_loggers, default=("csv",), metavar="csv|wandb|csv,wandb",
                   help="where metrics go besides runs.csv (default csv: <run>/csv/metrics.csv)")
    r.add_argument("--wandb-mode", choices=("auto", "online", "offline"), default="auto",
                   help="auto: online with WANDB_API_KEY or `wandb login`, else offline (sync later)")
    r.add_argument("--wandb-project", default="rnnreg-bench")
    # Before --logger: `--wandb off` (csv only) or auto/online/offline (csv + W&B in that mode). Kept so
    # that the commands recorded in older results rows still run.
    r.add_argument("--wandb", choices=("auto", "online", "offline", "off"), default=None, help=argparse.SUPPRESS)
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset value, e.g. --set model.backbone=stacked (repeatable)")
    r.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    r.add_argument("--test-src", type=Path, default=None,
                   help="translation: score an extra test set, source side (plain lines or WMT .sgm)")
    r.add_argument("--test-ref", type=Path, default=None, help="translation: its reference side, line-aligned")
    t = r.add_argument_group("Trainer pass-throughs")
    t.add_argument("--accelerator", default=None, help="cpu | gpu | auto")
    t.add_argument("--devices", default=None, help="number of devices, a list like 0,1, or auto")
    t.add_argument("--num-nodes", type=_positive_int, default=None)
    t.add_argument("--strategy", default=None, help="auto | ddp | ddp_spawn | ...")
    t.add_argument("--precision", default=None, choices=("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"))
    t.add_argument("--max-epochs", type=_positive_int, default=None)
    t.add_argument("--max-steps", type=_positive_int, default=None)

    f = sub.add_parser("fetch", help="download a data set from its publisher into the data root")
    f.add_argument("dataset", choices=sorted(FETCHABLE))
    f.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    f.add_argument("--yes", action="store_true", help="go ahead with a large download (coco2014, wmt14, flickr8k)")

    sub.add_parser("list", aliases=["presets"], help="tasks and presets with their key numbers")

    b = sub.add_parser("leaderboard", help="<results-dir>/runs.csv + the paper's numbers -> leaderboard.csv, effects.csv, "
                                           "LEADERBOARD.md and learning-curve plots")
    b.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                   help="the runs.csv to read and where the board goes (default runs/results; results/ for the "
                        "published reference)")
    b.add_argument("--logger", type=_loggers, default=("csv",), metavar="csv|wandb",
                   help="wandb: also log the leaderboard as a W&B table artifact")
    b.add_argument("--wandb-mode", choices=("auto", "online", "offline"), default="auto")
    b.add_argument("--wandb-project", default="rnnreg-bench")
    b.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the W&B leaderboard run is kept")

    e = sub.add_parser("ensemble", help="average the predicted distributions of saved models (the paper's "
                                        "Table 1 model averaging); appends an ensemble row to <results-dir>/runs.csv")
    e.add_argument("--task", required=True, help="a task whose module can ensemble (ptb)")
    e.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="run folders (or checkpoint files) of the members: same task, preset and vocabulary")
    e.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="each member's last epoch (what its own test scored) or its best by validation")
    e.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    e.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    e.add_argument("--batch-size", type=_positive_int, default=None, help="evaluation batch (default: the preset's)")
    return p


def _dropouts(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or set(values) - {"on", "off"}:
        raise argparse.ArgumentTypeError(f"expected on, off or on,off, got {text!r}")
    return values


def _seeds(text: str) -> tuple[int, ...]:
    try:
        if "," in text:
            return tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 3 or a list like 0,1,7, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"a seed count must be >= 1, got {n}")
    return tuple(range(n))


def _loggers(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or set(values) - {"csv", "wandb"}:
        raise argparse.ArgumentTypeError(f"expected csv, wandb or csv,wandb, got {text!r}")
    return values


# name -> where its spec lives: a small data set with known sha256s (fetch.Dataset), or a
# multi-GB one that asks first (fetch.LargeDataset).
FETCHABLE = {
    "ptb": "datamodules.ptb.PTB",
    "timit-sample": "datamodules.speech.TIMIT_SAMPLE",
    "tatoeba": "datamodules.parallel.TATOEBA",
    "wmt-dev": "datamodules.parallel.WMT_DEV",
    "wmt14": "datamodules.parallel.WMT14",
    "coco2014": "datamodules.captions.COCO2014",
    "flickr8k": "datamodules.captions.FLICKR8K",
}


def _devices(text: str | None):
    if text is None or text == "auto":
        return text
    if "," in text:
        return [int(d) for d in text.split(",") if d]
    return int(text)


def add_test_files(preset, src: Path | None, ref: Path | None) -> None:
    """--test-src/--test-ref: one more named test set, `test_<name>_*` in the results row."""
    import re

    from benchmark import config
    from benchmark.errors import ConfigError

    if src is None or ref is None:
        raise ConfigError("--test-src and --test-ref go together: the source file and its reference translation")
    dm = config.import_class(preset.datamodule, preset.path)
    if not getattr(dm, "accepts_test_files", False):
        raise ConfigError(f"--test-src/--test-ref apply to translation presets, not {preset.task}/{preset.name}")
    for path in (src, ref):
        if not path.is_file():
            raise ConfigError(f"{path}: not found (given with --test-src/--test-ref)")
    name = re.sub(r"\W+", "_", src.name.split(".")[0]).strip("_") or "custom"
    preset.data["test_sets"] = {**(preset.data.get("test_sets") or {}),
                                name: {"src": str(src.resolve()), "ref": str(ref.resolve())}}


def plan_runs(args: argparse.Namespace) -> list[tuple]:
    """Every (preset, dropout, seed) the command asks for, each preset resolved up front: a typo in
    the last task's preset fails before the first task trains."""
    import copy

    from benchmark import config
    from benchmark.errors import ConfigError

    known = config.tasks()
    names = known if args.task == "all" else [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise ConfigError(f"unknown task(s) {', '.join(unknown) or repr(args.task)}; known: {', '.join(known)} or all")
    seeds = args.seeds or (args.seed if args.seed is not None else 0,)
    plan = []
    for task in dict.fromkeys(names):
        presets = config.presets(task)
        name = args.preset or next((p for p in ("small", "quick") if p in presets), presets[0])
        base = config.load_preset(task, name, args.overrides)
        if args.test_src or args.test_ref:
            if getattr(config.import_class(base.datamodule, base.path), "accepts_test_files", False):
                add_test_files(base, args.test_src, args.test_ref)
            elif len(names) == 1:
                add_test_files(base, args.test_src, args.test_ref)  # raises: says which tasks take them
        for dropout in args.dropout or (base.default_dropout,):
            for seed in seeds:
                plan.append((copy.deepcopy(base), dropout, seed))  # each run sets its own dropout rates
    if args.run_dir and len(plan) > 1:
        raise ConfigError(f"--run-dir names one run's folder, but this command plans {len(plan)} runs; "
                          f"use --runs-dir")
    return plan


def cmd_run(args: argparse.Namespace) -> int:
    import time

    import yaml

    from benchmark import config
    from benchmark.runner import RunOptions, finished_row, make_datamodule, run, run_name, settings_hash

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.wandb is not None:
        args.logger = ("csv",) if args.wandb == "off" else ("csv", "wandb")
        args.wandb_mode = "auto" if args.wandb == "off" else args.wandb
    plan = plan_runs(args)
    devices = _devices(args.devices)
    trainer = {"accelerator": args.accelerator, "devices": devices, "num_nodes": args.num_nodes,
               "strategy": args.strategy, "precision": args.precision, "max_epochs": args.max_epochs,
               "max_steps": args.max_steps}
    if args.dry_run:
        for preset, dropout, seed in plan:
            shown = preset  # this run's own copy (plan_runs)
            dm = make_datamodule(shown, args.data_root)
            chash = settings_hash(shown, dm, trainer, args.data_root)
            absent = [p for p in dm.data_files() if not p.exists()]
            config.apply_dropout(shown, dropout)
            run_dir = args.run_dir or args.runs_dir / run_name(shown, dropout, seed, chash)
            state = ("finished: skipped with --resume" if finished_row(run_dir) else
                     "resumes from last.ckpt" if (run_dir / "checkpoints" / "last.ckpt").exists() else "new")
            if absent:
                state += f"; {absent[0]} not downloaded yet: the hash changes once it is"
            print(f"# {shown.task}/{shown.name} dropout={dropout} seed={seed} config_hash={chash} -> {run_dir} "
                  f"({state})")
            print(yaml.safe_dump({"config_file": str(shown.path), "model": shown.model, "data": shown.data,
                                  "trainer": {**shown.trainer, **{k: v for k, v in trainer.items() if v is not None}},
                                  "paper": shown.paper or None}, sort_keys=False))
        return 0

    outcomes: list[tuple[str, str, str]] = []  # (run, status, summary)
    start = time.perf_counter()
    for preset, dropout, seed in plan:
        name = f"{preset.task}-{preset.name}-dropout_{dropout}-seed{seed}"
        opts = RunOptions(
            dropout=dropout, seed=seed, data_root=args.data_root, results_dir=args.results_dir,
            runs_dir=args.runs_dir, run_dir=args.run_dir, resume=args.resume, loggers=args.logger,
            wandb_mode=args.wandb_mode, wandb_project=args.wandb_project, trainer=trainer,
            command=shlex.join(["bench", *args.argv]),
        )
        t0 = time.perf_counter()
        try:
            row = run(preset, opts)
        except (KeyboardInterrupt, RunInterrupted):
            if len(plan) > 1:  # the user stopped the whole sweep, not one run
                print(f"bench: sweep stopped at {name} ({len(outcomes)} of {len(plan)} runs done); the same "
                      f"command with --resume skips the finished runs and continues this one", file=sys.stderr)
            raise
        except Exception as err:  # noqa: BLE001 - a sweep reports one run's failure and goes on
            if len(plan) == 1:
                raise
            if not isinstance(err, BenchError):
                logging.getLogger("benchmark").exception("%s failed", name)
            print(f"bench: error: {name}: {err}", file=sys.stderr)
            outcomes.append((name, "FAILED", str(err).splitlines()[0][:100]))
            continue
        if row is None:  # a DDP rank other than 0
            continue
        shown = {k: v for k, v in row.items() if k.startswith(("train_", "valid_", "test_")) and k != "train_loss"}
        summary = ", ".join(f"{k}={v}" for k, v in shown.items())
        skipped = row.get("skipped")
        status = (f"skipped (finished earlier, at {skipped})" if isinstance(skipped, str) else
                  "skipped (finished earlier)" if skipped else f"done in {time.perf_counter() - t0:.0f} s")
        print(f"{preset.task}/{preset.name} dropout {dropout} seed {seed}: {summary}")
        outcomes.append((name, status, summary))
    if len(plan) > 1 and outcomes:
        print(f"\nbench run: {len(plan)} runs in {time.perf_counter() - start:.0f} s")
        for name, status, _ in outcomes:
            print(f"  {name:<48} {status}")
    failed = [n for n, status, _ in outcomes if status == "FAILED"]
    if failed:
        print(f"bench: error: {len(failed)} of {len(plan)} runs failed ({', '.join(failed)}); the others kept "
              f"their results; rerun with --resume to retry only those", file=sys.stderr)
        return 2
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    import importlib

    from benchmark import fetch

    module, _, name = FETCHABLE[args.dataset].rpartition(".")
    spec = getattr(importlib.import_module(module), name)
    if isinstance(spec, fetch.LargeDataset):
        folder = fetch.download_large(spec, args.data_root, yes=args.yes)
    else:
        folder = fetch.download(spec, args.data_root)
    print(f"{args.dataset}: ready in {folder}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """One line per preset: size, dropout rate, training length, data, and the paper's numbers."""
    from benchmark import config

    for task in config.tasks():
        print(f"{task}:")
        for name in config.presets(task):
            p = config.load_preset(task, name)
            m, t = p.model, p.trainer
            size = f"{m.get('num_layers', '?')}x{m.get('hidden_size', '?')}"
            rates = ",".join(f"{k}={m[k]}" for k in config.dropout_keys(m)) or "-"
            length = f"{t['max_epochs']} ep" if "max_epochs" in t else f"{t.get('max_steps', '?')} steps"
            data = next((str(v) for k, v in p.data.items() if k in ("train", "captions", "corpus")),
                        p.datamodule.rsplit(".", 1)[-1])
            paper = "; ".join(f"{d}: " + ", ".join(f"{k} {v}" for k, v in config.paper_numbers(p, d).items())
                              for d in ("off", "on") if config.paper_numbers(p, d)) or "-"
            print(f"  {name:<20} LSTM {size:<8} dropout {p.default_dropout:<3} ({rates:<12}) {length:<7} "
                  f"data {data[:40]:<40} paper: {paper}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from benchmark.ensemble import run_ensemble

    row = run_ensemble(args.task, args.runs, args.data_root, args.results_dir, which=args.checkpoint,
                       batch_size=args.batch_size, command=shlex.join(["bench", *args.argv]))
    for key in row:
        if key.startswith("members_"):
            metric = key.removeprefix("members_")
            print(f"{metric}: ensemble of {row['ensemble']} {row[metric]}  (members {row[key]})")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import MARKDOWN_FILE, build

    path = build(args.results_dir)
    print((path.parent / MARKDOWN_FILE).read_text(), end="")
    if "wandb" in args.logger:
        from benchmark import wandb_log

        wandb_log.log_leaderboard(path, args.runs_dir / "leaderboard", project=args.wandb_project,
                                  mode=args.wandb_mode)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = {"run": cmd_run, "fetch": cmd_fetch, "list": cmd_list, "presets": cmd_list,
               "leaderboard": cmd_leaderboard, "ensemble": cmd_ensemble}
    try:
        return handler[args.command](args)
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
