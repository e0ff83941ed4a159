"""Training tokens/s: the Lightning module under Trainer vs a plain PyTorch loop, same model and data.

Both sides train the same LanguageModel on the same PTB windows with the same thread count: SGD,
the paper's loss scale, gradient-norm clipping and truncated BPTT. The Trainer side runs with what a
real `bench run` attaches (progress bar, CSV logger, throughput and seed callbacks), minus
validation and checkpoint writing. Repetitions alternate (A B, B A, ...) so drift in machine load
and run order hit both alike; the ratio is of medians. With `--mallocs keep default`, each
measurement runs in a fresh process.
This project's loops run with freed memory kept in the process, as `bench run` sets it
(benchmark/allocator.py); `--mallocs keep default` adds them with glibc as it is (`*_glibc`), and
`--peer-mallocs default keep` the peer given the same setting (`pytorch_examples_keep`).

    python scripts/bench_throughput.py --data-root ../shared/data --presets small medium --out results/throughput.csv
    # against pytorch/examples' word_language_model (a checkout of it, given by path), side by side
    python scripts/bench_throughput.py --data-root ../shared/data --presets small --loops lightning plain \
        pytorch_examples --peer ../shared/peers/word_language_model --out results/throughput-vs-examples.csv
    # the allocator setting on both sides: this project's loops with and without, the peer as it
    # ships and with it, all in one run
    python scripts/bench_throughput.py --data-root ../shared/data --presets small --loops lightning plain \
        pytorch_examples --peer ../shared/peers/word_language_model --mallocs keep default --peer-mallocs default keep
    # a CPU with bf16 instructions (AVX512_BF16, AMX): this project's loops in bf16 autocast beside the
    # peer as it ships (fp32 always): a speed-up that changes the math, so a finding, not the target
    python scripts/bench_throughput.py --data-root ../shared/data --presets small --loops lightning plain \
        pytorch_examples --peer ../shared/peers/word_language_model --precisions 32-true bf16-mixed
    # output layer and loss under torch.compile (model.compile_loss) against the two eager steps
    python scripts/bench_throughput.py --data-root ../shared/data --presets small --loops lightning plain \
        --losses unfused compiled --reps 6
    # on a GPU: fused vs stacked backbone, fp32 vs bf16 autocast, the plain loop eagerly and as one
    # CUDA graph per step
    python scripts/bench_throughput.py --data-root DATA --accelerator cuda --loops plain graphed \
        --backbones fused stacked --precisions 32-true bf16-mixed --presets small medium large --steps 200 100 50
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import allocator  # noqa: E402
from benchmark.callbacks import EpochSeed, TokenThroughput  # noqa: E402
from benchmark.config import load_preset  # noqa: E402
from benchmark.results import write_rows_atomic  # noqa: E402
from benchmark.runner import device_name, git_commit  # noqa: E402
from datamodules.ptb import PTBDataModule  # noqa: E402
from tasks.language_model import LanguageModel, head_nll  # noqa: E402


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


LOSS = "unfused"  # set from --losses: the output layer and its cross-entropy fused (tasks/nn/fused_loss.py),
                  # compiled (model.compile_loss) or neither


def dropout_of(preset) -> float:
    """The rate the preset trains with by default (small: none, as the paper): both sides use it."""
    return preset.model["dropout"] if preset.default_dropout == "on" else 0.0


def build(preset_name: str, data_root: Path, backbone: str) -> tuple[PTBDataModule, LanguageModel, dict]:
    preset = load_preset("ptb", preset_name)
    torch.manual_seed(0)
    dm = PTBDataModule(data_root, download=False, **preset.data)
    dm.setup("fit")
    model = LanguageModel(**{**preset.model, "dropout": dropout_of(preset), "backbone": backbone,
                             "fused_loss": LOSS == "fused", "compile_loss": LOSS == "compiled"}, **dm.model_kwargs())
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
    t0 = None
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        if i == warmup + steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # The module's own loss (state carried, the paper's scale), without Lightning around it.
        # bf16 autocast around it, no loss scaling (Lightning's bf16-mixed also autocasts the
        # loss, which the .float() cross-entropy makes fp32 either way).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = model._nll((x, y), "train") * y.size(0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    sync(device)
    return steps * dm.batch_size * dm.bptt / (time.perf_counter() - t0)


def graphed_tokens_per_s(preset_name: str, data_root: Path, warmup: int, steps: int, backbone: str,
                         accelerator: str, precision: str) -> float:
    """The whole training step (forward, backward, clip, SGD, the state handed to the next window)
    captured once as a CUDA graph and replayed on each batch copied into its static inputs
    (PyTorch's whole-network capture): no kernel-launch overhead, which small models on a GPU are
    bound by. The learning rate is fixed in the graph, which a throughput measurement allows. CUDA
    only; NaN, with the reason printed, where the capture fails."""
    dm, model, trainer_cfg = build(preset_name, data_root, backbone)
    device = torch.device(accelerator)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=model.hparams.lr, foreach=True)
    clip = trainer_cfg["gradient_clip_val"]
    batches = iter(dm.train_dataloader())
    x0, y0 = next(batches)
    static_x, static_y = x0.to(device), y0.to(device)
    with torch.no_grad():
        _, (h, c) = model.rnn(model.embed(static_x))
    static_h, static_c = torch.zeros_like(h), torch.zeros_like(c)

    def step() -> torch.Tensor:
        # No autocast cache: cast copies cached during capture would be stale at replay (PyTorch's note).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed", cache_enabled=False):
            out, (h, c) = model.rnn(model.embed(static_x), (static_h, static_c))
            loss = head_nll(out, model.head.weight, model.head.bias, static_y) * static_y.size(0)  # as _nll
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        opt.step()
        static_h.copy_(h.detach())  # truncated BPTT: the next window starts from this one's state
        static_c.copy_(c.detach())
        return loss

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up before capture, on a side stream, as PyTorch's recipe asks
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients in the graph's pool
        with torch.cuda.graph(graph):
            step()
    except Exception as err:  # noqa: BLE001 (a measurement, not a run: report and go on)
        print(f"{preset_name}/{backbone}/{precision}: CUDA graph capture failed: {type(err).__name__}: {err}", flush=True)
        return float("nan")
    t0 = None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        if i == warmup + steps:
            break
        static_x.copy_(x, non_blocking=True)
        static_y.copy_(y, non_blocking=True)
        graph.replay()
    sync(device)
    return steps * dm.batch_size * dm.bptt / (time.perf_counter() - t0)


def peer_tokens_per_s(peer: Path, preset_name: str, data_root: Path, warmup: int, steps: int, threads: int,
                      malloc: str = "default", interval: int = 25) -> float:
    """pytorch/examples' word_language_model (an unmodified checkout at `peer`) training the same
    shape on the same PTB files: its own `ms/batch` log lines, the first `warmup` batches left out.
    It runs in a process of its own with the same thread count, and is stopped once enough
    intervals are logged. malloc `keep`: glibc set through GLIBC_TUNABLES as `bench run` sets its own
    (benchmark/allocator.py); `default`: as it ships."""
    preset = load_preset("ptb", preset_name)
    m, d = preset.model, preset.data
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "valid", "test"):  # its Corpus reads <data>/{train,valid,test}.txt
            Path(tmp, f"{split}.txt").symlink_to(Path(data_root, "ptb", f"ptb.{split}.txt").resolve())
        cmd = [sys.executable, "main.py", "--data", tmp, "--model", "LSTM", "--emsize", str(m["hidden_size"]),
               "--nhid", str(m["hidden_size"]), "--nlayers", str(m["num_layers"]), "--dropout", str(dropout_of(preset)),
               "--bptt", str(d["bptt"]), "--batch_size", str(d["batch_size"]), "--epochs", "1",
               "--log-interval", str(interval), "--save", str(Path(tmp, "model.pt"))]
        # Unbuffered: its log lines arrive as it writes them, so it is stopped as soon as enough are in.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        env.pop("GLIBC_TUNABLES", None)
        if malloc == "keep":
            env["GLIBC_TUNABLES"] = allocator.glibc_tunables()
        proc = subprocess.Popen(cmd, cwd=peer, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        times, skip = [], -(-warmup // interval)  # whole intervals that hold warm-up batches
        try:
            for line in proc.stdout:
                if match := re.search(r"ms/batch\s+([\d.]+)", line):
                    if skip:
                        skip -= 1
                    else:
                        times.append(float(match.group(1)))
                    if len(times) * interval >= steps:
                        break
        finally:
            proc.kill()
            proc.wait()
    if not times:
        raise RuntimeError(f"{peer}/main.py logged no ms/batch lines: {shlex.join(cmd)}")
    return d["batch_size"] * d["bptt"] / (statistics.mean(times) / 1000)


def side_name(loop: str, loss: str, malloc: str) -> str:
    """`lightning`, `plain` (the model's default loss, unfused), `lightning_fused`, `plain_compiled`...;
    `pytorch_examples`. Each name means the allocator as each side runs by default: this project's
    loops with freed memory kept (`bench run`'s setting), the peer as it ships; `_glibc` marks this
    project's loops with glibc's default, `_keep` the peer given this project's setting."""
    name = loop if loss in ("unfused", "own") else f"{loop}_{loss}"
    if loop == "pytorch_examples":
        return name + ("_keep" if malloc == "keep" else "")
    return name + ("_glibc" if malloc == "default" else "")


def measure_in_child(loop: str, loss: str, malloc: str, threads: int, peer: Path | None, *args) -> float:
    """One measurement, in a fresh process where the sides differ in malloc setting (it holds for
    a whole process, and then nothing else carries from one side to the next either)."""
    global LOSS
    torch.set_num_threads(threads)
    LOSS = loss
    if loop == "pytorch_examples":
        return peer_tokens_per_s(peer, *args[:4], threads, malloc=malloc)
    os.environ[allocator.ENV] = malloc
    allocator.keep_freed_memory()
    measure = {"lightning": lightning_tokens_per_s, "plain": plain_tokens_per_s, "graphed": graphed_tokens_per_s}
    return measure[loop](*args)


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
    ap.add_argument("--loops", nargs="+", default=["lightning", "plain"],
                    choices=("lightning", "plain", "graphed", "pytorch_examples"),
                    help="graphed: the plain loop's whole step as one CUDA graph (cuda only); pytorch_examples: "
                         "needs --peer, the CPU, fp32 and the fused backbone (its nn.LSTM)")
    ap.add_argument("--peer", type=Path, default=None,
                    help="a checkout of pytorch/examples' word_language_model (BSD; not part of this project)")
    ap.add_argument("--precisions", nargs="+", default=["32-true"], choices=("32-true", "bf16-mixed"))
    ap.add_argument("--losses", nargs="+", default=["unfused"], choices=("fused", "unfused", "compiled"),
                    help="the output layer and its cross-entropy as two steps (the model's default), fused "
                         "(model.fused_loss) or the two steps under torch.compile (model.compile_loss)")
    ap.add_argument("--mallocs", nargs="+", default=["keep"], choices=("keep", "default"),
                    help="this project's loops with freed memory kept in the process (what `bench run` sets, "
                         "benchmark/allocator.py) and/or glibc's default (`_glibc` in the column names)")
    ap.add_argument("--peer-mallocs", nargs="+", default=["default"], choices=("keep", "default"),
                    help="the peer as it ships (default) and/or given the same setting (`_keep`)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "pytorch_examples" in args.loops and not (args.peer and (args.peer / "main.py").is_file()):
        ap.error("--loops pytorch_examples needs --peer DIR holding word_language_model's main.py")
    if "pytorch_examples" in args.loops and (args.accelerator != "cpu" or args.backbones != ["fused"]):
        ap.error("--loops pytorch_examples compares on the CPU, fused backbone only (its nn.LSTM as it ships)")
    if "graphed" in args.loops and args.accelerator != "cuda":
        ap.error("--loops graphed captures CUDA graphs: it needs --accelerator cuda")

    spawn = multiprocessing.get_context("spawn")  # not fork: a fresh interpreter, nothing inherited
    isolate = len(args.mallocs) > 1  # a malloc setting holds for a whole process

    def measure(loop, loss, malloc, *run_args) -> float:
        if not isolate:  # every side in this process (fast to start: a GPU run measures many)
            return measure_in_child(loop, loss, malloc, args.threads, args.peer, *run_args)
        with ProcessPoolExecutor(1, mp_context=spawn) as child:
            return child.submit(measure_in_child, loop, loss, malloc, args.threads, args.peer, *run_args).result()

    trainer = L.Trainer(accelerator=args.accelerator, devices=1, logger=False)
    rows = []
    for preset, steps in zip(args.presets, args.steps):
        train_tokens = PTBDataModule(args.data_root, download=False, **load_preset("ptb", preset).data)
        train_tokens.setup()
        epoch_tokens = len(train_tokens.train_dataloader()) * train_tokens.batch_size * train_tokens.bptt
        for backbone, precision in [(b, p) for b in args.backbones for p in args.precisions]:
            # One loop per (loop, loss) pair; the peer has its own loss and runs once per repetition;
            # the graphed loop trains the module's default, two-step loss.
            losses = {"pytorch_examples": ["own"], "graphed": ["unfused"]}
            sides = [(loop, loss, malloc) for loop in args.loops for loss in losses.get(loop, args.losses)
                     for malloc in (args.peer_mallocs if loop == "pytorch_examples" else args.mallocs)]
            runs: dict[str, list[float]] = {side_name(*side): [] for side in sides}
            for rep in range(args.reps):  # alternate A B, B A, ... so load drift and order hit both alike
                for side in (sides if rep % 2 == 0 else sides[::-1]):
                    runs[side_name(*side)].append(measure(*side, preset, args.data_root, args.warmup, steps,
                                                          backbone, args.accelerator, precision))
            med = {loop: statistics.median(v) for loop, v in runs.items()}
            row = {"preset": preset, "backbone": backbone, "precision": precision, "threads": args.threads,
                   "steps": steps, "reps": args.reps}
            row["malloc"] = " ".join(args.mallocs)
            if "pytorch_examples" in args.loops:
                row["pytorch_examples_precision"] = "32-true"  # the peer runs as it ships, whatever `precision`
                row["pytorch_examples_malloc"] = " ".join(args.peer_mallocs)
            for loop in runs:
                row[f"{loop}_tok_s"] = f"{med[loop]:.0f}"
                row[f"{loop}_s_per_epoch"] = f"{epoch_tokens / med[loop]:.1f}"
                row[f"{loop}_runs"] = " ".join(f"{v:.0f}" for v in runs[loop])
            for kind in ("", "_glibc"):  # like against like, whichever malloc settings were measured
                if f"lightning{kind}" in med and f"plain{kind}" in med:
                    row[f"ratio_lightning{kind}_over_plain{kind}"] = f"{med[f'lightning{kind}'] / med[f'plain{kind}']:.3f}"
            if "lightning_fused" in med and "plain_fused" in med:
                row["ratio_lightning_fused_over_plain_fused"] = f"{med['lightning_fused'] / med['plain_fused']:.3f}"
            if "graphed" in med and "plain" in med:
                row["ratio_graphed_over_plain"] = f"{med['graphed'] / med['plain']:.3f}"
            for loop in ("lightning", "plain"):
                if f"{loop}_compiled" in med and loop in med:
                    row[f"ratio_{loop}_compiled_over_{loop}"] = f"{med[f'{loop}_compiled'] / med[loop]:.3f}"
            for loop in ("lightning", "plain"):
                if f"{loop}_glibc" in med and loop in med:
                    row[f"ratio_{loop}_over_{loop}_glibc"] = f"{med[loop] / med[f'{loop}_glibc']:.3f}"
            if "pytorch_examples" in med and "pytorch_examples_keep" in med:
                row["ratio_pytorch_examples_keep_over_pytorch_examples"] = (
                    f"{med['pytorch_examples_keep'] / med['pytorch_examples']:.3f}")
            for peer_side in ("pytorch_examples", "pytorch_examples_keep"):  # against the reference implementation
                if peer_side not in med:
                    continue
                for loop in (k for k in med if not k.startswith("pytorch_examples")):
                    key = f"ratio_vs_{peer_side}" if loop == "lightning" else f"{loop}_ratio_vs_{peer_side}"
                    row[key] = f"{med[loop] / med[peer_side]:.3f}"
            row.update({"device": device_name(trainer), "git_commit": git_commit(),
                        "command": shlex.join(["python", *sys.argv])})
            rows.append(row)
            if args.out:  # after every row: a run stopped by a time limit keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                write_rows_atomic(args.out, rows)
            print(f"{preset}/{backbone}/{precision}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in med.items())
                  + "".join(f", {k} {row[k]}" for k in row if "ratio" in k), flush=True)


if __name__ == "__main__":
    main()
