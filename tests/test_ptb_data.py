"""PTB reading, vocabulary, batchify/BPTT layout, the per-rank column split, and bad data files."""

from __future__ import annotations

import hashlib
import io
import tarfile
from types import SimpleNamespace

import pytest
import torch

from datamodules.download import Dataset, download
from datamodules.ptb import EOS, BPTTWindows, PTBDataModule, batchify, encode_split, read_tokens
from datamodules.sources import PTB
from datamodules.vocab import WordVocab
from tasks.nn.errors import DataError
from tests.conftest import write_ptb


def test_read_tokens_appends_eos_per_line(tmp_path):
    f = tmp_path / "ptb.train.txt"
    f.write_text(" the cat sat \n a dog \n")
    assert read_tokens(f) == ["the", "cat", "sat", EOS, "a", "dog", EOS]


def test_batchify_matches_the_drawn_layout():
    stream = torch.arange(26)  # a..z
    grid = batchify(stream, 4)  # 6 tokens a column, y and z dropped
    assert grid.shape == (6, 4)
    assert grid[:, 1].tolist() == [6, 7, 8, 9, 10, 11]  # column 1 is g..l, contiguous
    assert grid[0].tolist() == [0, 6, 12, 18]


def test_windows_are_consecutive_and_shifted_by_one():
    grid = batchify(torch.arange(24), 4)
    train = list(BPTTWindows(grid, 2, 0, 4, drop_last=True))
    evals = list(BPTTWindows(grid, 2, 0, 4, drop_last=False))
    assert len(train) == 2 and len(evals) == 3  # the eval stream keeps the short last window
    assert [x.shape[0] for x, _ in evals] == [2, 2, 1]
    xs = torch.cat([x for x, _ in evals])
    ys = torch.cat([y for _, y in evals])
    assert torch.equal(xs, grid[:-1]) and torch.equal(ys, grid[1:])  # every token predicted once, in order


def test_vocab_from_train_only_and_unk_mapping(tmp_path):
    vocab = WordVocab.build([["b", "a", "b", "<unk>", EOS]], specials=())
    assert vocab.itos == ["b", "<eos>", "<unk>", "a"]  # most frequent first, ties alphabetical, no specials
    ids = encode_split(vocab, ["a", "zebra"], tmp_path / "ptb.valid.txt")
    assert ids.tolist() == [vocab.stoi["a"], vocab.stoi["<unk>"]]
    with pytest.raises(DataError, match="ptb.valid.txt.*'zebra'"):
        encode_split(WordVocab.build([["a", EOS]], specials=()), ["zebra"], tmp_path / "ptb.valid.txt")


def fake_rank(dm: PTBDataModule, rank: int, world: int) -> PTBDataModule:
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
    return dm


def test_columns_split_across_ranks_cover_the_global_batch(data_root):
    dm = PTBDataModule(data_root, batch_size=4, bptt=5, download=False)
    dm.setup()
    full = [x for x, _ in dm.train_dataloader()]
    halves = []
    for rank in (0, 1):
        dm.trainer = None
        halves.append([x for x, _ in fake_rank(dm, rank, 2).train_dataloader()])
    assert len(halves[0]) == len(halves[1]) == len(full)
    for f, a, b in zip(full, *halves):
        assert a.shape == (5, 2) and torch.equal(torch.cat([a, b], dim=1), f)
    # the paper's test protocol: one column, the same on every rank
    t0 = [x for x, _ in fake_rank(dm, 0, 2).test_dataloader()[0]]
    t1 = [x for x, _ in fake_rank(dm, 1, 2).test_dataloader()[0]]
    assert all(torch.equal(a, b) for a, b in zip(t0, t1)) and t0[0].shape[1] == 1


def test_batch_not_divisible_by_world_size(data_root):
    dm = PTBDataModule(data_root, batch_size=5, bptt=5, download=False)
    dm.setup()
    with pytest.raises(DataError, match="batch_size 5 is not divisible by the world size 2"):
        fake_rank(dm, 0, 2).train_dataloader()


def test_missing_files_name_the_folder_and_the_fix(tmp_path):
    dm = PTBDataModule(tmp_path, download=False)
    with pytest.raises(DataError, match=rf"{tmp_path / 'ptb'}.*ptb.train.txt.*bench fetch ptb"):
        dm.prepare_data()


def test_offline_download_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setattr("datamodules.sources.PTB", PTB.__class__(**{**PTB.__dict__, "url": "file:///nonexistent/simple-examples.tgz"}))
    dm = PTBDataModule(tmp_path, download=True)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "ptb" / "ptb.train.txt") in msg and PTB.sha256["ptb.train.txt"] in msg
    assert "simple-examples/data/ptb.test.txt" in msg
    assert not any((tmp_path / "ptb").glob("*.txt"))  # nothing half-written


