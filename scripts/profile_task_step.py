"""Where each quick preset's training step spends its time: what `make bench`'s budget is up against.

    python scripts/profile_task_step.py --data-root ../shared/data --out results/archive/profile-task-steps-xeon-2026-12-04/profile.md

For each task the quick preset's module and DataModule are built as `bench run` builds them (the
preset's dropout on, seed 0), and the step is the module's own `training_step` loss, backward, the
preset's gradient-norm clip and the module's own optimizer, outside Lightning. Four tables a task:

1. the step's phases by the clock (no profiler), and the epoch that many steps make;
2. the operators by self CPU time under torch.profiler;
3. the other implementations torch offers of the same optimizer (for-loop, the default on CPU;
   `foreach`; `fused`), each timed on the same gradients and compared bit for bit with the default
   after `--opt-steps` updates. One that is faster but not bit-identical would change the numbers
   behind every committed row of the same settings hash, which the hash cannot see (it covers
   settings, not code);
4. the dropout masks drawn by torch's own `bernoulli_` against tasks/nn/masks.py's `uniform < keep`,
   side by side (the same steps from the same state and seed, alternating repetitions), with a
   check that every loss and weight comes out the same bit for bit.

Captioning reads the image features from the feature cache (`RNNREG_CACHE_DIR`); a cold cache
computes them first, which this script does not time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import allocator  # noqa: E402
from benchmark.config import apply_dropout, load_preset  # noqa: E402
from benchmark.runner import git_commit, make_datamodule  # noqa: E402
from tasks import registry  # noqa: E402
from tasks.nn import masks  # noqa: E402

PHASES = ("forward and loss", "backward", "clip", "optimizer")


def build(task: str, data_root: Path, dropout: str = "on"):
    """The quick preset's module, DataModule and optimizer for one arm (`--dropout on|off`), seed 0,
    as `bench run` makes them."""
    preset = load_preset(task, "quick")
    apply_dropout(preset, dropout)
    torch.manual_seed(0)
    dm = make_datamodule(preset, data_root)
    dm.setup("fit")
    torch.manual_seed(0)
    model = registry.load_class(preset.module)(**preset.model, **dm.model_kwargs())
    model.train()
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    return preset, dm, model, opt


def clip_of(preset) -> float:
    """The preset's gradient-norm clip (inf where it names none), as `one_step` takes it."""
    return float(preset.trainer.get("gradient_clip_val") or 0) or float("inf")


def batches(dm, n: int) -> list:
    out: list = []
    while len(out) < n:  # a small training set has fewer batches than asked for
        out += list(itertools.islice(dm.train_dataloader(), n - len(out)))
    return out


def one_step(model, opt, batch, clip: float, clock: dict[str, float] | None = None) -> Tensor:
    t0 = time.perf_counter()
    loss = model.training_step(batch, 1)
    opt.zero_grad(set_to_none=True)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    t3 = time.perf_counter()
    opt.step()
    t4 = time.perf_counter()
    if clock is not None:
        for k, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            clock[k] += dt
    return loss.detach()


@contextlib.contextmanager
def masks_drawn_by(how: str):
    """"torch": every mask from torch's own bernoulli_ (as before tasks/nn/masks.py); "vectorised": as now."""
    vectorised = masks._vectorised
    if how == "torch":
        masks._vectorised = lambda t: False
    try:
        yield
    finally:
        masks._vectorised = vectorised


def masks_side_by_side(model, opt, data: list, clip: float, reps: int) -> tuple[float, float, bool]:
    """(ms a step with torch's masks, with the vectorised ones, whether every loss and weight is the
    same bit for bit): the same steps from the same state and seed, repetitions alternating."""
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    times: dict[str, list[float]] = {"torch": [], "vectorised": []}
    ends = {}
    for rep in range(reps):
        for how in ("torch", "vectorised") if rep % 2 == 0 else ("vectorised", "torch"):
            model.load_state_dict(model_state)
            opt.load_state_dict(copy.deepcopy(opt_state))
            if hasattr(model, "on_train_epoch_start"):
                model.on_train_epoch_start()  # PTB: no state carried in from the last window
            torch.manual_seed(rep)
            with masks_drawn_by(how):
                t0 = time.perf_counter()
                losses = torch.stack([one_step(model, opt, b, clip) for b in data])
                times[how].append((time.perf_counter() - t0) * 1000 / len(data))
            if rep == 0:
                ends[how] = [losses, *(p.detach().clone() for p in model.parameters())]
    same = all(torch.equal(a, b) for a, b in zip(ends["torch"], ends["vectorised"]))
    return statistics.median(times["torch"]), statistics.median(times["vectorised"]), same


