"""Penn Treebank (Mikolov's word-level version) as consecutive BPTT windows.

The token stream of a split is cut into B contiguous columns, one per batch row, and read top to
bottom in windows of `bptt` steps, in order, so a batch row's hidden state can flow from one window to
the next (pytorch/examples' batchify):

    stream: a b c d e f g h i j k l m n o p q r s t u v w x    (B = 4 -> 6 tokens a column)

              col0 col1 col2 col3
        t=0 [  a    g    m    s  ]   window 0 (bptt=2): x = rows 0-1, y = rows 1-2
        t=1 [  b    h    n    t  ]
        t=2 [  c    i    o    u  ]   window 1:          x = rows 2-3, y = rows 3-4
        t=3 [  d    j    p    v  ]
        t=4 [  e    k    q    w  ]   window 2 (eval only, shorter): x = row 4, y = row 5
        t=5 [  f    l    r    x  ]

Under DDP each rank takes B / world_size adjacent columns, so the global batch stays B as in the
paper and every column is read by exactly one rank. Windows are never shuffled and no distributed
sampler touches them (the datasets are iterable, which Lightning leaves alone).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from datamodules import download as fetch
from datamodules import sources
from datamodules.base import TaskDataModule
from datamodules.vocab import WordVocab
from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
EOS, UNK = "<eos>", "<unk>"
# The test split in the B-column training layout (`test_ppl_b<B>`); no test set named from a file
# (letters, digits, _) can take this name.
COLUMNS_STREAM = "test:columns"
EVAL_WINDOW_TOKENS = 2048  # tokens per evaluation window (all columns): 80 MB of logits at 10,000 words



def read_tokens(path: Path) -> list[str]:
    """One sentence a line, words split on whitespace, `<eos>` closing every line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); expected Mikolov's ptb.*.txt") from err
    tokens = tokens_of(text)
    if not any(tok != EOS for tok in tokens):
        raise DataError(f"{path}: no words in this split; the file is empty or blank")
    return tokens


def tokens_of(text: str) -> list[str]:
    """PTB's reading of text: whitespace-separated words, `<eos>` closing every line (blank ones too)."""
    return [tok for line in text.splitlines() for tok in (*line.split(), EOS)]


def encode_split(vocab: WordVocab, tokens: list[str], source: Path) -> Tensor:
    """A split's tokens -> ids under the training vocabulary; words it lacks become <unk>, counted."""
    n_unk = sum(1 for tok in tokens if tok not in vocab.stoi)
    ids = torch.tensor(vocab.encode(tokens, source), dtype=torch.long)
    if n_unk:
        log.warning("%s: %d out-of-vocabulary tokens mapped to %s", source, n_unk, UNK)
    return ids


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """(N,) stream -> (N // B, B): column b is the b-th contiguous slice; the ragged tail is dropped."""
    n = ids.numel() // batch_size
    if n < 2:
        raise DataError(f"{ids.numel()} tokens cannot fill {batch_size} columns of at least 2 tokens")
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()


class BPTTWindows(IterableDataset):
    """Consecutive (x, y) windows of shape (T, B_local) over columns [col0, col1) of `grid`."""

    def __init__(self, grid: Tensor, bptt: int, col0: int, col1: int, drop_last: bool) -> None:
        self.grid, self.bptt, self.drop_last = grid[:, col0:col1], bptt, drop_last

    def __len__(self) -> int:
        steps = self.grid.size(0) - 1  # the last row is only ever a target
        return steps // self.bptt if self.drop_last else -(-steps // self.bptt)

    def __iter__(self):
        for i in range(len(self)):
            start = i * self.bptt
            end = min(start + self.bptt, self.grid.size(0) - 1)
            yield self.grid[start:end], self.grid[start + 1 : end + 1]


