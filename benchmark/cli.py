"""`bench`: run presets, fetch and label data, list presets, build the leaderboard and dashboards,
and use trained models (evaluate, translate, caption, phones, score, sample, ensemble)."""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
from pathlib import Path

from benchmark import config, trainer_args
from benchmark.logs import configure_logging
from datamodules import download as fetch
from datamodules.sources import SOURCES
from tasks import registry
from tasks.nn.errors import BenchError, ConfigError, DataError

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
    _run_parser(sub)
    _fetch_parser(sub)
    _align_parser(sub)
    sub.add_parser("list", aliases=["presets"], help="tasks and presets with their key numbers")
    _leaderboard_parser(sub)
    _ensemble_parser(sub)
    _eval_parser(sub)
    _inference_parsers(sub)
    _dashboard_parser(sub)
    return p


def _run_parser(sub) -> None:
    r = sub.add_parser("run", help="train and test task presets; each finished run appends a row to "
                                          "<results-dir>/runs.csv")
    r.add_argument("--task", required=True, help="a task (a folder of configs/), a comma list, or 'all'")
    r.add_argument("--preset", default=None, help="a preset of each task (configs/<task>/<preset>.yaml) or a "
                                                   "YAML path; default: each task's 'small', else 'quick'")
    r.add_argument("--dropout", type=_dropouts, default=None, metavar="on|off|on,off",
                   help="on: the preset's dropout rates; off: all zero; on,off: both, same seed; "
                        "default: the paper's choice for the preset")
    r.add_argument("--regularizer", type=_names, default=None, metavar="NAME[,NAME...]|all",
                   help="which regularizer `--dropout on` trains with: zaremba (the paper, default), or one the "
                        "preset gives rates for (variational, locked, weight_drop, embedding, zoneout, recurrent, "
                        "awd...); a comma list or all sweeps them. `--dropout off` is one run for all of them")
    seeds = r.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_seed, default=None, help="one seed (default 0)")
    seeds.add_argument("--seeds", type=_seed_list, default=None, metavar="S1,S2,...",
                       help="these seeds, e.g. 0,7,9; every task x dropout runs with each")
    seeds.add_argument("--num-seeds", type=_positive_int, default=None, metavar="N",
                       help="seeds 0..N-1 (what `make bench SEEDS=N` passes)")
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
    r.add_argument("--wandb-entity", default=None, help="W&B user or team (default: WANDB_ENTITY, else your "
                                                        "account's default); WANDB_MODE=disabled turns W&B off")
    # Before --logger: `--wandb off` (csv only) or auto/online/offline (csv + W&B in that mode). Kept so
    # that the commands recorded in older results rows still run.
    r.add_argument("--wandb", choices=("auto", "online", "offline", "off"), default=None, help=argparse.SUPPRESS)
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset value, e.g. --set model.backbone=stacked (repeatable)")
    r.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    r.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="runs at once, each in its own process with the threads shared out (default 1). On a "
                        "CPU, small LSTMs use two cores better as two runs than as one; a run's numbers can "
                        "change with its thread count, so they match the reference rows' only at the same count")
    r.add_argument("--test-src", type=Path, default=None,
                   help="translation: score an extra test set, source side (plain lines or WMT .sgm)")
    r.add_argument("--test-ref", type=Path, default=None, help="translation: its reference side, line-aligned")
    _trainer_arguments(r)


def _trainer_arguments(r: argparse.ArgumentParser) -> None:
    t = r.add_argument_group("Trainer pass-throughs")
    t.add_argument("--accelerator", default=None, help="cpu | gpu | auto")
    t.add_argument("--devices", type=_devices, default=None, help="number of devices (-1: all), a list like 0,1, or auto")
    t.add_argument("--num-nodes", type=_positive_int, default=None)
    t.add_argument("--strategy", default=None, help="auto | ddp | ddp_spawn | ...")
    t.add_argument("--precision", default=None, choices=("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"))
    t.add_argument("--max-epochs", type=_positive_int, default=None)
    t.add_argument("--max-steps", type=_positive_int, default=None)


