"""Dry runs of every `paper` preset on CPU: the paper's model sizes, optimizer, schedule, loss scale
and gradient clip, for a few steps under DDP with 2 gloo ranks, on a few hundred real items.

    python scripts/dry_run_paper.py --data-root ../shared/data --steps 8 --out results/dry-runs.md

Per step: the learning rate, the training loss as the optimizer sees it, its mean per word (or
frame) and their ratio (the loss scale), the gradient norm before clipping and whether the clip
acted, and the step's wall time; per preset: parameters, peak memory of a rank, and whether the
loss per word fell over the first steps. Each preset runs in its own pair of processes (this script
with --one), so one preset's failure or memory does not touch the next.

What stands in for the paper's data (none of which is on a CPU machine), in the real formats:
    ptb/*            the real PTB (its full 10k vocabulary), only the first steps
    speech/paper     the NLTK TIMIT sample (LDC TIMIT's format and 61 phones) for LDC TIMIT
    translation      newstest2011's 3,003 pairs for WMT'14's ~36M; both vocabularies filled up to
                     the paper's 160k / 80k words with unused entries, so embeddings and softmax
                     have the paper's sizes (the cost of a step depends on them, not on the words).
                     Batches hold one source length each, so on 3,003 pairs they hold fewer than
                     128 sentences: the table gives each step's count, and the cost is per token
    captioning       coco-mini's 239 COCO images for COCO 2014 (Karpathy's split is COCO's own
                     ids, absent here: a hashed split); GoogLeNet with random weights, since
                     torchvision's download is out of reach offline (the LSTM trains on frozen
                     features either way); the vocabulary filled up to 10,000 words (~COCO's at
                     min_count 5)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.callbacks import batch_tokens  # noqa: E402
from benchmark.config import apply_dropout, load_preset  # noqa: E402
from benchmark.runner import make_datamodule  # noqa: E402
from tasks import registry  # noqa: E402

PRESETS = ("ptb/small", "ptb/medium", "ptb/large", "speech/paper", "translation/paper", "captioning/paper")
TINY: dict[str, dict[str, Any]] = {
    "speech/paper": {"corpus": "timit-sample", "valid_speakers": ["dr1-fvmh0", "dr4-maeb0", "dr7-fblv0"],
                     "test_speakers": ["dr2-marc0", "dr5-ftlg0", "dr8-mbcg0"]},
    "translation/paper": {"train": {"src": "wmt/dev/newstest2011.en", "ref": "wmt/dev/newstest2011.fr"},
                          "valid": {"src": "wmt/dev/newstest2012.en", "ref": "wmt/dev/newstest2012.fr"},
                          "test": {"src": "wmt/dev/newstest2013.en", "ref": "wmt/dev/newstest2013.fr"},
                          "test_sets": {}},
    "captioning/paper": {"images": "coco-mini/images", "captions": "coco-mini/captions.json", "karpathy_split": None,
                         "split": {"valid": 0.1, "test": 0.1}, "pretrained": False, "bad_records": None},
}
# The paper's training sets by their published sizes, for the cost of a full run: items per epoch
# (sentence pairs, captions, utterances) and where the count comes from. A full epoch's tokens are
# the items times the tokens per item measured on the stand-in data above (PTB: counted exactly).
FULL_DATA = {
    "translation/paper": (36_000_000, "WMT'14 En-Fr pairs, as Vaswani et al. 2017 count them; "
                                      "Sutskever et al.'s 12M selection would take a third"),
    "captioning/paper": (586_363, "COCO 2014 training captions an epoch, as im2txt counts them"),
    "speech/paper": (3_696, "LDC TIMIT training utterances without the SA sentences"),
}
CAPTION_VOCAB = 10_000  # words: about COCO's at min_count 5


def filled(itos: list[str], size: int) -> list[str]:
    """The vocabulary padded with entries no data holds, up to the paper's size."""
    return [*itos, *(f"<unused{i}>" for i in range(size - len(itos)))]


class StepProbe(L.Callback):
    """Rank 0's view of each optimizer step (the gradient is already averaged over the ranks)."""

    def __init__(self, clip: float | None) -> None:
        self.clip, self.steps, self._t0 = clip, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        self.steps.append({"step": trainer.global_step + 1, "lr": optimizer.param_groups[0]["lr"], "grad_norm": norm,
                           "clipped": self.clip is not None and norm > self.clip})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        self.steps[-1].update(seconds=time.perf_counter() - self._t0, loss=float(m["train_loss"]),
                              nll=float(m["train_nll"]), scale=float(m["loss_scale"]),
                              tokens=batch_tokens(batch) * trainer.world_size, items=batch_items(batch))


def batch_items(batch: Any) -> int:
    """Rank 0's sentences, captions, utterances or PTB columns in this batch."""
    if isinstance(batch, dict):
        return int(next(batch[k] for k in ("tgt_out", "cap_out", "labels") if k in batch).size(1))
    return int(batch[-1].size(1))


