"""Multi-GB downloads (COCO, WMT'14): asking first, unpacking, recording and checking sha256 —
exercised on small archives in the publishers' layouts served from file:// URLs."""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import tarfile
import threading
import zipfile

import pytest

from datamodules import download as fetch
from datamodules.captions import read_coco
from datamodules.parallel import read_corpus
from datamodules.sources import COCO2014, FLICKR8K, WMT14
from tasks.nn.errors import DataError


def coco_archives(src):
    """train2014.zip, val2014.zip, annotations_trainval2014.zip and caption_datasets.zip, tiny."""
    src.mkdir(parents=True, exist_ok=True)
    from tests.test_captioning import write_jpeg

    urls = []
    for part, ids in (("train2014", (1, 2)), ("val2014", (3,))):
        with zipfile.ZipFile(src / f"{part}.zip", "w") as z:
            for i in ids:
                write_jpeg(src / "tmp.jpg", seed=i)
                z.write(src / "tmp.jpg", f"{part}/COCO_{part}_{i:012d}.jpg")
        urls.append((src / f"{part}.zip").as_uri())
    with zipfile.ZipFile(src / "annotations_trainval2014.zip", "w") as z:
        for part, ids in (("train2014", (1, 2)), ("val2014", (3,))):
            z.writestr(f"annotations/captions_{part}.json", json.dumps({
                "images": [{"id": i, "file_name": f"COCO_{part}_{i:012d}.jpg"} for i in ids],
                "annotations": [{"image_id": i, "id": 10 * i + k, "caption": f"a photo number {i}"} for i in ids
                                for k in range(5)]}))
        z.writestr("annotations/instances_train2014.json", "{}")
    urls.append((src / "annotations_trainval2014.zip").as_uri())
    with zipfile.ZipFile(src / "caption_datasets.zip", "w") as z:
        z.writestr("dataset_coco.json", json.dumps({"images": [
            {"filename": "COCO_train2014_000000000001.jpg", "split": "train"},
            {"filename": "COCO_train2014_000000000002.jpg", "split": "restval"},
            {"filename": "COCO_val2014_000000000003.jpg", "split": "test"}]}))
        z.writestr("dataset_flickr8k.json", "{}")
    urls.append((src / "caption_datasets.zip").as_uri())
    return dataclasses.replace(COCO2014, archives=tuple(dataclasses.replace(a, url=u)
                                                        for a, u in zip(COCO2014.archives, urls)))