def _fetch_parser(sub) -> None:
    f = sub.add_parser("fetch", help="download a data set from its publisher into the data root")
    f.add_argument("dataset", choices=sorted(SOURCES))
    f.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    f.add_argument("--yes", action="store_true", help="go ahead with a large download (coco2014, wmt14, flickr8k; "
                                                      "an4's 64 MB needs none: checked, then labelled by bench align)")


def _align_parser(sub) -> None:
    a = sub.add_parser(
        "align", help="phone labels by forced alignment: a TIMIT-style .phn beside each utterance of a corpus",
        description="Align each utterance's word transcript to its audio with pocketsphinx (en-us model, CMUdict) "
                    "and write `start_sample end_sample PHONE` lines (39 ARPAbet phones + SIL, 10 ms grid). "
                    "Layouts: an4 (etc/*.transcription + wav/), kaldi (text + wav.scp), simple (each audio "
                    "file with a .txt or .lab transcript beside it). Utterances that cannot be labelled are "
                    "skipped and listed in align-report.tsv; a stopped run resumes where it was.")
    a.add_argument("corpus", type=Path, help="the corpus folder")
    a.add_argument("--out", type=Path, default=None,
                   help="write the labels (with links to the audio) into this folder instead of beside the audio")
    a.add_argument("--layout", choices=("an4", "kaldi", "simple"), default=None, help="default: detected")
    a.add_argument("--dict", dest="user_dict", type=Path, default=None,
                   help="pronunciations for words CMUdict lacks, one 'WORD PH1 PH2 ...' per line")
    a.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="worker processes")
    a.add_argument("--force", action="store_true", help="align again what already has labels")


def _leaderboard_parser(sub) -> None:
    b = sub.add_parser("leaderboard", help="<results-dir>/runs.csv + the paper's numbers -> leaderboard.csv, effects.csv, "
                                           "LEADERBOARD.md, learning-curve plots and dashboard.html")
    b.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                   help="the runs.csv to read and where the board goes (default runs/results; results/ for the "
                        "published reference)")
    b.add_argument("--logger", type=_loggers, default=("csv",), metavar="csv|wandb",
                   help="wandb: also log the leaderboard as a W&B table artifact")
    b.add_argument("--wandb-mode", choices=("auto", "online", "offline"), default="auto")
    b.add_argument("--wandb-project", default="rnnreg-bench")
    b.add_argument("--wandb-entity", default=None)
    b.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the W&B leaderboard run is kept")


def _ensemble_parser(sub) -> None:
    e = sub.add_parser("ensemble", help="average the predicted distributions of saved models (the paper's "
                                        "Table 1 model averaging); appends an ensemble row to <results-dir>/runs.csv")
    e.add_argument("--task", required=True, help="a task whose module can ensemble (all four)")
    e.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="run folders (or checkpoint files) of the members: same task, preset and vocabulary")
    e.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="each member's last epoch (what its own test scored) or its best by validation")
    e.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    e.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    e.add_argument("--batch-size", type=_positive_int, default=None, help="evaluation batch (default: the preset's)")


def _eval_parser(sub) -> None:
    e = sub.add_parser(
        "eval", help="score a saved model on its preset's test sets or on others given by path; appends an "
                     "evaluation row to <results-dir>/runs.csv",
        description="Scores a trained model with the same test code its run used. Test sets by path (--test, "
                    "repeatable): ptb TEXT (PTB format); translation SRC REF (plain lines or WMT .sgm); captioning "
                    "CAPTIONS_JSON IMAGE_DIR (COCO format); speech FOLDER (audio with a TIMIT-style .phn beside "
                    "each file). These need only the checkpoint; without --test, the preset's own test sets are "
                    "read from --data-root.")
    e.add_argument("model", type=Path, help="a run folder of `bench run`, or a .ckpt file")
    e.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="for a run folder: the last epoch's model (the headline) or the best by validation")
    e.add_argument("--test", dest="tests", type=Path, nargs="+", action="append", metavar="PATH",
                   help="a test set by path (see above); repeat for several")
    e.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    e.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    e.add_argument("--out", type=Path, default=None,
                   help="where outputs and samples go (default <run>/eval/<checkpoint>-<test sets>-<their sha256, 8 digits>, "
                        "or <checkpoint>-preset); a folder that already holds outputs is refused")
    e.add_argument("--accelerator", default="auto")
    e.add_argument("--precision", default=None, choices=("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"),
                   help="default: what the run tested under (recorded in its checkpoint)")
    e.add_argument("--batch-size", type=_positive_int, default=None, help="evaluation batch (default: the preset's)")