def optimizer_variants(model, opt, batch, clip: float, steps: int) -> list[tuple[str, float, bool, float]]:
    """(implementation, ms per update, bit-identical to the default after `steps` updates, largest
    parameter difference) for each implementation of `opt`'s class, all from the same gradients."""
    opt.zero_grad(set_to_none=True)
    model.training_step(batch, 1).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    start = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.detach().clone() for p in model.parameters()]
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    out, default = [], None
    for name, flags in (("for-loop (the default on CPU)", {"foreach": False}), ("foreach", {"foreach": True}),
                        ("fused", {"fused": True})):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        for p, g in zip(params, grads):
            p.grad = g
        groups, i = [], 0
        for g, h in zip(opt.param_groups, hyper):
            n = len(g["params"])
            groups.append({**h, **flags, "params": params[i:i + n]})
            i += n
        try:
            o = type(opt)(groups)
        except (RuntimeError, ValueError, TypeError) as err:  # an implementation this torch lacks on CPU
            out.append((f"{name}: {err}", float("nan"), False, float("nan")))
            continue
        o.step()  # the state's first allocation is not what a step costs
        t0 = time.perf_counter()
        for _ in range(steps):
            o.step()
        ms = (time.perf_counter() - t0) * 1000 / steps
        final = [p.detach() for p in params]
        if default is None:
            default = final
        same = all(torch.equal(a, b) for a, b in zip(default, final))
        diff = max(float((a - b).abs().max()) for a, b in zip(default, final))
        out.append((name, ms, same, diff))
    return out


def profile_task(task: str, data_root: Path, steps: int, opt_steps: int, reps: int) -> list[str]:
    preset, dm, model, opt = build(task, data_root)
    clip = clip_of(preset)
    warmup = 5
    data = batches(dm, warmup + 2 * steps + 1)
    per_epoch = len(dm.train_dataloader())
    for b in data[:warmup]:
        one_step(model, opt, b, clip)
    clock = dict.fromkeys(PHASES, 0.0)
    for b in data[warmup:warmup + steps]:
        one_step(model, opt, b, clip, clock)
    ms = {k: v * 1000 / steps for k, v in clock.items()}
    step_ms = sum(ms.values())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in data[warmup + steps:warmup + 2 * steps]:
            one_step(model, opt, b, clip)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40)
    variants = optimizer_variants(model, opt, data[-1], clip, opt_steps)
    torch_ms, vectorised_ms, same = masks_side_by_side(model, opt, data[warmup:warmup + steps], clip, reps)
    lines = [f"## {task}/quick: {step_ms:.1f} ms a step, {per_epoch} steps an epoch "
             f"({step_ms * per_epoch / 1000:.1f} s of steps an epoch)\n",
             f"Model `{preset.module}`, dropout on (the preset's rates), {type(opt).__name__}, "
             f"clip {clip:g}; {steps} steps after {warmup} of warm-up.\n",
             "| phase | ms per step | share |", "|---|---:|---:|",
             *(f"| {k} | {v:.2f} | {v / step_ms:.0%} |" for k, v in ms.items()),
             f"| **step** | **{step_ms:.2f}** | |\n",
             f"Operators by self CPU time over {steps} profiled steps:\n", "```", table.rstrip(), "```\n",
             f"The same {type(opt).__name__} update, {opt_steps} times on the same gradients:\n",
             "| implementation | ms per update | bit-identical to the default | largest difference |",
             "|---|---:|---|---:|",
             *(f"| {n} | {t:.2f} | {'yes' if s else 'no'} | {d:.3g} |" for n, t, s, d in variants), "",
             f"Dropout masks drawn by torch's `bernoulli_` against `uniform < keep` (tasks/nn/masks.py), side by side: "
             f"{steps} steps from the same state and seed, {reps} alternating repetitions, medians:\n",
             "| masks | ms per step | losses and weights after the steps |", "|---|---:|---|",
             f"| torch's bernoulli_ (before) | {torch_ms:.2f} | |",
             f"| uniform < keep (now) | {vectorised_ms:.2f} | {'the same, bit for bit' if same else '**differ**'} |",
             f"| ratio | {torch_ms / vectorised_ms:.3f}x sooner | |", ""]
    print(f"{task}: masks {torch_ms:.1f} -> {vectorised_ms:.1f} ms/step, same={same}", flush=True)
    print(f"{task}: {step_ms:.1f} ms/step; " + "; ".join(f"{n.split(' ')[0]} {t:.2f} ms {'=' if s else '!='}"
                                                        for n, t, s, _ in variants), flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=["captioning", "translation", "speech", "ptb"],
                    choices=registry.names())
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--opt-steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=4, help="alternating repetitions of the masks comparison")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: the step's logging is a no-op
    allocator.keep_freed_memory()  # as `bench run` does before the first large tensor
    lines = [f"# One training step of each quick preset ({torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"commit {git_commit()})\n", f"`{shlex.join(['python', *sys.argv])}`\n"]
    for task in args.tasks:
        lines += profile_task(task, args.data_root, args.steps, args.opt_steps, args.reps)
    text = "\n".join(lines)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
