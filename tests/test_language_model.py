"""The LM LightningModule: loss scale, LR schedule, state carrying/reset, and end-to-end runs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from benchmark.config import load_preset
from benchmark.runner import RunOptions, make_datamodule, run, settings_hash
from datamodules.ptb import PTBDataModule
from tasks.language_model import LanguageModel
from tasks.nn.errors import BenchError, ConfigError
from tests.conftest import find_run, tiny_preset


def opts(tmp_path, data_root, **kw) -> RunOptions:
    return RunOptions(data_root=data_root, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                      **kw)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def step_losses(run_dir):
    rows = read_csv(run_dir / "csv" / "metrics.csv")
    return [float(r["train_loss"]) for r in rows if r.get("train_loss")]


@pytest.mark.parametrize("preset, expected", [
    ("small", [1, 1, 1, 1, 0.5, 0.25, 0.125]),
    ("medium", [1] * 6 + [1 / 1.2, 1 / 1.44]),
    ("large", [1] * 14 + [1 / 1.15]),
])
def test_lr_schedule_follows_the_paper(preset, expected):
    model = LanguageModel(vocab_size=10, hidden_size=4, **{k: v for k, v in load_preset("ptb", preset).model.items()
                                                          if k not in ("hidden_size",)})
    cfg = model.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in expected:
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx(expected)
    assert cfg["lr_scheduler"]["interval"] == "epoch"


def test_loss_is_summed_over_time_and_averaged_over_batch():
    torch.manual_seed(0)
    model = LanguageModel(vocab_size=11, hidden_size=8, dropout=0.0)
    x, y = torch.randint(0, 11, (6, 3)), torch.randint(0, 11, (6, 3))
    loss = model.training_step((x, y), 0)
    logits, _ = LanguageModel.forward(model, x)
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(6, 3)
    torch.testing.assert_close(loss, per_token.sum(0).mean())


def test_state_carries_across_windows_and_resets_each_epoch(data_root):
    torch.manual_seed(0)
    dm = PTBDataModule(data_root, batch_size=4, bptt=5, download=False)
    dm.setup()
    model = LanguageModel(vocab_size=len(dm.vocab), hidden_size=8, dropout=0.0).eval()
    # Reference: one pass over the whole validation grid, state flowing through.
    windows = list(dm.val_dataloader())
    x_all = torch.cat([x for x, _ in windows])
    y_all = torch.cat([y for _, y in windows])
    with torch.no_grad():
        logits, _ = model(x_all)
    ref = math.exp(F.cross_entropy(logits.flatten(0, 1), y_all.flatten()).item())
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    for _ in range(2):  # the second epoch must start from zeros again, not from the first's end
        got = trainer.validate(model, datamodule=dm, verbose=False)[0]["valid_ppl"]
        assert got == pytest.approx(ref, rel=1e-5)


def test_sanity_check_does_not_disturb_training(tmp_path, data_root):
    losses = []
    for sanity in (0, 2):
        preset = tiny_preset()
        preset.trainer.update(max_epochs=1, num_sanity_val_steps=sanity)
        o = opts(tmp_path / f"s{sanity}", data_root)
        run(preset, o)
        losses.append(step_losses(find_run(tmp_path / f"s{sanity}" / "runs", "ptb-small-dropout_on-seed0")))
    assert losses[0] == losses[1] and len(losses[0]) > 0


def test_fixed_seed_repeats_the_same_numbers(tmp_path, data_root):
    rows = []
    for i in range(2):
        rows.append(run(tiny_preset(), opts(tmp_path / str(i), data_root, seed=3)))
    for key in ("train_ppl", "valid_ppl", "test_ppl", "test_ppl_b4"):
        assert rows[0][key] == rows[1][key]
    assert step_losses(find_run(tmp_path / "0" / "runs", "ptb-small-dropout_on-seed3")) == \
        step_losses(find_run(tmp_path / "1" / "runs", "ptb-small-dropout_on-seed3"))
    other = run(tiny_preset(), opts(tmp_path / "2", data_root, seed=4))
    assert other["train_ppl"] != rows[0]["train_ppl"]


class Crash(L.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_ends_with_the_same_numbers(tmp_path, data_root):
    preset = lambda: tiny_preset(dropout=0.5)  # noqa: E731 - dropout on: masks must also match
    straight = run(preset().__class__(**{**preset().__dict__, "trainer": {**preset().trainer, "max_epochs": 3}}),
                   opts(tmp_path / "a", data_root))
    crashed = opts(tmp_path / "b", data_root, callbacks=[Crash(at_step=int(straight["steps"]) // 2 + 1)])
    p = preset()
    p.trainer["max_epochs"] = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(p, crashed)
    assert not (tmp_path / "b" / "results" / "runs.csv").exists()  # no partial results row
    ckpts = find_run(tmp_path / "b" / "runs", "ptb-small-dropout_on-seed0") / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    with pytest.raises(ConfigError, match="--resume"):  # never overwrite a run by accident
        p2 = preset()
        p2.trainer["max_epochs"] = 3
        run(p2, opts(tmp_path / "b", data_root))
    p3 = preset()
    p3.trainer["max_epochs"] = 3
    resumed = run(p3, opts(tmp_path / "b", data_root, resume=True))
    for key in ("train_ppl", "valid_ppl", "test_ppl", "test_ppl_b4", "steps", "epochs"):
        assert resumed[key] == straight[key], key
    a = torch.load(find_run(tmp_path / "a" / "runs", "ptb-small-dropout_on-seed0") / "checkpoints" / "last.ckpt",
                   weights_only=False)["state_dict"]
    b = torch.load(ckpts / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 2  # written after every epoch


def test_corrupt_checkpoint_is_named(tmp_path, data_root):
    preset = tiny_preset()
    chash = settings_hash(preset, make_datamodule(preset, data_root), {}, data_root)
    ckpt = tmp_path / "runs" / f"ptb-small-{chash}-dropout_on-seed0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BenchError, match=rf"{ckpt}: corrupt or unreadable checkpoint"):
        run(tiny_preset(), opts(tmp_path, data_root, resume=True))
    # A finished run is skipped by --resume (a sweep picks up after it), its row not written twice.
    ckpt.unlink()
    (ckpt.parent.parent / "result.json").write_text('{"row": {"task": "ptb", "test_ppl": "99.0"}, "data": {}}')
    assert run(tiny_preset(), opts(tmp_path, data_root, resume=True)) == {"task": "ptb", "test_ppl": "99.0",
                                                                            "skipped": True}
    assert not (tmp_path / "results" / "runs.csv").exists()
    with pytest.raises(BenchError, match="already holds an earlier run: pass --resume"):
        run(tiny_preset(), opts(tmp_path, data_root))
    # One finished at code that differs from today's is still not rerun, but it is said so.
    (ckpt.parent.parent / "result.json").write_text('{"row": {"git_commit": "0123456789ab"}, "data": {}}')
    assert run(tiny_preset(), opts(tmp_path, data_root, resume=True))["skipped"] == "older code"


class _RunsCode:
    """Unpickling this calls `Path.touch` on `marker`: what a malicious shared checkpoint would do."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path, data_root):
    from benchmark.checkpoints import check_checkpoint
    from benchmark.ensemble import run_ensemble

    marker = tmp_path / "code-ran"
    folder = tmp_path / "shared-run"
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "loops": {}, "epoch": 1, "payload": _RunsCode(marker)},
               folder / "checkpoints" / "last.ckpt")
    (folder / "result.json").write_text('{"row": {"task": "ptb", "preset": "small"}, "data": {}}')
    with pytest.raises(BenchError, match="beyond tensors and plain data, which loading would execute; refused"):
        check_checkpoint(folder / "checkpoints" / "last.ckpt")
    with pytest.raises(BenchError, match="refused"):
        run_ensemble("ptb", [folder, folder], data_root, tmp_path / "results")
    assert not marker.exists()
    torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)  # the payload is live: unsafe loading runs it
    assert marker.exists()