def _dashboard_parser(sub) -> None:
    d = sub.add_parser("dashboard", help="a W&B workspace and report of a results folder's runs (offline: a "
                                         "definitions file to publish later with --upload)")
    d.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    d.add_argument("--runs-dir", type=Path, default=None, help="only the runs of one sweep: those under this folder")
    d.add_argument("--wandb-project", default="rnnreg-bench")
    d.add_argument("--wandb-entity", default=None)
    d.add_argument("--wandb-mode", choices=("auto", "online", "offline"), default="auto")
    d.add_argument("--out", type=Path, default=None, help="offline: the definitions file "
                                                          "(default <results-dir>/wandb-dashboard.json)")
    d.add_argument("--upload", type=Path, default=None, metavar="FILE",
                   help="publish a definitions file written offline (after `wandb sync` uploaded its runs)")


def _inference_parsers(sub) -> None:
    def model_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", type=Path, required=True, help="a run folder of `bench run`, or a .ckpt file")
        p.add_argument("--checkpoint", choices=("last", "best"), default="last")
        p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")

    t = sub.add_parser("translate", help="translate sentences, one per line (a file, or stdin)")
    model_arg(t)
    t.add_argument("input", nargs="?", type=Path, help="a text file (default: stdin)")
    t.add_argument("--beam", type=_positive_int, default=None, help="beam size (default: the model's; 1: greedy)")
    c = sub.add_parser("caption", help="caption images")
    model_arg(c)
    c.add_argument("images", nargs="+", type=Path)
    c.add_argument("--beam", type=_positive_int, default=None, help="beam size (default: the model's; 1: greedy)")
    ph = sub.add_parser("phones", help="phone sequence (and frame labels) of audio files")
    model_arg(ph)
    ph.add_argument("audio", nargs="+", type=Path)
    ph.add_argument("--frames", action="store_true", help="also one label per 10 ms frame")
    sc = sub.add_parser("score", help="perplexity of a language model on text (PTB format: one sentence a line)")
    model_arg(sc)
    sc.add_argument("input", nargs="?", type=Path, help="a text file (default: stdin)")
    sa = sub.add_parser("sample", help="text sampled from a language model")
    model_arg(sa)
    sa.add_argument("--words", type=_positive_int, default=100)
    sa.add_argument("--temperature", type=float, default=1.0)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--prompt", default="", help="words to start from")


