"""Translation training tokens/s: the Lightning module under Trainer vs a plain PyTorch loop of the
same model, on the same batches, side by side.

Both train the quick preset's Translator on its Tatoeba batches (bucketed by source length, in one
fixed order) with Adam, gradient-norm clipping and the module's own loss; the Trainer side runs
with a progress bar, a CSV logger and the throughput callback, minus validation and checkpoints.
Repetitions alternate (A B, B A, ...); the ratio is of medians. Tokens are target words with <eos>.

    python scripts/bench_seq2seq_throughput.py --data-root ../shared/data --out results/throughput-seq2seq.csv
"""

from __future__ import annotations

import argparse
import itertools
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
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.callbacks import TokenThroughput  # noqa: E402
from benchmark.config import load_preset  # noqa: E402
from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_name, git_commit  # noqa: E402
from datamodules.parallel import ParallelTextDataModule  # noqa: E402
from tasks.translator import Translator  # noqa: E402


class Fixed(L.LightningDataModule):
    """The same list of batches for every side: `steps` of them, after `warmup`."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)  # each item is already a batch


def setup(data_root: Path, batches: int) -> tuple[ParallelTextDataModule, dict, list[dict]]:
    preset = load_preset("translation", "tatoeba-quick")
    torch.manual_seed(0)
    dm = ParallelTextDataModule(data_root, **preset.data)
    dm.setup("fit")
    return dm, preset, list(itertools.islice(dm.train_dataloader(), batches))


def model_of(dm: ParallelTextDataModule, preset) -> Translator:
    torch.manual_seed(0)
    return Translator(**{**preset.model, "dropout": 0.0}, **dm.model_kwargs())


class Clock(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.tokens = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()
        if batch_idx >= self.warmup:
            self.tokens += int(batch["num_tokens"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t1 = time.perf_counter()


def lightning_side(dm, preset, batches: list[dict], warmup: int) -> float:
    model, clock = model_of(dm, preset), Clock(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                            gradient_clip_val=preset.trainer["gradient_clip_val"], gradient_clip_algorithm="norm",
                            callbacks=[clock, TokenThroughput(), TQDMProgressBar(refresh_rate=200)],
                            logger=CSVLogger(tmp, name="", version="csv"), enable_model_summary=False,
                            accelerator="cpu", devices=1, use_distributed_sampler=False)
        trainer.fit(model, datamodule=Fixed(batches))
    return clock.tokens / (clock.t1 - clock.t0)


def plain_side(dm, preset, batches: list[dict], warmup: int) -> float:
    model = model_of(dm, preset).train()
    opt = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)
    clip, tokens, t0 = preset.trainer["gradient_clip_val"], 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        if i >= warmup:
            tokens += int(batch["num_tokens"])
        loss = model._loss(batch, "train")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dm, preset, batches = setup(args.data_root, args.warmup + args.steps)
    sides = {"lightning": lightning_side, "plain": plain_side}
    runs: dict[str, list[float]] = {k: [] for k in sides}
    for rep in range(args.reps):
        for name in (list(sides) if rep % 2 == 0 else list(sides)[::-1]):
            runs[name].append(sides[name](dm, preset, batches, args.warmup))
    med = {k: statistics.median(v) for k, v in runs.items()}
    row = {"task": "translation", "preset": "tatoeba-quick", "threads": args.threads, "steps": args.steps, "reps": args.reps,
           **{f"{k}_tok_s": f"{v:.0f}" for k, v in med.items()},
           **{f"{k}_runs": " ".join(f"{x:.0f}" for x in v) for k, v in runs.items()},
           "ratio_lightning_over_plain": f"{med['lightning'] / med['plain']:.3f}",
           "device": device_name(L.Trainer(accelerator="cpu", devices=1, logger=False)), "git_commit": git_commit(),
           "command": shlex.join(["python", *sys.argv])}
    print(row, flush=True)
    if args.out:
        write_rows_atomic(args.out, [row])


if __name__ == "__main__":
    main()
