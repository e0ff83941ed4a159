"""A task added from outside the project's folders: the proof that a task is a module, a DataModule,
a config folder and one `register()` call (tests/test_registry.py).

Parity of a bit string: read the bits one per time step with the dropout LSTM, say whether their
sum is odd. Data: `parity/bits.txt` under the data root, one string of 0s and 1s per line.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from datamodules.base import TaskDataModule
from tasks.base import TaskModule
from tasks.nn.backbone import DropoutLSTM
from tasks.registry import TaskSpec

SPEC = TaskSpec(
    name="parity",
    title="Parity of a bit string (a test task)",
    module="tests.tiny_task.ParityModel",
    datamodule="tests.tiny_task.ParityData",
    headline="test_acc",
    monitor=("valid_acc", "max"),
    result_keys=("train_acc", "valid_acc", "test_acc", "best_test_acc"),
    config_dir=Path(__file__).parent / "configs",
)


def write_bits(root: Path, n: int = 96, length: int = 6) -> Path:
    g = torch.Generator().manual_seed(0)
    lines = ["".join(str(int(b)) for b in torch.randint(0, 2, (length,), generator=g)) for _ in range(n)]
    path = root / "parity" / "bits.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class ParityData(TaskDataModule):
    def __init__(self, data_root: Path, file: str, batch_size: int) -> None:
        super().__init__()
        self.path, self.batch_size = Path(data_root) / file, batch_size

    def data_files(self) -> list[Path]:
        return [self.path]

    def setup(self, stage: str) -> None:
        bits = torch.tensor([[int(c) for c in line] for line in self.path.read_text().split()], dtype=torch.float)
        n = len(bits) // 4
        self.splits = {"train": bits[:2 * n], "valid": bits[2 * n:3 * n], "test": bits[3 * n:]}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        x = self.splits[split]
        return DataLoader(TensorDataset(x, x.sum(1).remainder(2).long()), batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ParityModel(TaskModule):
    def __init__(self, hidden_size: int, dropout: float, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lstm = DropoutLSTM(1, hidden_size, 1, dropout)
        self.head = torch.nn.Linear(hidden_size, 2)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        out, _ = self.lstm(x.T.unsqueeze(-1), None)  # (T, B, 1) -> (T, B, H)
        logits = self.head(out[-1])
        self.log(f"{stage}_acc", (logits.argmax(-1) == y).float().mean(), on_epoch=True, on_step=False)
        return F.cross_entropy(logits, y)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "valid")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