@pytest.mark.parametrize(
    "content, match",
    [(b"", "no words"), (b"\n\n  \n", "no words"), (b"\xff\xfe bad bytes", "not UTF-8")],
)
def test_malformed_split_file(tmp_path, content, match):
    folder = write_ptb(tmp_path / "ptb")
    (folder / "ptb.valid.txt").write_bytes(content)
    dm = PTBDataModule(tmp_path, download=False)
    with pytest.raises(DataError, match=rf"ptb.valid.txt.*{match}|{match}"):
        dm.setup()


def test_split_too_small_for_the_batch(tmp_path):
    folder = write_ptb(tmp_path / "ptb")
    (folder / "ptb.test.txt").write_text(" a b \n")
    with pytest.raises(DataError, match="ptb.test.txt: 3 tokens, fewer than 2 per column"):
        PTBDataModule(tmp_path, batch_size=20, download=False).setup()


def test_a_split_cut_too_short_by_train_tokens_names_the_setting(tmp_path):
    write_ptb(tmp_path / "ptb")
    train = tmp_path / "ptb" / "ptb.train.txt"
    with pytest.raises(DataError, match=rf"data\.train_tokens=10: the first 10 tokens of {train} are fewer than 2 "
                                        rf"per column for batch_size 20; raise it"):
        PTBDataModule(tmp_path, batch_size=20, train_tokens=10, download=False).setup()
    train.write_text(" <unk> a \n")  # the file itself too short: it is named alone
    with pytest.raises(DataError, match=rf"{train}: 3 tokens, fewer than 2 per column"):
        PTBDataModule(tmp_path, batch_size=20, train_tokens=10, download=False).setup()


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_checks_sha256_and_extracts_atomically(tmp_path):
    payload = b" a b c \n"
    archive = tmp_path / "simple-examples.tgz"
    archive.write_bytes(_tgz({"./simple-examples/data/ptb.train.txt": payload}))
    good = Dataset("toy", archive.as_uri(), {"ptb.train.txt": "simple-examples/data/ptb.train.txt"},
                   {"ptb.train.txt": hashlib.sha256(payload).hexdigest()}, "https://example.org")
    bad = Dataset(**{**good.__dict__, "name": "toy_bad", "sha256": {"ptb.train.txt": "0" * 64}})
    with pytest.raises(DataError, match="publisher now serves other contents \\(ptb.train.txt has sha256"):
        download(bad, tmp_path / "root")
    assert not (tmp_path / "root" / "toy_bad" / "ptb.train.txt").exists()
    folder = download(good, tmp_path / "root")
    assert (folder / "ptb.train.txt").read_bytes() == payload
    archive.write_bytes(b"truncated")
    assert download(good, tmp_path / "root") == folder  # already there: nothing fetched


def test_a_download_for_one_missing_file_leaves_the_files_put_there_alone(tmp_path):
    files = {"ptb.train.txt": b" a b c \n", "ptb.valid.txt": b" b c \n"}
    archive = tmp_path / "simple-examples.tgz"
    archive.write_bytes(_tgz({f"./simple-examples/data/{n}": d for n, d in files.items()}))
    ds = Dataset("toy", archive.as_uri(), {n: f"simple-examples/data/{n}" for n in files},
                 {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}, "https://example.org")
    folder = tmp_path / "root" / "toy"
    folder.mkdir(parents=True)
    (folder / "ptb.train.txt").write_bytes(b" my own copy \n")
    download(ds, tmp_path / "root")
    assert (folder / "ptb.valid.txt").read_bytes() == files["ptb.valid.txt"]  # fetched
    assert (folder / "ptb.train.txt").read_bytes() == b" my own copy \n"  # kept: the settings hash marks it


def test_model_kwargs_from_vocabulary(data_root):
    dm = PTBDataModule(data_root, batch_size=4, bptt=5, download=False)
    dm.setup()
    assert dm.model_kwargs() == {"vocab_size": len(dm.vocab)}
    assert dm.vocab.stoi[EOS] >= 0 and isinstance(dm.ids["valid"], torch.Tensor)


def test_a_damaged_deflate_stream_in_the_archive_is_one_line_and_writes_nothing(tmp_path):
    import zipfile

    payload = b" a b c \n" * 50
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("simple-examples/data/ptb.train.txt", payload)
    data = bytearray(archive.read_bytes())
    data[30 + len("simple-examples/data/ptb.train.txt")] = 0xFF  # the member's first deflate byte: a zlib.error
    archive.write_bytes(bytes(data))
    ds = Dataset("toy", archive.as_uri(), {"ptb.train.txt": "simple-examples/data/ptb.train.txt"},
                 {"ptb.train.txt": hashlib.sha256(payload).hexdigest()}, "https://example.org")
    with pytest.raises(DataError, match=r"archive toy\.zip is corrupt or incomplete \(Error -3"):
        download(ds, tmp_path / "root")
    assert not (tmp_path / "root" / "toy" / "ptb.train.txt").exists()
