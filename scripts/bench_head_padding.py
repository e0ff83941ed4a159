"""The output layer over every (T, N) position of a batch, padding included (what the translator and
the captioner train with), against the output layer over the real target words only, side by side.

Both sides train the quick preset's model (dropout on, seed 0) on the same first training batches
with Adam and norm clipping; repetitions alternate (A B, B A, ...), medians. Dropping the padding
rows before the product leaves the loss and gradients equal to float tolerance (checked on the
first batch with the masks off and printed), but not bit for bit: the weight gradient's sums run
over another row count. Measured for issue 17 and not adopted (README, "Speed").

    python scripts/bench_head_padding.py --data-root ../shared/data --out results/throughput-head-padding.csv
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.config import load_preset  # noqa: E402
from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_label, git_commit  # noqa: E402
from tasks import registry  # noqa: E402


def decoder_outputs(task: str, model) -> Callable[[dict], Tensor]:
    """(T, N, H) what the output layer reads, teacher-forced, as the task's forward computes it."""
    if task == "translation":
        def out(b: dict) -> Tensor:
            start = model.encode(b["src"], b["src_lengths"])
            y, _ = model.decoder(model.emb(b["tgt_in"]), start[:2])
            return model.attend(y, start)
    else:
        def out(b: dict) -> Tensor:
            img = model.img_proj(model.features(b))[b["cap_image"]].unsqueeze(0)
            y, _ = model.decoder(torch.cat([img, model.emb(b["cap_in"])]))
            return y[1:]  # the output at the image step predicts nothing
    return out


def measure(task: str, data_root: Path, batches: int, reps: int) -> dict[str, object]:
    spec, preset = registry.get(task), load_preset(task, "quick")
    torch.manual_seed(0)
    dm = registry.load_class(spec.datamodule)(data_root, **preset.data)
    dm.setup("fit")
    data = list(itertools.islice(dm.train_dataloader(), batches))
    torch.manual_seed(0)
    model = registry.load_class(spec.module)(**preset.model, **dm.model_kwargs()).train()
    outputs, pad, key = decoder_outputs(task, model), model.vocab.pad, model.targets_key

    def all_positions(b: dict) -> Tensor:
        return F.cross_entropy(model.head(outputs(b)).flatten(0, 1), b[key].flatten(), ignore_index=pad,
                               reduction="sum") / b["num_tokens"]

    def real_words(b: dict) -> Tensor:
        real = b[key] != pad
        return F.cross_entropy(model.head(outputs(b)[real]), b[key][real], reduction="sum") / b["num_tokens"]

    model.eval()  # the equality check without dropout masks
    head = list(model.head.parameters())

    def loss_and_grads(fn: Callable[[dict], Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        loss = fn(data[0])
        return loss.detach(), torch.autograd.grad(loss, head)
    (la, ga), (lr, gr) = loss_and_grads(all_positions), loss_and_grads(real_words)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)

    def seconds(loss_fn: Callable[[dict], Tensor]) -> float:
        t0 = time.perf_counter()
        for b in data:
            loss = loss_fn(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        return time.perf_counter() - t0

    seconds(all_positions)  # warm-up
    sides = {"all_positions": all_positions, "real_words": real_words}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for rep in range(reps):
        for name in (list(sides) if rep % 2 == 0 else list(sides)[::-1]):
            times[name].append(seconds(sides[name]))
    med = {k: statistics.median(v) for k, v in times.items()}
    real = sum(int((b[key] != pad).sum()) for b in data)
    return {"task": task, "preset": "quick", "vocab": len(model.vocab), "batches": batches,
            "real_share": f"{real / sum(b[key].numel() for b in data):.3f}",
            "loss_abs_diff": f"{abs(la - lr).item():.2e}",
            "head_grad_max_abs_diff": f"{max((a - b).abs().max().item() for a, b in zip(ga, gr)):.2e}",
            **{f"{k}_s": f"{v:.2f}" for k, v in med.items()},
            **{f"{k}_runs": " ".join(f"{x:.2f}" for x in v) for k, v in times.items()},
            "speedup": f"{med['all_positions'] / med['real_words']:.3f}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=["translation", "captioning"], choices=["translation", "captioning"])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for task in args.tasks:
        rows.append({**measure(task, args.data_root, args.batches, args.reps), "threads": args.threads,
                     "device": device_label(torch.device("cpu")), "git_commit": git_commit(),
                     "command": shlex.join(["python", *sys.argv])})
        print(rows[-1], flush=True)
    if args.out:
        write_rows_atomic(args.out, rows)


if __name__ == "__main__":
    main()