def _dropouts(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or set(values) - {"on", "off"}:
        raise argparse.ArgumentTypeError(f"expected on, off or on,off, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values:
        raise argparse.ArgumentTypeError(f"expected a name, a comma list or all, got {text!r}")
    return values


def _seed(text: str) -> int:
    """A seed as Lightning's seed_everything takes it (checked here, not after the run folder is made)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"a seed is 0 to {2**32 - 1}, got {text!r}")
    return seed


def _seed_list(text: str) -> tuple[int, ...]:
    """A comma list of seeds. A bare number is how older commands (and the rows they wrote) said a
    count: it keeps that meaning, loudly, so a recorded command still repeats its runs."""
    try:
        if "," in text:
            return tuple(dict.fromkeys(_seed(v) for v in text.split(",") if v.strip()))
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 0,1,7, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a list like 0,1,7 (or --num-seeds N), got {text!r}")
    print(f"bench: note: --seeds {n} runs seeds 0..{n - 1}, as it did before --num-seeds; say --num-seeds {n} "
          f"for that, or --seed {n} for seed {n} alone", file=sys.stderr)
    return tuple(range(n))


def _loggers(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or set(values) - {"csv", "wandb"}:
        raise argparse.ArgumentTypeError(f"expected csv, wandb or csv,wandb, got {text!r}")
    return values


def _devices(text: str | None):
    """--devices as Lightning takes it: a count (-1: every device), a list of indices, or auto."""
    if text is None or text == "auto":
        return text
    try:
        devices = [int(d) for d in text.split(",") if d.strip()] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count, a list like 0,1, or auto, got {text!r}") from None
    if devices == [] or (isinstance(devices, int) and devices < -1) or (isinstance(devices, list) and min(devices) < 0):
        raise argparse.ArgumentTypeError(f"expected a count (-1: all), a list like 0,1, or auto, got {text!r}")
    return devices


def add_test_files(preset, src: Path | None, ref: Path | None) -> None:
    """--test-src/--test-ref: one more named test set, `test_<name>_*` in the results row."""
    if src is None or ref is None:
        raise ConfigError("--test-src and --test-ref go together: the source file and its reference translation")
    if not registry.get(preset.task).can(registry.Can.TEST_FILES):
        raise ConfigError(f"--test-src/--test-ref apply to translation presets, not {preset.task}/{preset.name}")
    for path in (src, ref):
        if not path.is_file():
            raise ConfigError(f"{path}: not found (given with --test-src/--test-ref)")
    name = config.test_set_name(src)
    preset.data["test_sets"] = {**(preset.data.get("test_sets") or {}),
                                name: {"src": str(src.resolve()), "ref": str(ref.resolve())}}


def plan_runs(args: argparse.Namespace) -> list[tuple]:
    """Every (preset, dropout, seed) the command asks for (the preset set to its regularizer), each preset resolved up front: a typo in
    the last task's preset fails before the first task trains."""
    known = registry.names()
    names = known if args.task == "all" else [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise ConfigError(f"unknown task(s) {', '.join(unknown) or repr(args.task)}; known: {', '.join(known)} or all")
    seeds = (args.seeds or (tuple(range(args.num_seeds)) if args.num_seeds else None)
             or (args.seed if args.seed is not None else 0,))
    plan, took_test_files = [], False
    for task in dict.fromkeys(names):
        base = config.load_preset(task, args.preset or registry.get(task).default_preset, args.overrides)
        if args.test_src or args.test_ref:
            if registry.get(task).can(registry.Can.TEST_FILES):
                add_test_files(base, args.test_src, args.test_ref)
                took_test_files = True
            elif len(names) == 1:
                add_test_files(base, args.test_src, args.test_ref)  # raises: says which tasks take them
        if args.regularizer and not args.dropout and base.default_dropout == "off":
            unasked = (f"--regularizer {','.join(args.regularizer)}: {base.path} trains without dropout unless asked "
                       f"(default_dropout: off)")
            if len(names) == 1:
                raise ConfigError(f"{unasked}, so no regularizer would run; add --dropout on (or on,off)")
            print(f"bench: note: {unasked}: {task} runs only without it (--dropout on,off runs both)", file=sys.stderr)
        asked = args.regularizer or (base.default_regularizer,)
        regularizers = config.regularizer_names(base) if "all" in asked else list(asked)
        lacking = [n for n in regularizers if n not in config.regularizer_names(base)]
        if lacking and len(names) > 1:
            # `--task all --regularizer embedding`: speech has no words to drop; the others run it.
            regularizers = [n for n in regularizers if n not in lacking]
            print(f"bench: note: {base.path} gives no rates for {', '.join(lacking)}: {task} "
                  + (f"runs without {'it' if len(lacking) == 1 else 'them'}" if regularizers else "is left out"),
                  file=sys.stderr)
            if not regularizers:
                continue
        dropouts = args.dropout or (base.default_dropout,)
        armed = []  # the preset set to each regularizer: a typo fails now, before any run
        for name in regularizers:
            armed.append(copy.deepcopy(base))
            if "on" not in dropouts:  # `off` alone trains no regularizer: no --set rate of it is overwritten
                armed[-1].set_keys = set()
            config.apply_regularizer(armed[-1], name)
        for dropout in dropouts:
            # `off` trains without any of them: one run per seed, whatever the regularizers.
            for preset in armed if dropout == "on" else armed[:1]:
                plan.extend((copy.deepcopy(preset), dropout, seed) for seed in seeds)
    if not plan:
        raise ConfigError(f"no task of {args.task!r} gives rates for {', '.join(args.regularizer)}")
    if (args.test_src or args.test_ref) and not took_test_files:
        takes = [t for t in known if registry.get(t).can(registry.Can.TEST_FILES)]
        raise ConfigError(f"--test-src/--test-ref apply to {', '.join(takes)}, which --task {args.task} does not name")
    if args.run_dir and len(plan) > 1:
        raise ConfigError(f"--run-dir names one run's folder, but this command plans {len(plan)} runs; "
                          f"use --runs-dir")
    return plan


def _spans_processes(trainer: dict) -> bool:
    """More than one device or node, or a strategy: a run that is several processes itself."""
    devices = trainer.get("devices")
    if devices in (None, "auto") and trainer.get("accelerator") not in ("cpu",):
        import torch  # Lightning's "auto" takes every GPU there is: one DDP process each

        devices = max(torch.cuda.device_count(), 1)
    # -1 is every device there is: as many as that may be, never known here to be one.
    count = (len(devices) if isinstance(devices, list) else 2 if str(devices) == "-1"
             else int(devices) if str(devices).isdigit() else 1)
    return count > 1 or (trainer.get("num_nodes") or 1) > 1 or trainer.get("strategy") not in (None, "auto")


def cmd_run(args: argparse.Namespace) -> int:
    # Lightning and torch load only for the verbs that train or read models: `bench list` stays instant.
    from benchmark import sweep

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.wandb is not None:
        args.logger = ("csv",) if args.wandb == "off" else ("csv", "wandb")
        args.wandb_mode = "auto" if args.wandb == "off" else args.wandb
    plan = plan_runs(args)
    trainer = {"accelerator": args.accelerator, "devices": args.devices, "num_nodes": args.num_nodes,
               "strategy": args.strategy, "precision": args.precision, "max_epochs": args.max_epochs,
               "max_steps": args.max_steps}
    for preset in {p.path: p for p, _, _ in plan}.values():  # every task's, before the first one trains
        trainer_args.check_trainer_types({**preset.trainer, **{k: v for k, v in trainer.items() if v is not None}},
                                   f"{preset.path} or the command line")
    if args.jobs > 1 and any(_spans_processes({**p.trainer, **{k: v for k, v in trainer.items() if v is not None}})
                             for p, _, _ in plan):
        raise ConfigError("--jobs N runs whole runs side by side on one machine's cores; with more than one "
                          "device or node, or a --strategy, each run already spans processes: leave --jobs at 1")
    if args.dry_run:
        for preset, dropout, seed in plan:
            print(sweep.describe(preset, dropout, seed, trainer, args.data_root, args.runs_dir, args.run_dir))
        return 0
    options = sweep.RunOptions(
        data_root=args.data_root, results_dir=args.results_dir, runs_dir=args.runs_dir, run_dir=args.run_dir,
        resume=args.resume, loggers=args.logger, wandb_mode=args.wandb_mode, wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
        trainer=trainer, command=shlex.join(["bench", *args.argv]))
    return sweep.run_all(plan, options, jobs=args.jobs)


def cmd_fetch(args: argparse.Namespace) -> int:
    spec = SOURCES[args.dataset]
    if isinstance(spec, fetch.LargeDataset):
        folder = fetch.download_large(spec, args.data_root, yes=args.yes)
    else:
        folder = fetch.download(spec, args.data_root)
        # Files already there are not fetched again: say if one is not the publisher's.
        changed = [name for name, digest in spec.sha256.items() if fetch.sha256_of(folder / name) != digest]
        if changed:
            more = f" ({len(changed) - 1} more files too)" if len(changed) > 1 else ""
            raise DataError(f"{folder / changed[0]}: not the publisher's file (its sha256 differs from the one "
                            f"{spec.homepage} publishes){more}; delete what you want fetched again and rerun "
                            f"`bench fetch {args.dataset}`")
    print(f"{args.dataset}: ready in {folder}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from datamodules.align import align_corpus

    s = align_corpus(args.corpus, out=args.out, layout=args.layout, user_dict=args.user_dict, jobs=args.jobs,
                     force=args.force)
    print(f"{args.corpus}: {s.aligned} utterances aligned, {s.kept} already were, {len(s.skipped)} skipped"
          + (f", {s.foreign} labelled otherwise (not by bench align) and left as they are" if s.foreign else ""))
    for p in s.skipped[:5]:
        print(f"  skipped {p.utt} ({p.path}): {p.reason}")
    if s.skipped:
        print(f"  all {len(s.skipped)} listed in {s.report}")
    return 0 if s.aligned + s.kept + s.foreign else 1


def cmd_list(args: argparse.Namespace) -> int:
    """One line per preset: size, dropout rate, training length, data, and the paper's numbers."""
    for task in registry.names():
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
            if p.default_regularizer != config.ZAREMBA:
                rates = f"{p.default_regularizer}"
            print(f"  {name:<20} LSTM {size:<8} dropout {p.default_dropout:<3} ({rates:<12}) {length:<7} "
                  f"data {data[:40]:<40} paper: {paper}")
            if p.regularizers:
                print(f"  {'':<20} --regularizer: {', '.join(config.regularizer_names(p))}")
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


def cmd_eval(args: argparse.Namespace) -> int:
    from benchmark.evaluate import evaluate

    row = evaluate(args.model, args.checkpoint, args.data_root, args.results_dir, args.tests, out_dir=args.out,
                   accelerator=args.accelerator, batch_size=args.batch_size, precision=args.precision,
                   command=shlex.join(["bench", *args.argv]))
    spec = registry.get(row["task"])
    shown = [k for k in row if k.startswith("test") and not k.endswith("_frames") and row[k] != ""]
    print(f"{row['task']} {row['preset']} dropout {row['dropout']} seed {row['seed']}, {row['evaluation']}: "
          + ", ".join(f"{k} {row[k]}" for k in shown if k.endswith(spec.headline.removeprefix("test_")) or k in
                      (spec.headline,)))
    print(f"row appended to {args.results_dir / 'runs.csv'}")
    return 0


def _read_lines(path: Path | None) -> list[str]:
    """Lines as the DataModules read them: split at newlines only (parallel.py's _split)."""
    from datamodules.parallel import split_lines

    return split_lines(_read_text(path), "\n")


def _read_text(path: Path | None) -> str:
    try:
        return (sys.stdin.buffer.read() if path is None else path.read_bytes()).decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: unreadable ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path or 'stdin'}: not UTF-8 text (byte {err.start})") from err


def _load_for(args: argparse.Namespace, task: str):
    import torch

    from benchmark import trained

    if args.threads:
        torch.set_num_threads(args.threads)
    return trained.load(args.model, args.checkpoint, task=task)


def cmd_translate(args: argparse.Namespace) -> int:
    from benchmark import infer

    t = _load_for(args, "translation")
    for line in infer.translate(t, _read_lines(args.input), beam=args.beam):
        print(line)
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from benchmark import infer

    failed = 0
    for path, text in infer.caption(_load_for(args, "captioning"), args.images, beam=args.beam):
        print(f"{path}\t{text if text is not None else ''}")
        failed += text is None
    return 1 if failed else 0  # every line printed; a script still learns that some image was skipped


def cmd_phones(args: argparse.Namespace) -> int:
    from benchmark import infer

    t, failed = _load_for(args, "speech"), 0
    for path in args.audio:
        try:
            seq, frames = infer.phones(t, path)
        except BenchError as err:
            infer.warn(f"{err}; skipped")
            print(f"{path}\t")
            failed += 1
            continue
        print(f"{path}\t{' '.join(seq)}" + (f"\t{' '.join(frames)}" if args.frames else ""))
    return 1 if failed else 0  # every line printed; a script still learns that some file was skipped


def cmd_score(args: argparse.Namespace) -> int:
    from benchmark import infer

    t = _load_for(args, "ptb")
    # The text as it is: PTB's reader (ptb.tokens_of) gives every line, blank ones too, its <eos>.
    ids, words, unknown = infer.ptb_ids(t, _read_text(args.input), str(args.input or "stdin"))
    ppl = infer.perplexity(t, ids)
    print(f"perplexity {ppl:.2f} over {words} words (<eos> counted; {unknown} outside the vocabulary, read as <unk>)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from benchmark import infer

    print(infer.sample(_load_for(args, "ptb"), args.words, args.temperature, args.seed, args.prompt), end="")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import json

    from benchmark import wandb_dashboard, wandb_log
    from benchmark.results import check_writable

    if args.upload:
        try:
            defs = json.loads(args.upload.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{args.upload}: not a definitions file of `bench dashboard` ({err})") from err
        if any("regularizer" not in e for t in defs.get("tasks", []) for e in t.get("effects", [])):
            raise ConfigError(f"{args.upload}: written by an older `bench dashboard` (its effects name no "
                              "regularizer); run `bench dashboard` again to rebuild it")
        for url in wandb_dashboard.publish(defs, args.wandb_entity):
            print(url)
        return 0
    mode = wandb_log.resolve_mode(args.wandb_mode)
    out = Path(args.out or args.results_dir / wandb_dashboard.DEFINITIONS_FILE)
    if mode != "online":  # written by rename: a folder that cannot take it fails before any reading
        check_writable(out.parent, "give --out a file in a folder you can write", replaced=(out.name,))
    defs = wandb_dashboard.definitions(args.results_dir, args.wandb_project, args.wandb_entity, args.runs_dir)
    if mode == "online":
        for url in wandb_dashboard.publish(defs, args.wandb_entity):
            print(url)
        return 0
    # The definitions are a local file, so WANDB_MODE=disabled still gets them: nothing is sent either way.
    path = wandb_dashboard.write_offline(defs, out)
    if mode == "disabled":  # no run logged to W&B, so there is nothing to sync: say how to get there instead
        print(f"W&B disabled by WANDB_MODE=disabled, nothing sent: the workspace and report definitions are in "
              f"{path}; they need runs logged to W&B (`--logger csv,wandb` without WANDB_MODE=disabled), then "
              f"`bench dashboard --upload {path}`")
        return 0
    print(f"W&B offline: the workspace and report definitions are in {path}; once the runs are uploaded "
          f"(`wandb sync <run>/wandb/offline-run-*`), publish them with `bench dashboard --upload {path}`")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.dashboard import PAGE_FILE, build_page
    from benchmark.leaderboard import EFFECTS_FILE, LEADERBOARD_FILE, MARKDOWN_FILE, build, compute
    from benchmark.results import check_writable

    # Every file the board writes replaces the last one by rename: a folder that cannot take them
    # (read-only, or shared with the sticky bit and another user's files) fails here, in one line.
    folder = Path(args.results_dir)
    written = (LEADERBOARD_FILE, EFFECTS_FILE, MARKDOWN_FILE, PAGE_FILE, *(p.name for p in folder.glob("*.png")))
    check_writable(folder, "give --results-dir a folder you can write", replaced=written)
    board = compute(args.results_dir)
    path = build(args.results_dir, board=board)
    print((path.parent / MARKDOWN_FILE).read_text(), end="")
    print(f"dashboard: {build_page(args.results_dir, board)}")
    if "wandb" in args.logger:
        from benchmark import wandb_log

        wandb_log.log_leaderboard(path, args.runs_dir / "leaderboard", project=args.wandb_project,
                                  mode=args.wandb_mode, entity=args.wandb_entity)
    return 0


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = {"run": cmd_run, "fetch": cmd_fetch, "align": cmd_align, "list": cmd_list, "presets": cmd_list,
               "leaderboard": cmd_leaderboard, "ensemble": cmd_ensemble, "eval": cmd_eval, "translate": cmd_translate,
               "caption": cmd_caption, "phones": cmd_phones, "score": cmd_score, "sample": cmd_sample,
               "dashboard": cmd_dashboard}
    try:
        return handler[args.command](args)
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