def one(name: str, data_root: Path, steps: int, out: Path) -> None:
    """Train `name` for `steps` steps on this process and its DDP twin; rank 0 writes `out`."""
    task, preset_name = name.split("/")
    preset = load_preset(task, preset_name)
    apply_dropout(preset, preset.default_dropout)  # as the paper ran it (ptb/small: none)
    preset.data.update(TINY.get(name, {}))
    preset.data = {k: v for k, v in preset.data.items() if v is not None}
    L.seed_everything(0, verbose=False)
    dm = make_datamodule(preset, data_root)
    dm.setup("fit")
    kwargs = dm.model_kwargs()
    if name == "translation/paper":
        kwargs["src_vocab_size"] = preset.data["src_vocab"]
        kwargs["tgt_itos"] = filled(kwargs["tgt_itos"], preset.data["tgt_vocab"])
    elif name == "captioning/paper":
        kwargs["itos"] = filled(kwargs["itos"], CAPTION_VOCAB)
    model = registry.load_class(preset.module)(**preset.model, **kwargs)
    # Before fit: afterwards the DataModule knows the trainer, and a rank-aware sampler would
    # count this rank's share only.
    per_item = None if task == "ptb" else mean_tokens(dm)
    clip = preset.trainer.get("gradient_clip_val")
    probe = StepProbe(clip)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=steps, limit_val_batches=0,
                        log_every_n_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[probe], gradient_clip_val=clip,
                        gradient_clip_algorithm=preset.trainer.get("gradient_clip_algorithm", "norm"),
                        use_distributed_sampler=not registry.get(task).can(registry.Can.OWN_RANK_LAYOUT))
    trainer.fit(model, datamodule=dm)
    if task == "ptb":  # the real corpus: one epoch's tokens exactly
        epoch_tokens, source = trainer.num_training_batches * preset.data["batch_size"] * preset.data["bptt"], \
            "PTB's training text, counted"
    else:
        items = FULL_DATA[name][0]
        epoch_tokens, source = items * per_item, f"{items:,} ({FULL_DATA[name][1]}) x {per_item:.1f} tokens each"
    if trainer.global_rank == 0:
        vocab = {k: len(v) if isinstance(v, list) else v for k, v in kwargs.items()
                 if k in ("vocab_size", "src_vocab_size", "tgt_itos", "itos", "num_classes")}
        out.write_text(json.dumps({
            "preset": name, "model": preset.model, "batch_size": preset.data.get("batch_size"),
            "bptt": preset.data.get("bptt"), "sizes": vocab, "clip": clip,
            "params": sum(p.numel() for p in model.parameters()),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "loss_scale_rule": getattr(model, "loss_scale", None), "steps": probe.steps,
            "epochs": preset.trainer["max_epochs"], "epoch_tokens": epoch_tokens, "epoch_source": source}))


def mean_tokens(dm: L.LightningDataModule) -> float:
    """Target tokens (words, frames) per training item of the stand-in data, as the loss counts them
    (on one process: every training batch)."""
    data = dm.train_dataloader().dataset
    return sum(batch_tokens(b) for b in dm.train_dataloader()) / len(data)


def table(r: dict) -> list[str]:
    m, s = r["model"], r["steps"]
    falls = statistics.mean(x["nll"] for x in s[-2:]) < s[0]["nll"]
    timed = [x["seconds"] for x in s[1:]] or [s[0]["seconds"]]
    lines = [f"## {r['preset']}", "",
             f"{m.get('num_layers')} x {m.get('hidden_size')} units, dropout {m.get('dropout')}, "
             f"{r['params'] / 1e6:.1f}M parameters, sizes {r['sizes']}, batch {r['batch_size']}"
             + (f" x {r['bptt']} steps" if r.get("bptt") else "") + f", gradient-norm clip {r['clip']}"
             + (f", loss scale rule `{r['loss_scale_rule']}`" if r.get("loss_scale_rule") else ""), "",
             "| step | items (rank 0) | lr | loss (optimized) | loss per word/frame | loss scale | "
             "grad norm before clip | clipped | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {x['step']} | {x['items']} | {x['lr']:.4g} | {x['loss']:.3f} | {x['nll']:.4f} | {x['scale']:.2f} | "
              f"{x['grad_norm']:.3f} | {'yes' if x['clipped'] else 'no'} | {x['seconds']:.2f} |" for x in s]
    lines += ["", f"Loss per word/frame {s[0]['nll']:.4f} at step 1, {statistics.mean(x['nll'] for x in s[-2:]):.4f} "
              f"over the last two steps: **{'falls' if falls else 'does NOT fall'}**. Median step "
              f"{statistics.median(timed):.2f} s (steps 2-{len(s)}, 2 ranks on this machine); peak memory of "
              f"rank 0 {r['peak_rss_gib']:.2f} GiB.", ""]
    rate = sum(x["tokens"] for x in s[1:]) / sum(timed) if len(s) > 1 else s[0]["tokens"] / s[0]["seconds"]
    total = r["epoch_tokens"] * r["epochs"]
    lines += [f"Throughput {rate:,.0f} target tokens/s (steps 2-{len(s)}). A full run: {r['epoch_tokens']:,.0f} "
              f"tokens an epoch ({r['epoch_source']}) x {r['epochs']} epochs = {total:.3g} tokens, "
              f"**{total / rate / 86400:,.1f} days** on this machine at that rate.", ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("data"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--out", type=Path, default=None, help="Markdown file for the tables (and a .json beside it)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.one, args.data_root, args.steps, args.json)
        return 0
    torch_threads = {"OMP_NUM_THREADS": "1"}  # two ranks on two cores
    results, failed = [], []
    for name in args.presets:
        js = Path(f"/tmp/dry-run-{name.replace('/', '-')}-{os.getpid()}.json")
        cmd = [sys.executable, __file__, "--one", name, "--data-root", str(args.data_root), "--steps", str(args.steps),
               "--json", str(js)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, **torch_threads}, capture_output=True, text=True)
        if proc.returncode or not js.is_file():
            failed.append(name)
            print(f"{name}: FAILED (rc {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(js.read_text()))
        js.unlink()
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    lines = ["# Dry runs of the paper presets (CPU, 2 DDP ranks)", "",
             f"Command: `{shlex.join(['python', *sys.argv])}`, at commit "
             f"{subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], capture_output=True, text=True).stdout.strip()}"
             f", torch {torch.__version__}, {os.cpu_count()} CPUs. What stands in for each paper data set: "
             "the script's docstring.", ""]
    for r in results:
        lines += table(r)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
