"""`bench`: run presets, fetch data, list presets, build the leaderboard."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from benchmark.errors import BenchError, DataError

DEFAULT_DATA_ROOT = os.environ.get("RNNREG_DATA_ROOT", "data")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and test a task preset; appends a row to results/runs.csv")
    r.add_argument("--task", required=True, help="a folder of configs/ (ptb, ...) or 'all'")
    r.add_argument("--preset", default=None, help="a preset of the task (configs/<task>/<preset>.yaml) or a "
                                                   "YAML path; default: each task's 'small', else 'quick'")
    r.add_argument("--dropout", choices=("on", "off"), default=None,
                   help="on: the preset's dropout rates; off: all zero; default: the paper's choice for the preset")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT),
                   help="folder holding ptb/ etc. (env RNNREG_DATA_ROOT; default ./data)")
    r.add_argument("--results-dir", type=Path, default=Path("results"))
    r.add_argument("--runs-dir", type=Path, default=Path("runs"), help="checkpoints and logs go to RUNS_DIR/<run>")
    r.add_argument("--run-dir", type=Path, default=None, help="exact folder for this run's checkpoints and logs")
    r.add_argument("--resume", action="store_true", help="continue the run from its last epoch checkpoint")
    r.add_argument("--wandb", choices=("auto", "online", "offline", "off"), default="auto",
                   help="auto: online with WANDB_API_KEY set, else offline")
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

    sub.add_parser("presets", help="list tasks and presets")

    b = sub.add_parser("leaderboard", help="results/runs.csv + the paper's numbers -> results/leaderboard.csv")
    b.add_argument("--results-dir", type=Path, default=Path("results"))
    return p


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


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark import config
    from benchmark.runner import RunOptions, run

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task_names = config.tasks() if args.task == "all" else [args.task]
    failed: list[str] = []
    for task in task_names:
        presets = config.presets(task) if (config.CONFIG_DIR / task).is_dir() else []
        name = args.preset or next((p for p in ("small", "quick") if p in presets), presets[0] if presets else "small")
        preset = config.load_preset(task, name, args.overrides)
        if args.test_src or args.test_ref:
            add_test_files(preset, args.test_src, args.test_ref)
        devices = _devices(args.devices)
        opts = RunOptions(
            dropout=args.dropout or preset.default_dropout,
            seed=args.seed,
            data_root=args.data_root,
            results_dir=args.results_dir,
            runs_dir=args.runs_dir,
            run_dir=args.run_dir,
            resume=args.resume,
            wandb=args.wandb,
            trainer={"accelerator": args.accelerator, "devices": devices, "num_nodes": args.num_nodes,
                     "strategy": args.strategy, "precision": args.precision, "max_epochs": args.max_epochs,
                     "max_steps": args.max_steps},
            command=shlex.join(["bench", *args.argv]),
        )
        try:
            row = run(preset, opts)
        except DataError as err:
            if len(task_names) == 1:
                raise
            # `--task all`: one task's missing data should not cost the others their runs.
            print(f"bench: error: {task}/{preset.name}: {err}", file=sys.stderr)
            failed.append(task)
            continue
        if row is not None:
            shown = {k: v for k, v in row.items() if k.startswith(("train_", "valid_", "test_")) and k != "train_loss"}
            print(f"{task}/{preset.name} dropout {opts.dropout}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if failed:
        print(f"bench: error: no data for {', '.join(failed)} (see above); the other tasks ran", file=sys.stderr)
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


def cmd_presets(args: argparse.Namespace) -> int:
    from benchmark import config

    for task in config.tasks():
        print(f"{task}: {', '.join(config.presets(task))}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import build

    path = build(args.results_dir)
    print(path.read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = {"run": cmd_run, "fetch": cmd_fetch, "presets": cmd_presets, "leaderboard": cmd_leaderboard}
    try:
        return handler[args.command](args)
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