def test_interrupted_run_writes_no_row(tmp_path, data_root):
    import signal

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl+C while it shuts down
    class Interrupt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            raise KeyboardInterrupt

    try:
        with pytest.raises(BenchError, match="interrupted.*--resume"):
            run(tiny_preset(), opts(tmp_path, data_root, callbacks=[Interrupt()]))
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not (tmp_path / "results" / "runs.csv").exists()


@pytest.mark.parametrize("when", ["a batch", "the epoch's end"])
def test_a_run_stopped_by_sigterm_while_testing_ends_interrupted_not_finished(tmp_path, data_root, when):
    """SIGTERM (a cluster's time limit, `kill`) reaches Lightning's loops as SIGTERMException, a
    SystemExit of status 0, and only between batches: either way the run ends as interrupted, with
    no row, and the sweep exits non-zero."""
    class Sigterm(L.Callback):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            if when == "a batch":
                trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets

        def on_test_epoch_end(self, trainer, pl_module):
            trainer._signal_connector.received_sigterm = True

    preset = tiny_preset()
    preset.trainer.update(max_epochs=1, limit_val_batches=2, limit_test_batches=3)
    with pytest.raises(BenchError, match="stopped while testing.*--resume to test it"):
        run(preset, opts(tmp_path, data_root, callbacks=[Sigterm()]))
    assert not (tmp_path / "results" / "runs.csv").exists()


