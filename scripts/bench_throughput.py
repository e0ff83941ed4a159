"""Training tokens/s: the Lightning module under Trainer vs a plain PyTorch loop, same model and data.

Both sides train the same LanguageModel on the same PTB windows with the same thread count: SGD,
the paper's loss scale, gradient-norm clipping and truncated BPTT. The Trainer side runs with what a
real `bench run` attaches (progress bar, CSV logger, throughput and seed callbacks), minus
validation and checkpoint writing. Repetitions alternate (A B, B A, ...) so drift in machine load
and run order hit both alike; the ratio is of medians.

    python scripts/bench_throughput.py --data-root ../shared/data --presets small medium --out results/throughput.csv
    # on a GPU: fused vs stacked backbone, fp32 vs bf16 autocast, plain loop only
    python scripts/bench_throughput.py --data-root DATA --accelerator cuda --loops plain \
        --backbones fused stacked --precisions 32-true bf16-mixed --presets small medium large --steps 300 200 100
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.callbacks import EpochSeed, TokenThroughput  # noqa: E402
from benchmark.config import load_preset  # noqa: E402
from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_name, git_commit  # noqa: E402
from datamodules.ptb import PTBDataModule  # noqa: E402
from tasks.language_model import LanguageModel  # noqa: E402


class StepClock(L.Callback):
    """Wall time from the start of training step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1 = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        self.t1 = time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset_name: str, data_root: Path, backbone: str) -> tuple[PTBDataModule, LanguageModel, dict]:
    preset = load_preset("ptb", preset_name)
    torch.manual_seed(0)
    dm = PTBDataModule(data_root, download=False, **preset.data)
    dm.setup("fit")
    model = LanguageModel(**{**preset.model, "backbone": backbone}, **dm.model_kwargs())
    return dm, model, preset.trainer


def lightning_tokens_per_s(preset_name: str, data_root: Path, warmup: int, steps: int, backbone: str,
                           accelerator: str, precision: str) -> float:
    dm, model, trainer_cfg = build(preset_name, data_root, backbone)
    clock = StepClock(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
            gradient_clip_val=trainer_cfg["gradient_clip_val"], gradient_clip_algorithm="norm",
            callbacks=[clock, EpochSeed(0), TokenThroughput(), TQDMProgressBar(refresh_rate=200)],
            logger=CSVLogger(tmp, name="", version="csv"), enable_model_summary=False, accelerator=accelerator,
            devices=1, use_distributed_sampler=False, precision=precision,
        )
        trainer.fit(model, datamodule=dm)
    tokens = steps * dm.batch_size * dm.bptt
    return tokens / (clock.t1 - clock.t0)


def plain_tokens_per_s(preset_name: str, data_root: Path, warmup: int, steps: int, backbone: str,
                       accelerator: str, precision: str) -> float:
    dm, model, trainer_cfg = build(preset_name, data_root, backbone)
    device = torch.device(accelerator)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=model.hparams.lr)
    clip = trainer_cfg["gradient_clip_val"]
    state, t0 = None, None
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        if i == warmup + steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # bf16 autocast around the forward pass, no loss scaling (Lightning's bf16-mixed also
        # autocasts the loss, which the .float() cross-entropy makes fp32 either way).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits, state = model(x, state)
        state = (state[0].detach(), state[1].detach())
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten()) * y.size(0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    sync(device)
    return steps * dm.batch_size * dm.bptt / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--presets", nargs="+", default=["small", "medium"])
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 40], help="timed steps per preset")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--backbones", nargs="+", default=["fused"], choices=("fused", "stacked"))
    ap.add_argument("--loops", nargs="+", default=["lightning", "plain"], choices=("lightning", "plain"))
    ap.add_argument("--precisions", nargs="+", default=["32-true"], choices=("32-true", "bf16-mixed"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    measure = {"lightning": lightning_tokens_per_s, "plain": plain_tokens_per_s}
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, logger=False)
    rows = []
    for preset, steps in zip(args.presets, args.steps):
        train_tokens = PTBDataModule(args.data_root, download=False, **load_preset("ptb", preset).data)
        train_tokens.setup()
        epoch_tokens = len(train_tokens.train_dataloader()) * train_tokens.batch_size * train_tokens.bptt
        for backbone, precision in [(b, p) for b in args.backbones for p in args.precisions]:
            runs: dict[str, list[float]] = {loop: [] for loop in args.loops}
            for rep in range(args.reps):  # alternate A B, B A, ... so load drift and order hit both alike
                for loop in (args.loops if rep % 2 == 0 else args.loops[::-1]):
                    runs[loop].append(measure[loop](preset, args.data_root, args.warmup, steps, backbone,
                                                    args.accelerator, precision))
            med = {loop: statistics.median(v) for loop, v in runs.items()}
            row = {"preset": preset, "backbone": backbone, "precision": precision, "threads": args.threads,
                   "steps": steps, "reps": args.reps}
            for loop in args.loops:
                row[f"{loop}_tok_s"] = f"{med[loop]:.0f}"
                row[f"{loop}_s_per_epoch"] = f"{epoch_tokens / med[loop]:.1f}"
                row[f"{loop}_runs"] = " ".join(f"{v:.0f}" for v in runs[loop])
            if len(med) == 2:
                row["ratio_lightning_over_plain"] = f"{med['lightning'] / med['plain']:.3f}"
            row.update({"device": device_name(trainer), "git_commit": git_commit(),
                        "command": shlex.join(["python", *sys.argv])})
            rows.append(row)
            print(f"{preset}/{backbone}/{precision}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in med.items())
                  + (f", ratio {row['ratio_lightning_over_plain']}" if len(med) == 2 else ""), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_rows_atomic(args.out, rows)


if __name__ == "__main__":
    main()