class PTBDataModule(TaskDataModule):
    """Reads `ptb.{train,valid,test}.txt` from `data_root/ptb/` (downloading them if absent)."""

    # Valid is read in the training batch's columns and test in one, each column's state carried:
    # another batch would read valid another way and give another perplexity than the run's.
    eval_batch_key = None


    def __init__(
        self,
        data_root: str | Path = "data",
        batch_size: int = 20,
        bptt: int = 35,
        train_tokens: int | None = None,
        download: bool = True,
        test_sets: dict[str, str] | None = None,
        test_only: bool = False,
    ) -> None:
        """`test_sets`: name -> a text file in PTB's format, scored as `test_<name>_ppl` like the test
        split (one column); `test_only`: those alone, with the vocabulary from a checkpoint."""
        super().__init__()
        self.keep_settings()
        if batch_size < 1 or bptt < 1:
            raise DataError(f"batch_size and bptt must be positive, got {batch_size} and {bptt}")
        self.data_root, self.batch_size, self.bptt = Path(data_root), batch_size, bptt
        self.train_tokens, self.allow_download = train_tokens, download
        self.test_sets, self.test_only = dict(test_sets or {}), test_only
        self.vocab: WordVocab | None = None
        self.ids: dict[str, Tensor] = {}

    def _path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.data_root / p

    @property
    def folder(self) -> Path:
        return self.data_root / sources.PTB.name

    def data_files(self) -> list[Path]:
        """What the run reads: the settings hash covers their names and sizes."""
        extra = [self._path(p) for p in self.test_sets.values()]
        return extra if self.test_only else [self.folder / n for n in sources.PTB.sha256] + extra

    def prepare_data(self) -> None:
        if self.test_only:
            return
        missing = [n for n in sources.PTB.sha256 if not (self.folder / n).is_file()]
        if missing and not self.allow_download:
            raise DataError(f"{self.folder}: missing {', '.join(missing)}; run `bench fetch ptb` or fix --data-root")
        if missing:
            fetch.download(sources.PTB, self.data_root)

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        files = {} if self.test_only else {s: self.folder / f"ptb.{s}.txt" for s in SPLITS}
        files.update({f"test_{name}": self._path(path) for name, path in self.test_sets.items()})
        tokens = {s: read_tokens(path) for s, path in files.items()}
        if self.restored:
            self.vocab = WordVocab(self.restored["itos"], specials=())
        elif self.test_only:
            raise DataError("test_only needs the vocabulary of a trained model (load_state_dict)")
        else:
            self.vocab = WordVocab.build([tokens["train"]], specials=())  # <unk> and <eos> are PTB's own words
        self.ids = {s: encode_split(self.vocab, t, files[s]) for s, t in tokens.items()}
        if self.train_tokens is not None and "train" in self.ids:
            self.ids["train"] = self.ids["train"][: self.train_tokens]
        for split, ids in self.ids.items():
            if split.startswith("test_") and ids.numel() >= 2:
                continue  # read as one column, like the test split
            if ids.numel() < 2 * self.batch_size:
                if split == "train" and self.train_tokens is not None and len(tokens["train"]) > self.train_tokens:
                    raise DataError(f"data.train_tokens={self.train_tokens}: the first {ids.numel()} tokens of "
                                    f"{files[split]} are fewer than 2 per column for batch_size {self.batch_size}; "
                                    f"raise it")
                raise DataError(f"{files[split]}: {ids.numel()} tokens, fewer than 2 per column for batch_size "
                                f"{self.batch_size}")

    def learned(self) -> dict:
        return {"itos": self.vocab.itos} if self.vocab is not None else {}

    def stream_names(self) -> list[str]:
        own = [] if self.test_only else ["test", COLUMNS_STREAM]
        return own + [f"test_{name}" for name in self.test_sets]

    def model_kwargs(self) -> dict:
        """What the model must know about the data."""
        assert self.vocab is not None, "call setup() first"
        return {"vocab_size": len(self.vocab)}

    # -- distributed layout -------------------------------------------------------------------------
    def _columns(self, batch_size: int) -> tuple[int, int]:
        rank, world = self.rank_world()
        if batch_size % world:
            raise DataError(
                f"batch_size {batch_size} is not divisible by the world size {world}: the paper's global "
                f"batch is split by columns across ranks; use --devices/--num-nodes that divide it"
            )
        per_rank = batch_size // world
        return rank * per_rank, (rank + 1) * per_rank

    def _loader(self, split: str, batch_size: int, drop_last: bool, replicate: bool = False) -> DataLoader:
        grid = batchify(self.ids[split], batch_size)
        col0, col1 = (0, batch_size) if replicate else self._columns(batch_size)
        # Evaluation carries the state from window to window and trains nothing, so its windows can
        # be long (the same numbers up to float rounding) and the stream is read in fewer steps: the
        # test's one column takes 40 windows instead of 4,100.
        bptt = self.bptt if split == "train" else max(self.bptt, EVAL_WINDOW_TOKENS // batch_size)
        return DataLoader(BPTTWindows(grid, bptt, col0, col1, drop_last), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        # The paper drops the last partial window in training; every step sees a full (bptt, B) block.
        return self._loader("train", self.batch_size, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.batch_size, drop_last=False)

    def test_dataloader(self) -> list[DataLoader]:
        # 0: the paper's protocol, the whole stream as one column (every rank scores all of it, so the
        #    synced mean is the same number); 1: the training layout with B columns, for comparison.
        own = [] if self.test_only else [
            self._loader("test", 1, drop_last=False, replicate=True),
            self._loader("test", self.batch_size, drop_last=False),
        ]
        return own + [self._loader(f"test_{name}", 1, drop_last=False, replicate=True) for name in self.test_sets]