def test_a_best_checkpoint_last_ckpt_does_not_know_is_removed_on_resume(tmp_path):
    from benchmark.runner import _best_epoch, _drop_orphan_best

    for name in ("best-epoch004.ckpt", "best-epoch006.ckpt", "last.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    # last.ckpt is epoch 5's: its checkpoint callback's best is epoch 4; epoch 6's best was saved
    # by an attempt killed before it wrote last.ckpt.
    last = {"callbacks": {"ModelCheckpoint{'monitor': 'valid_ppl'}": {"best_model_path": "/elsewhere/best-epoch004.ckpt"},
                          "TokenThroughput": {"tokens": 10}}}
    _drop_orphan_best(tmp_path, last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch004.ckpt", "last.ckpt"]
    _drop_orphan_best(tmp_path, {})  # killed before its first last.ckpt: every best-* is the dead attempt's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    class Best:
        best_model_path = "x/best-epoch006-v1.ckpt"
    assert _best_epoch(Best()) == 7


def test_the_best_checkpoint_of_a_folder_is_its_latest_save_of_the_latest_epoch(tmp_path):
    from benchmark.trained import checkpoint_path

    (tmp_path / "checkpoints").mkdir()
    for name in ("best-epoch007.ckpt", "best-epoch007-v1.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    assert checkpoint_path(tmp_path, "best").name == "best-epoch007-v1.ckpt"  # as text it sorts first
    (tmp_path / "checkpoints" / "best-epoch010.ckpt").write_bytes(b"x")
    assert checkpoint_path(tmp_path, "best").name == "best-epoch010.ckpt"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cpu(tmp_path, data_root, precision):
    preset = tiny_preset()
    preset.trainer.update(max_epochs=1, limit_val_batches=3, limit_test_batches=3)
    row = run(preset, opts(tmp_path, data_root, trainer={"precision": precision}))
    assert math.isfinite(float(row["test_ppl"])) and row["precision"].startswith("bf16")


def test_dropout_off_zeroes_every_rate(tmp_path, data_root):
    preset = tiny_preset()
    preset.trainer.update(max_epochs=1, limit_val_batches=2, limit_test_batches=2)
    row = run(preset, opts(tmp_path, data_root, dropout="off"))
    assert row["dropout_rate"] == "dropout=0.0" and row["dropout"] == "off"
    ckpt = torch.load(find_run(tmp_path / "runs", "ptb-small-dropout_off-seed0") / "checkpoints" / "last.ckpt",
                      weights_only=False)
    assert ckpt["hyper_parameters"]["dropout"] == 0.0


@pytest.mark.parametrize("rows", [1, 128, 300])  # within one chunk, exactly one, across chunks
def test_fused_output_layer_and_loss_is_the_unfused_math(rows):
    from tasks.nn.fused_loss import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(rows, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50)
    y = torch.randint(0, 50, (rows,))
    fused = linear_cross_entropy(h, head.weight, head.bias, y) / 7.0  # a scale, as the paper's loss has
    grads = torch.autograd.grad(fused, [h, head.weight, head.bias])
    plain = F.cross_entropy(head(h), y, reduction="sum") / 7.0
    for a, b in zip(grads, torch.autograd.grad(plain, [h, head.weight, head.bias])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-5)


def test_fused_loss_trains_to_the_same_perplexity(tmp_path, data_root):
    """A short run at a fixed seed, the output layer's loss fused and not: the same numbers to
    float tolerance (the sums run in another order), and validation never uses it."""
    rows = [run(tiny_preset(fused_loss=fused), opts(tmp_path / str(fused), data_root, seed=1)) for fused in (True, False)]
    for key in ("train_ppl", "valid_ppl", "test_ppl"):
        assert float(rows[0][key]) == pytest.approx(float(rows[1][key]), rel=1e-4), key


def test_compiled_loss_trains_to_the_same_perplexity(tmp_path, data_root):
    """The output layer and its loss under torch.compile, in a short run at a fixed seed: the same
    numbers as the eager steps to float tolerance (the compiled kernels sum in another order)."""
    rows = [run(tiny_preset(compile_loss=on), opts(tmp_path / str(on), data_root, seed=1)) for on in (True, False)]
    for key in ("train_ppl", "valid_ppl", "test_ppl"):
        assert float(rows[0][key]) == pytest.approx(float(rows[1][key]), rel=1e-4), key


def test_fused_and_compiled_loss_are_one_or_the_other():
    with pytest.raises(ValueError, match="choose one"):
        LanguageModel(vocab_size=10, hidden_size=4, fused_loss=True, compile_loss=True)


def test_evaluation_windows_only_change_how_many_steps_read_the_stream(data_root, monkeypatch):
    """Evaluation carries the state across windows, so long windows (the default, one window
    for the fixture's whole stream) and short ones (16 tokens) score the same."""
    from datamodules import ptb

    dm = PTBDataModule(data_root, batch_size=4, bptt=5, download=False)
    dm.setup()
    torch.manual_seed(0)
    model = LanguageModel(**dm.model_kwargs(), hidden_size=16).eval()

    @torch.no_grad()
    def score(loader) -> tuple[float, int]:
        state, nll, n, windows = None, 0.0, 0, 0
        for x, y in loader:
            logits, state = model(x, state)
            nll += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            n, windows = n + y.numel(), windows + 1
        return nll / n, windows

    long = [score(loader) for loader in (dm.val_dataloader(), *dm.test_dataloader())]
    monkeypatch.setattr(ptb, "EVAL_WINDOW_TOKENS", 16)
    short = [score(loader) for loader in (dm.val_dataloader(), *dm.test_dataloader())]
    for (a, wa), (b, wb) in zip(long, short):
        assert a == pytest.approx(b, rel=1e-5) and wb > wa


def test_a_nan_window_makes_the_perplexity_nan_not_lower():
    """A diverged window must show: torchmetrics' default drops NaN values, so a run whose every
    batch is NaN read perplexity 1.0 (text tasks) and one NaN window among finite ones read as the rest."""
    from tasks.language_model import MeanNLL
    from tasks.text_generation import WordNLL

    words = WordNLL()
    words.update(torch.tensor(10.0), torch.tensor(5))
    words.update(torch.tensor(float("nan")), torch.tensor(5))
    assert math.isnan(float(words.perplexity()))
    words.update(torch.tensor(10.0), torch.tensor(5))  # reset after reading: the next epoch is clean
    assert float(words.perplexity()) == pytest.approx(math.exp(2.0))

    mean = MeanNLL()
    mean.update(torch.tensor(1.0), weight=10)
    mean.update(torch.tensor(3.0), weight=30)  # windows weigh by their tokens: (10 + 90) / 40
    assert float(mean.compute()) == 2.5
    mean.update(torch.tensor(float("nan")), weight=20)
    assert math.isnan(float(mean.compute()))


def test_bf16_true_leaves_the_loss_sums_in_float32():
    """`--precision bf16-true` casts the whole module, torchmetrics' states with it: summed in bf16,
    2,000 windows of NLL 5.3 read as perplexity ~55 instead of ~200. Each stage's first hook puts
    them back in float32."""
    model = LanguageModel(vocab_size=11, hidden_size=8, dropout=0.0).to(dtype=torch.bfloat16)
    assert model.val_nll.total.dtype == torch.bfloat16  # what Lightning's HalfPrecision leaves
    model.on_validation_start()
    for _ in range(2000):
        model.val_nll.update(torch.tensor(5.3, dtype=torch.bfloat16), weight=700)
    assert model.val_nll.total.dtype == torch.float32
    assert float(model.val_nll.compute()) == pytest.approx(float(torch.tensor(5.3, dtype=torch.bfloat16)), rel=1e-4)