def test_coco_asks_first_then_unpacks_merges_and_records_sums(tmp_path):
    ds = coco_archives(tmp_path / "publisher")
    with pytest.raises(DataError, match=r"(?s)GB to download into .*coco.*train2014\.zip.*--yes"):
        fetch.download_large(ds, tmp_path / "root")
    assert not (tmp_path / "root" / "coco" / "images").exists()
    folder = fetch.download_large(ds, tmp_path / "root", yes=True)
    assert sorted(p.name for p in (folder / "images").iterdir()) == [
        "COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg", "COCO_val2014_000000000003.jpg"]
    assert (folder / "dataset_coco.json").is_file() and not (folder / "annotations" / "instances_train2014.json").exists()
    entries = read_coco(folder / "images", folder / "captions.json")
    assert len(entries) == 3 and all(len(e.captions) == 5 for e in entries)
    sums = fetch.read_sums(folder / "SHA256SUMS")
    assert set(sums) == {"train2014.zip", "val2014.zip", "annotations_trainval2014.zip", "caption_datasets.zip"}
    # A later fetch checks the kept archive against the recorded sum.
    (folder / ".downloads" / "val2014.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(DataError, match=r"val2014\.zip: sha256 .* differs from the .* recorded"):
        fetch.download_large(ds, tmp_path / "root", yes=True)


def test_a_cut_short_archive_is_one_line_and_never_becomes_the_recorded_sum(tmp_path):
    ds = coco_archives(tmp_path / "publisher")
    whole = (tmp_path / "publisher" / "train2014.zip").read_bytes()
    (tmp_path / "publisher" / "train2014.zip").write_bytes(whole[: len(whole) // 2])  # a server that stopped early
    with pytest.raises(DataError, match=r"train2014\.zip: cannot be unpacked .*delete it and fetch again"):
        fetch.download_large(ds, tmp_path / "root", yes=True)
    sums = tmp_path / "root" / "coco" / "SHA256SUMS"
    assert not sums.exists() or "train2014.zip" not in fetch.read_sums(sums)
    # Deleted and fetched again whole, it unpacks and is recorded: nothing to undo by hand.
    (tmp_path / "publisher" / "train2014.zip").write_bytes(whole)
    (tmp_path / "root" / "coco" / ".downloads" / "train2014.zip").unlink()
    folder = fetch.download_large(ds, tmp_path / "root", yes=True)
    assert "train2014.zip" in fetch.read_sums(folder / "SHA256SUMS")
    assert not list(folder.rglob(".*.part"))


@pytest.mark.parametrize("damage", ["plain tar without its end", "tgz with a flipped byte", "tgz without its trailer"])
def test_a_tar_that_tarfile_reads_quietly_is_still_caught(tmp_path, damage):
    import os

    for i in range(2):
        (tmp_path / f"f{i}").write_bytes(os.urandom(500))
    name = "a.tar" if damage.startswith("plain") else "a.tgz"
    with tarfile.open(tmp_path / name, "w" if name == "a.tar" else "w:gz") as tar:
        for i in range(2):
            tar.add(tmp_path / f"f{i}", f"corpus/f{i}")
    data = bytearray((tmp_path / name).read_bytes())
    if damage == "plain tar without its end":
        data = data[:2048]  # both members whole, then nothing: tarfile stops there without a word
    elif damage == "tgz with a flipped byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:-8]  # the gzip CRC and length
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{name}: (ends early or is damaged|cannot be unpacked) .*delete it"):
        fetch._extract(tmp_path / name, {"corpus/": "corpus"}, tmp_path / "out")


def test_a_tgz_cut_mid_member_leaves_no_cut_off_file(tmp_path):
    import os

    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(1 << 20))  # incompressible: half the .tgz is half the member
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:
        tar.add(payload, "corpus/big.bin")
    whole = (tmp_path / "a.tgz").read_bytes()
    (tmp_path / "a.tgz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"a\.tgz: (ends early or is damaged|cannot be unpacked) .*delete it"):
        fetch._extract(tmp_path / "a.tgz", {"corpus/": "corpus"}, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*big.bin*"))  # no cut-off file, and no part of one left


def test_a_fetch_that_stopped_part_way_is_known_and_a_folder_put_by_hand_is_not(tmp_path):
    ds = coco_archives(tmp_path / "publisher")
    folder = fetch.download_large(ds, tmp_path / "root", yes=True)
    assert not fetch.unfinished(ds, tmp_path / "root")
    sums = fetch.read_sums(folder / "SHA256SUMS")
    del sums["val2014.zip"]  # as if stopped while unpacking it: recorded only once unpacked
    (folder / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sums.items()))
    assert fetch.unfinished(ds, tmp_path / "root")
    fetch.download_large(ds, tmp_path / "root", yes=True)  # the kept archive unpacks again and is recorded
    assert not fetch.unfinished(ds, tmp_path / "root")
    (tmp_path / "by-hand" / "coco" / "images").mkdir(parents=True)
    assert not fetch.unfinished(ds, tmp_path / "by-hand")


def test_wmt14_concatenates_corpora_line_aligned(tmp_path):
    src = tmp_path / "publisher"
    src.mkdir()
    members = [("training/europarl-v7.fr-en", 3), ("commoncrawl.fr-en", 2), ("un/undoc.2000.fr-en", 1),
               ("training/news-commentary-v9.fr-en", 2)]
    urls = []
    for (member, n), archive in zip(members, WMT14.archives):
        path = src / archive.url.rsplit("/", 1)[-1]
        with tarfile.open(path, "w:gz") as tar:
            for lang in ("en", "fr"):
                data = "".join(f"{member} {lang} {i}\n" for i in range(n)).encode()
                info = tarfile.TarInfo(f"{member}.{lang}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        urls.append(path.as_uri())
    import gzip

    giga = src / "training-giga-fren.tar"
    with tarfile.open(giga, "w") as tar:
        for lang in ("en", "fr"):
            data = gzip.compress(f"giga {lang} 0\n".encode())
            info = tarfile.TarInfo(f"giga-fren.release2.fixed.{lang}.gz")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    urls.append(giga.as_uri())
    ds = dataclasses.replace(WMT14, archives=tuple(dataclasses.replace(a, url=u) for a, u in zip(WMT14.archives, urls)))
    folder = fetch.download_large(ds, tmp_path / "root", yes=True)
    pairs, skipped = read_corpus({"src": "wmt14/train.en", "ref": "wmt14/train.fr"}, tmp_path / "root", "en-fr")
    assert len(pairs) == 9 and not skipped and pairs[0] == ("training/europarl-v7.fr-en en 0", "training/europarl-v7.fr-en fr 0")
    assert pairs[-1] == ("giga en 0", "giga fr 0") and (folder / "SHA256SUMS").is_file()


def test_missing_wmt14_names_the_fetch_command(tmp_path):
    with pytest.raises(DataError, match=r"wmt14/train\.en: not found\. Put .*bench fetch wmt14 --yes"):
        read_corpus({"src": "wmt14/train.en", "ref": "wmt14/train.fr"}, tmp_path, "en-fr")


FLICKR8K_NAMES = [f"{1000 + i}_abc.jpg" for i in range(5)]


def flickr8k_archives(src, text: dict[str, bytes | None] | None = None):
    """Flickr8k_Dataset.zip and Flickr8k_text.zip, tiny; `text` replaces (None: leaves out) text files."""
    from tests.test_captioning import write_jpeg

    src.mkdir(parents=True, exist_ok=True)
    names = FLICKR8K_NAMES
    with zipfile.ZipFile(src / "Flickr8k_Dataset.zip", "w") as z:
        for i, name in enumerate(names):
            write_jpeg(src / "tmp.jpg", seed=i)
            z.write(src / "tmp.jpg", f"Flicker8k_Dataset/{name}")
        z.writestr("__MACOSX/Flicker8k_Dataset/._junk", "")
    files = {"Flickr8k.token.txt": "".join(f"{n}#{k}\tA dog number {i} runs .\n" for i, n in enumerate(names)
                                           for k in range(5)).encode(),
             "Flickr_8k.trainImages.txt": ("\n".join(names[:3]) + "\n").encode(),
             "Flickr_8k.devImages.txt": (names[3] + "\n").encode(),
             "Flickr_8k.testImages.txt": (names[4] + "\n").encode()}
    files.update(text or {})
    with zipfile.ZipFile(src / "Flickr8k_text.zip", "w") as z:  # some copies add a top folder
        for name, data in files.items():
            if data is not None:
                z.writestr(f"Flickr8k_text/{name}", data)
    urls = [(src / "Flickr8k_Dataset.zip").as_uri(), (src / "Flickr8k_text.zip").as_uri()]
    return dataclasses.replace(FLICKR8K, archives=tuple(dataclasses.replace(a, url=u)
                                                        for a, u in zip(FLICKR8K.archives, urls)))


def test_flickr8k_zips_become_coco_format_with_the_official_split(tmp_path):
    from datamodules.captions import assign_splits

    names = FLICKR8K_NAMES
    ds = flickr8k_archives(tmp_path / "publisher")
    folder = fetch.download_large(ds, tmp_path / "root", yes=True)
    assert sorted(p.name for p in (folder / "images").iterdir()) == names  # __MACOSX left out
    splits = assign_splits(read_coco(folder / "images", folder / "captions.json"), None, {}, "s")
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [3, 1, 1]
    assert splits["test"][0].captions[0] == "A dog number 4 runs ."


def test_an_offline_fetch_leaves_nothing_to_finish_and_a_failed_after_step_is_run_again(tmp_path):
    """An offline attempt must not make every later run fetch over a copy put in place by hand; a
    fetch whose archives unpacked but whose `after` step (AN4's sample check) failed is not done."""
    ds = coco_archives(tmp_path / "publisher")
    gone = dataclasses.replace(ds, archives=tuple(dataclasses.replace(a, url=(tmp_path / "nowhere" / a.url.rsplit(
        "/", 1)[-1]).as_uri()) for a in ds.archives))
    with pytest.raises(DataError) as err:
        fetch.download_large(gone, tmp_path / "root", yes=True)
    for name in ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip", "caption_datasets.zip"):
        assert f"->  {tmp_path / 'root' / 'coco' / '.downloads' / name}" in str(err.value)  # every one, at once
    assert not fetch.unfinished(gone, tmp_path / "root")

    calls = []

    def after(folder):
        calls.append(folder)
        if len(calls) == 1:
            raise DataError("1 of 3 images fail the sample check")

    checked = dataclasses.replace(ds, after=after)
    with pytest.raises(DataError, match="sample check"):
        fetch.download_large(checked, tmp_path / "root2", yes=True)
    assert fetch.unfinished(checked, tmp_path / "root2")  # every archive recorded, but the check did not pass
    fetch.download_large(checked, tmp_path / "root2", yes=True)
    assert len(calls) == 2 and not fetch.unfinished(checked, tmp_path / "root2")


def test_a_fetch_by_a_user_who_cannot_write_the_lock_still_finishes(tmp_path, monkeypatch):
    """Another user made .fetch.lock: this fetch holds it read-only and cannot mark it finished, yet
    the next run must not fetch and unpack everything again."""
    ds = coco_archives(tmp_path / "publisher")
    (tmp_path / "root" / "coco").mkdir(parents=True)
    (tmp_path / "root" / "coco" / fetch.LOCK).write_text("")
    monkeypatch.setattr(fetch, "open_lock", lambda folder: open(folder / fetch.LOCK))  # as without write permission
    fetch.download_large(ds, tmp_path / "root", yes=True)
    assert not fetch.unfinished(ds, tmp_path / "root")


def test_a_fetch_adds_its_line_to_sha256sums_and_keeps_the_users_own(tmp_path):
    ds = coco_archives(tmp_path / "publisher")
    folder = tmp_path / "root" / "coco"
    folder.mkdir(parents=True)
    mine = "# my notes\n" + "ab" * 32 + " *images/COCO_train2014_000000000009.jpg\n"
    (folder / "SHA256SUMS").write_text(mine)
    fetch.download_large(ds, tmp_path / "root", yes=True)
    text = (folder / "SHA256SUMS").read_text()
    assert text.startswith(mine) and set(fetch.read_sums(folder / "SHA256SUMS")) == {
        "train2014.zip", "val2014.zip", "annotations_trainval2014.zip", "caption_datasets.zip"}


def test_a_tar_link_to_a_member_it_lacks_is_one_line(tmp_path):
    archive = _crafted_tar(tmp_path / "a.tar", ["x/train2014/a.jpg"], [("x/train2014/b.jpg", "nothere.jpg")])
    with pytest.raises(DataError, match=r"a\.tar: ends early or is damaged"):
        fetch._extract(archive, {"x/train2014/": "images"}, tmp_path / "out")


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Loopback:
    """A loopback HTTP server on a free port, serving data.zip from its own thread."""

    def _serve(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/data.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _RangeServer(_Loopback):
    """A loopback HTTP server for one blob that honours `Range: bytes=N-` (206), as publishers' do."""

    def __init__(self, blob: bytes) -> None:
        self.requests: list[str | None] = []
        outer = self

        class Handler(_QuietHandler):

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
                if start >= len(blob):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(blob) - start))
                self.end_headers()
                self.wfile.write(blob[start:])

        self._serve(Handler)


def test_an_interrupted_download_continues_where_it_stopped(tmp_path):
    blob = bytes(range(256)) * 400
    server = _RangeServer(blob)
    try:
        path = tmp_path / "data.zip"
        part = tmp_path / "data.zip.part"
        part.write_bytes(blob[:30000])  # what a killed download left
        fetch._download_resumable(server.url, path, len(blob), 10, "home")
        assert path.read_bytes() == blob and not part.exists() and server.requests == ["bytes=30000-"]
        path.unlink()
        part.write_bytes(blob)  # complete, killed before the rename: no request at all
        fetch._download_resumable(server.url, path, len(blob), 10, "home")
        assert path.read_bytes() == blob and len(server.requests) == 1
        path.unlink()
        part.write_bytes(blob + b"junk")  # longer than the file: not a prefix of it, start over
        fetch._download_resumable(server.url, path, len(blob), 10, "home")
        assert path.read_bytes() == blob and server.requests[-1] is None
    finally:
        server.close()


class _VersionedServer(_Loopback):
    """A loopback server whose file changes between requests, as a publisher's may: a strong ETag per
    version, `If-Range` honoured (a stale one gets the whole new file, 200), and `cut` bytes sent of
    the first body only (a dropped connection)."""

    def __init__(self, versions: dict[str, bytes], cut: int | None = None) -> None:
        self.version, self.requests = next(iter(versions)), []
        outer = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                blob, etag = versions[outer.version], f'"{outer.version}"'
                rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                outer.requests.append((rng, if_range))
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and if_range in (None, etag) else 0
                self.send_response(206 if start else 200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(blob) - start))
                self.end_headers()
                body = blob[start:]
                self.wfile.write(body[:cut] if cut and len(outer.requests) == 1 else body)

        self._serve(Handler)


def test_a_resumed_download_of_a_file_that_changed_meanwhile_starts_over_not_splices(tmp_path):
    old, new = bytes(range(256)) * 100, bytes(reversed(range(256))) * 100
    server = _VersionedServer({"v1": old, "v2": new}, cut=9000)
    try:
        path = tmp_path / "data.zip"
        with pytest.raises(DataError, match="rerun to continue"):  # the connection drops at 9,000 bytes
            fetch._download_resumable(server.url, path, None, 10, "home")
        validator = tmp_path / "data.zip.part.validator"
        assert (tmp_path / "data.zip.part").stat().st_size == 9000 and validator.read_text().strip() == '"v1"'
        server.version = "v2"  # the publisher replaces the file before the rerun
        fetch._download_resumable(server.url, path, None, 10, "home")
        assert server.requests[-1] == ("bytes=9000-", '"v1"')
        assert path.read_bytes() == new and not validator.exists()
    finally:
        server.close()


def _crafted_zip(path, names):
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(name, b"payload")
    return path


def _crafted_tar(path, files, links):
    with tarfile.open(path, "w") as t:
        for name in files:
            info = tarfile.TarInfo(name)
            info.size = 7
            t.addfile(info, io.BytesIO(b"payload"))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return path


@pytest.mark.parametrize("archive", [
    lambda p: _crafted_zip(p / "a.zip", ["train2014/ok.jpg", "train2014/../../evil.txt"]),
    lambda p: _crafted_zip(p / "b.zip", ["train2014/ok.jpg", "train2014//etc/evil.txt"]),
    lambda p: _crafted_tar(p / "c.tar", ["train2014/ok.jpg"], [("train2014/evil", "/etc/passwd")]),
    lambda p: _crafted_tar(p / "d.tar", ["train2014/ok.jpg"], [("train2014/evil", "../../../outside")]),
], ids=["dotdot-zip", "absolute-zip", "absolute-link-tar", "dotdot-link-tar"])
def test_a_member_that_would_land_outside_stops_the_fetch_before_any_write(tmp_path, archive):
    path = archive(tmp_path)
    dest = tmp_path / "root" / "coco"
    with pytest.raises(DataError, match=r"member 'train2014/.*' would be written outside .*nothing was extracted"):
        fetch._extract(path, {"train2014/": "images"}, dest)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("text, error", [
    ({"Flickr_8k.devImages.txt": None}, r"FileNotFoundError: .*Flickr_8k\.devImages\.txt"),
    ({"Flickr8k.token.txt": "1000_abc.jpg#0\tUn caf\u00e9 .\n".encode("latin-1")}, "UnicodeDecodeError"),
], ids=["a list missing", "captions not UTF-8"])
def test_an_after_step_that_meets_unexpected_contents_is_one_line(tmp_path, text, error):
    ds = flickr8k_archives(tmp_path / "publisher", text)
    folder = tmp_path / "root" / "flickr8k"
    with pytest.raises(DataError, match=rf"{folder}: its archives unpacked, but flickr8k_to_coco failed .*{error}.*"
                                        rf"delete {folder / '.downloads'} and {folder / 'SHA256SUMS'} and fetch again"):
        fetch.download_large(ds, tmp_path / "root", yes=True)
    assert not (folder / "captions.json").exists() and (folder / fetch.LOCK).read_text() == ""  # not marked finished


def test_a_damaged_gz_part_of_wmt14_names_its_archive_and_leaves_no_train_file(tmp_path):
    import gzip

    from datamodules.sources import WMT14_CORPORA, concat_wmt14

    folder = tmp_path / "wmt14"
    (folder / "parts").mkdir(parents=True)
    for corpus in WMT14_CORPORA[:-1]:
        for lang in ("en", "fr"):
            (folder / "parts" / f"{corpus}.{lang}").write_text(f"{corpus} {lang}\n")
    for lang in ("en", "fr"):
        packed = bytearray(gzip.compress(b"giga 0\n"))
        packed[10] = 0xFF  # the deflate stream's first byte: a reserved block type, a zlib.error
        (folder / "parts" / f"giga-fren.release2.fixed.{lang}.gz").write_bytes(bytes(packed))
    with pytest.raises(DataError, match=r"giga-fren\.release2\.fixed\.en\.gz: damaged .*delete .*\.downloads/"
                                        r"training-giga-fren\.tar and its line in .*SHA256SUMS, then fetch again"):
        concat_wmt14(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["parts"]  # no train.en, no temporary file


class _UnsizedServer(_Loopback):
    """A loopback HTTP/1.0 server that announces no size (no HEAD, no Content-Length): a body ends
    where the connection closes. The first GET stops after `cut` bytes; a range request gets the
    rest (206), or 416 past the end, or, with `ranges=False`, the whole blob again (200)."""

    def __init__(self, blob: bytes, cut: int, ranges: bool = True) -> None:
        self.requests: list[str | None] = []
        outer = self

        class Handler(_QuietHandler):

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and ranges else 0
                if start >= len(blob):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                self.end_headers()
                try:
                    self.wfile.write(blob[start:] if start or len(outer.requests) > 1 else blob[:cut])
                except OSError:  # the client hung up after the status line: it asked only to confirm
                    pass

        self._serve(Handler)


def test_a_download_of_unknown_size_cut_short_stays_resumable_and_completes(tmp_path):
    blob = bytes(range(256)) * 400
    path, part = tmp_path / "data.zip", tmp_path / "data.zip.part"
    server = _UnsizedServer(blob, cut=30000)
    try:
        assert fetch._remote_size(server.url, 10) is None
        fetch._download_resumable(server.url, path, None, 10, "home")
        # The cut body was not taken as the file: the rest was asked for, then a range past its end
        # refused (416) said it was whole.
        assert path.read_bytes() == blob and not part.exists()
        assert server.requests == [None, "bytes=30000-", f"bytes={len(blob)}-"]
    finally:
        server.close()
    path.unlink()
    server = _UnsizedServer(blob, cut=len(blob), ranges=False)
    try:  # ranges ignored: nothing more can be known, and the confirming request is not read through
        fetch._download_resumable(server.url, path, None, 10, "home")
        assert path.read_bytes() == blob and server.requests == [None, f"bytes={len(blob)}-"]
    finally:
        server.close()
    path.unlink()
    server = _UnsizedServer(b"0123456789", cut=0)
    try:  # an empty body of unknown size is never the file
        with pytest.raises(DataError, match="the server sent an empty file"):
            fetch._download_resumable(server.url, path, None, 10, "home")
        assert not path.exists()
    finally:
        server.close()


@pytest.fixture
def lock_contention(monkeypatch):
    """An Event set when a fetch finds the data set's lock held by another (and starts waiting)."""
    import fcntl

    contended = threading.Event()
    flock = fcntl.flock

    def spying_flock(fd, op):
        try:
            return flock(fd, op)
        except BlockingIOError:
            contended.set()
            raise

    monkeypatch.setattr(fcntl, "flock", spying_flock)
    return contended


def _in_thread(fn, *args, **kw):
    """Start fn(*args, **kw) in a thread; the returned dict gets its result (or exception) as "out"."""

    box: dict = {}

    def target():
        try:
            box["out"] = fn(*args, **kw)
        except BaseException as err:  # handed to the test, which asserts on it
            box["out"] = err

    box["thread"] = threading.Thread(target=target, daemon=True)
    box["thread"].start()
    return box


def test_two_large_fetches_at_once_take_turns_and_the_second_reuses_the_first(tmp_path, lock_contention):

    from datamodules.sources import merge_coco_captions

    in_after, go_on, calls = threading.Event(), threading.Event(), []

    def slow_after(folder):
        calls.append(folder)
        in_after.set()
        assert go_on.wait(30)
        merge_coco_captions(folder)

    ds = dataclasses.replace(coco_archives(tmp_path / "publisher"), after=slow_after)
    first = _in_thread(fetch.download_large, ds, tmp_path / "root", yes=True)
    assert in_after.wait(30)  # the first holds the lock, all unpacked, in its `after`
    second = _in_thread(fetch.download_large, ds, tmp_path / "root", yes=True)
    assert lock_contention.wait(30)  # the second finds the lock held and waits
    go_on.set()
    for box in (first, second):
        box["thread"].join(30)
    folder = tmp_path / "root" / "coco"
    assert first["out"] == second["out"] == folder
    assert len(calls) == 1 and (folder / "captions.json").is_file()  # nothing unpacked or prepared twice
    assert (folder / fetch.LOCK).read_text() == fetch.FINISHED
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_small_fetch_that_waited_finds_the_files_there_and_fetches_nothing(tmp_path, lock_contention):
    import fcntl
    import hashlib

    ds = fetch.Dataset("toy", (tmp_path / "gone.tgz").as_uri(), {"a.txt": "a.txt"},
                       {"a.txt": hashlib.sha256(b"a\n").hexdigest()}, "https://example.org")
    folder = tmp_path / "root" / "toy"
    folder.mkdir(parents=True)
    with open(folder / fetch.LOCK, "a+") as held:  # another process is fetching toy ...
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = _in_thread(fetch.download, ds, tmp_path / "root")
        assert lock_contention.wait(30)
        (folder / "a.txt").write_bytes(b"a\n")  # ... and completes it
    waiter["thread"].join(30)
    assert waiter["out"] == folder  # its archive's URL does not exist: a fetch would have failed
    # A data set already in place is left untouched: no lock file (the data root may be read-only).
    (tmp_path / "by-hand" / "toy").mkdir(parents=True)
    (tmp_path / "by-hand" / "toy" / "a.txt").write_bytes(b"a\n")
    assert fetch.download(ds, tmp_path / "by-hand") == tmp_path / "by-hand" / "toy"
    assert not (tmp_path / "by-hand" / "toy" / fetch.LOCK).exists()
