"""Training tokens/s of each regularizer against the paper's dropout, on one PTB model, in one run.

Every side trains the same LanguageModel shape (a PTB preset's, by default `quick`: the small 2x200
model) on the same windows with the same loop: the module's own loss with its state carried, SGD,
gradient-norm clipping. Only the regularizer differs, at the rates the preset gives it
(`regularizers:`). Repetitions rotate the order (A B C, B C A, ...) so drift in machine load hits all
alike; the ratio is of medians. `path` says how the backbone ran: the LSTM kernel, or the step loop
that masks inside the recurrence need (tasks/nn/regularizers.py).

    python scripts/bench_regularizers.py --data-root ../shared/data --out results/throughput-regularizers.csv
    # on a GPU (the kernel is cuDNN there, the step loop is not)
    python scripts/bench_regularizers.py --data-root DATA --accelerator cuda --preset medium-variational --steps 100
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import config  # noqa: E402
from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_label, git_commit  # noqa: E402
from datamodules.ptb import PTBDataModule  # noqa: E402
from tasks.language_model import LanguageModel  # noqa: E402


def build(preset: config.Preset, name: str, data_root: Path, device: torch.device) -> tuple[PTBDataModule, LanguageModel]:
    preset = copy.deepcopy(preset)
    config.apply_regularizer(preset, name)
    torch.manual_seed(0)
    dm = PTBDataModule(data_root, download=False, **preset.data)
    dm.setup("fit")
    model = LanguageModel(**preset.model, **dm.model_kwargs()).to(device).train()
    return dm, model


def tokens_per_s(dm: PTBDataModule, model: LanguageModel, clip: float, warmup: int, steps: int,
                 device: torch.device) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=model.hparams.lr)
    model.state.clear()
    t0 = None
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        if i == warmup + steps:
            break
        x, y = x.to(device), y.to(device)
        loss = model._nll((x, y), "train") * y.size(0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * dm.batch_size * dm.bptt / (time.perf_counter() - t0)


def path_of(model: LanguageModel) -> str:
    reg = model.rnn.reg
    return "step loop" if reg is not None and reg.steps else "LSTM kernel"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--preset", default="quick", help="a PTB preset with a `regularizers:` section")
    ap.add_argument("--regularizers", nargs="+", default=None, help="default: the preset's, the paper's first")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.accelerator)
    preset = config.load_preset("ptb", args.preset)
    names = args.regularizers or config.regularizer_names(preset)
    built = {name: build(preset, name, args.data_root, device) for name in names}
    clip = preset.trainer["gradient_clip_val"]
    results: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            rate = tokens_per_s(*built[name], clip, args.warmup, args.steps, device)
            results[name].append(rate)
            print(f"rep {rep} {name:<12} {rate:8.0f} tokens/s", flush=True)
    base = statistics.median(results[names[0]])
    rows = []
    for name in names:
        med = statistics.median(results[name])
        p = copy.deepcopy(preset)
        config.apply_regularizer(p, name)
        rows.append({"preset": args.preset, "regularizer": name,
                     "rates": ";".join(f"{k}={v}" for k, v in config.apply_dropout(p, "on").items()),
                     "path": path_of(built[name][1]), "tokens_per_s": f"{med:.0f}",
                     f"ratio_vs_{names[0]}": f"{med / base:.3f}",
                     "reps": ";".join(f"{r:.0f}" for r in results[name]), "steps": args.steps,
                     "device": device_label(device), "commit": git_commit(),
                     "command": shlex.join(["python", "scripts/bench_regularizers.py", *sys.argv[1:]])})
        print(f"{name:<12} {rows[-1]['path']:<11} {med:8.0f} tokens/s  {med / base:.3f}x {names[0]}")
    if args.out:
        write_rows_atomic(args.out, rows, list(rows[0]))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
