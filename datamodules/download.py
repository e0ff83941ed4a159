"""Download a data set from its publisher, checked by sha256, with a progress bar.

Small data sets: nothing is written until the archive's sha256 and every extracted file's sha256
check out, and files land by atomic rename, so an interrupted download never leaves a half-written
data root. Large ones (`download_large`, no publisher checksums): each file lands by rename, so none
is ever cut off, but a stopped fetch can leave some files and not others; the next fetch completes them.
Two fetches of one data set at once (two `--jobs` runs, `bench fetch` beside `bench run`) take turns:
each holds <folder>/.fetch.lock while it writes, and the second finds the first's files there.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from tqdm import tqdm

from tasks.nn.errors import DataError

log = logging.getLogger(__name__)

LOCK = ".fetch.lock"  # hidden, as every temporary name here: the data fingerprint leaves hidden files out
FINISHED = "finished\n"  # what download_large leaves in its lock file once `after` has run
# Present from a large fetch's first write until its `after` has run. Not the lock's contents: a
# user who did not make the lock cannot write it, but can remove a file from a folder it writes to.
UNFINISHED = ".fetch.unfinished"
MAX_REQUESTS = 20  # a download of unknown size asks for what follows until refused: a bound for a server that never is


@dataclass(frozen=True)
class Dataset:
    name: str  # folder under the data root
    url: str  # the publisher's archive
    members: dict[str, str]  # file name under data_root/name -> its path's tail inside the archive
    sha256: dict[str, str]  # file name under data_root/name -> sha256
    homepage: str
    # A publisher without an archive: file name -> the URL of its gzip-compressed copy (then `url`
    # names the folder they sit in, and `members` is empty). The sha256 is the uncompressed file's.
    gz_files: dict[str, str] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """Where derived data (features, caches) goes: the project's own folder, never the data root."""
    return Path(os.environ.get("RNNREG_CACHE_DIR", ".cache"))


def read_sums(path: Path) -> dict[str, str]:
    """A `sha256sum` listing -> {relative name: digest}."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            sums[name] = digest
    return sums


class _Archive:
    """The few calls download() needs, over tar and zip alike."""

    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
        self.tar = None if self.zip else tarfile.open(path)
        self.names = self.zip.namelist() if self.zip else self.tar.getnames()

    def open(self, member: str):
        return self.zip.open(member) if self.zip else self.tar.extractfile(member)

    def link_target(self, member: str) -> str | None:
        """Where a tar link member points (None for a regular file or a zip member)."""
        if self.tar is None:
            return None
        info = self.tar.getmember(member)
        return info.linkname if info.issym() or info.islnk() else None

    def check_whole(self) -> None:
        """tarfile ends quietly where a cut-short tar ends, even mid-header, and never reads a gzip
        stream to its CRC: read on from the last member to a zero block, then to the stream's end."""
        if self.tar is None:
            return  # a zip: testzip() read every member against its CRC
        f = self.tar.fileobj
        f.seek(self.tar.offset)  # where the header after the last member would start
        end = f.read(tarfile.BLOCKSIZE)
        if len(end) < tarfile.BLOCKSIZE or end.strip(b"\0"):
            raise tarfile.ReadError("no end-of-archive block after its last member: cut short")
        while f.read(1 << 20):  # a compressed stream checks its CRC and length at its end
            pass

    def close(self) -> None:
        (self.zip or self.tar).close()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_to_place(ds: Dataset, folder: Path) -> str:
    listed = list(ds.sha256.items())
    files = "\n".join(f"    {folder / name}  (sha256 {digest})" for name, digest in listed[:12])
    if len(listed) > 12:
        files += f"\n    ... and {len(listed) - 12} more files in the same layout"
    return files


def _where_inside(ds: Dataset) -> str:
    members = ", ".join(list(ds.members.values())[:3]) + (", ..." if len(ds.members) > 3 else "")
    return (f"the files of the same names, gzip-compressed (.gz), in {ds.url}" if ds.gz_files else
            f"{members} inside {ds.url.rsplit('/', 1)[-1]}")


def offline_help(ds: Dataset, folder: Path, reason: str) -> str:
    return (
        f"could not download {ds.name} from {ds.url}: {reason}\n"
        f"  Fetch it on a machine with network and place these files:\n{_files_to_place(ds, folder)}\n"
        f"  They are {_where_inside(ds)} (see {ds.homepage}).\n"
        f"  Or point --data-root (or RNNREG_DATA_ROOT) at a folder that already holds {ds.name}/."
    )


def changed_at_publisher(ds: Dataset, folder: Path, name: str, got: str, digest: str) -> str:
    """The download worked, but the publisher's file is no longer the one the results were made on:
    fetching again gives the same file, so say which version to find instead."""
    return (
        f"{ds.name} from {ds.url}: the publisher now serves other contents ({name} has sha256 {got}; this "
        f"benchmark is pinned to {digest}, the version its results were made on), so fetching again gives the same "
        f"file. Nothing was written.\n"
        f"  Place the pinned version's files by hand (an archived copy of it, see {ds.homepage}):\n"
        f"{_files_to_place(ds, folder)}\n"
        f"  They are {_where_inside(ds)}. Or point --data-root (or RNNREG_DATA_ROOT) at a folder that already holds "
        f"{ds.name}/."
    )


def missing_files(ds: Dataset, folder: Path) -> list[str]:
    return [name for name in ds.sha256 if not (folder / name).is_file()]


def take_turn(lock: IO[str], folder: Path) -> bool:
    """Lock `lock`, the open <folder>/.fetch.lock, exclusively; True when another fetch held it first.
    Fetches of one data set write the same names (.part files, SHA256SUMS, what `after` writes), so
    they take turns. Closing the file releases the lock, and so does its holder's exit, even by kill -9."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        log.info("%s: another fetch of this data set is running; waiting for it to finish", folder)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return True
    except OSError as err:  # a file system without flock (some NFS, Lustre without -o flock): fetch as before
        log.warning("%s: cannot lock %s (%s): two fetches of this data set at once would not take turns",
                    folder, LOCK, err.strerror or err)
        return False


def open_lock(folder: Path) -> IO[str]:
    """<folder>/.fetch.lock, made if need be; read-only when another user made it (flock needs no write)."""
    try:
        return open(folder / LOCK, "a+")
    except PermissionError:
        return open(folder / LOCK)


def download(ds: Dataset, data_root: Path, timeout: float = 60.0) -> Path:
    """Fetch `ds` into data_root/ds.name unless its files are already there; return that folder."""
    folder = Path(data_root) / ds.name
    if not missing_files(ds, folder):  # nothing written, not even the lock: the data root may be read-only
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open_lock(folder)
    except OSError as err:
        raise DataError(offline_help(ds, folder, f"cannot write in {folder}: {err}")) from err
    with lock:
        take_turn(lock, folder)
        if missing_files(ds, folder):  # else another fetch completed it while this one waited
            _download_into(ds, folder, timeout)
    return folder


def _download_into(ds: Dataset, folder: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        extracted = Path(tmp) / "x"
        if ds.gz_files:
            _fetch_gz_files(ds, folder, Path(tmp), extracted, timeout)
        else:
            archive = Path(tmp) / ds.url.rsplit("/", 1)[-1]
            _fetch(ds, folder, ds.url, archive, timeout)
            _extract_members(ds, folder, archive, extracted)
        for name, digest in ds.sha256.items():
            got = sha256_of(extracted / name)
            if got != digest:
                raise DataError(changed_at_publisher(ds, folder, name, got, digest))
        for name in missing_files(ds, folder):  # a file already there stays as it was put (see identity.py)
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(extracted / name, folder / name)


def _fetch(ds: Dataset, folder: Path, url: str, path: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(path, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {ds.name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as err:
        raise DataError(offline_help(ds, folder, str(err))) from err


def _extract_members(ds: Dataset, folder: Path, archive: Path, extracted: Path) -> None:
    try:
        arc = _Archive(archive)
        try:
            by_tail = {}
            for n in arc.names:  # archives differ in a leading "./" or folder: match the path's tail
                by_tail.setdefault(n.rsplit("/", 1)[-1], []).append(n)
            for name, tail in ds.members.items():
                member = next((n for n in by_tail.get(tail.rsplit("/", 1)[-1], ()) if n.endswith(tail)), None)
                src = arc.open(member) if member else None
                if src is None:
                    raise KeyError(f"{tail} not in archive")
                (extracted / name).parent.mkdir(parents=True, exist_ok=True)
                with src, open(extracted / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        finally:
            arc.close()
    # A damaged deflate stream is zlib.error, a wrong gzip CRC gzip.BadGzipFile: neither is a TarError
    except (tarfile.TarError, zipfile.BadZipFile, KeyError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(offline_help(ds, folder, f"archive {archive.name} is corrupt or incomplete ({err})")) from err


def _fetch_gz_files(ds: Dataset, folder: Path, tmp: Path, extracted: Path, timeout: float) -> None:
    extracted.mkdir(parents=True, exist_ok=True)
    for name, url in ds.gz_files.items():
        packed = tmp / f"{name}.gz"
        _fetch(ds, folder, url, packed, timeout)
        try:
            with gzip.open(packed) as src, open(extracted / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError, zlib.error) as err:  # zlib.error: damaged data inside the stream
            raise DataError(offline_help(ds, folder, f"{url} is not a complete gzip file ({err})")) from err


@dataclass(frozen=True)
class Archive:
    url: str
    extract: dict[str, str]  # member path prefix inside the archive -> folder under the data set's folder


@dataclass(frozen=True)
class LargeDataset:
    """A multi-GB data set whose publisher gives no checksums (COCO, WMT): downloaded only with the
    user's go-ahead, checked against the server's size and the archive's own CRCs, and its sha256
    recorded on first download in <folder>/SHA256SUMS, against which any later fetch is checked."""

    name: str
    archives: tuple[Archive, ...]
    homepage: str
    after: Callable[[Path], Any] | None = None  # run on the folder once everything is extracted
    ask: bool = True  # False: small enough (tens of MB) to fetch without --yes


def _remote_size(url: str, timeout: float) -> int | None:
    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            size = resp.headers.get("Content-Length")
            return int(size) if size else None
    except (urllib.error.URLError, OSError, TimeoutError, ValueError):
        return None


def _plan(arc: _Archive, archive: Path, extract: dict[str, str], dest: Path) -> list[tuple[str, Path]]:
    """(member, target) for every member under one of the prefixes, each target checked to land
    inside its folder: an absolute name, a `..` or a link that leaves it stops the fetch before
    anything is written."""
    plan = []
    for member in arc.names:
        if member.startswith("__MACOSX/") or member.endswith("/"):  # macOS resource forks; folders
            continue
        for prefix, folder in extract.items():
            # The prefix may sit below a top folder the publisher added ("Flickr8k_text/...").
            at = 0 if member.startswith(prefix) else member.find("/" + prefix) + 1
            if at == 0 and not member.startswith(prefix):
                continue
            # "train2014/" keeps the path below it; "annotations/captions_" keeps the file name
            rest = member[at + len(prefix):] if prefix.endswith("/") else member.rsplit("/", 1)[-1]
            if not rest:
                continue
            base = (dest / folder).resolve()
            link = arc.link_target(member)
            for path in (rest, *([str(Path(rest).parent / link)] if link is not None else [])):
                if Path(path).is_absolute() or not (base / path).resolve().is_relative_to(base):
                    raise DataError(f"{archive}: member {member!r} would be written outside {base}; this is not "
                                    f"the publisher's archive: delete it (nothing was extracted)")
            plan.append((member, dest / folder / rest))
            break
    return plan


def _one_line(err: BaseException) -> str:
    """tarfile's messages can run to several lines (one per compression tried)."""
    return next((line.strip(" -") for line in str(err).splitlines() if line.strip(" -")), type(err).__name__)


def _extract(archive: Path, extract: dict[str, str], dest: Path) -> int:
    """Members under each prefix into dest/<folder>/<rest of the path>; returns how many files. Each
    file lands whole or not at all (a stop mid-copy leaves no cut-off file to train on)."""
    try:
        if not zipfile.is_zipfile(archive) and not tarfile.is_tarfile(archive):
            raise tarfile.ReadError("neither a zip nor a tar archive")
        arc = _Archive(archive)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"{archive}: cannot be unpacked ({_one_line(err)}): a download cut short or "
                        f"another file; delete it and fetch again") from err
    n = 0
    try:
        if arc.zip is not None:
            bad = arc.zip.testzip()  # reads every member and checks its CRC
            if bad is not None:
                raise DataError(f"{archive}: member {bad} fails its CRC check; delete the file and fetch again")
        for member, target in _plan(arc, archive, extract, dest):
            src = arc.open(member)
            if src is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            try:
                with src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, target)
            n += 1
        arc.check_whole()
    # cut or damaged; KeyError: a tar link to a member the archive lacks
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, zlib.error, KeyError) as err:
        raise DataError(f"{archive}: ends early or is damaged ({_one_line(err)}); "
                        f"delete it and fetch again") from err
    finally:
        arc.close()
    return n


def unfinished(ds: LargeDataset, data_root: Path) -> bool:
    """A fetch of `ds` that stopped part-way: its archives are kept in .downloads/, and one has not
    yet unpacked whole (SHA256SUMS records each archive once it has). A folder put in place by hand
    has no .downloads/ and is taken as it is."""
    folder = Path(data_root) / ds.name
    downloads = folder / ".downloads"
    names = [a.url.rsplit("/", 1)[-1] for a in ds.archives]
    # A fetch that never got a byte (offline) has nothing to finish: a copy put in place by hand
    # afterwards is taken as it is, not fetched over.
    if not any((downloads / n).is_file() or (downloads / f"{n}.part").is_file() for n in names):
        return False
    known = read_sums(folder / "SHA256SUMS") if (folder / "SHA256SUMS").is_file() else {}
    if any(n not in known for n in names):
        return True
    # Every archive unpacked, but `after` (AN4's sample check) failed or was stopped.
    return (folder / UNFINISHED).exists()


def download_large(ds: LargeDataset, data_root: Path, yes: bool = False, timeout: float = 60.0) -> Path:
    """Fetch, check and unpack `ds` into data_root/ds.name (archives kept in its .downloads/), then
    run its `after`; return that folder. Asks first (a DataError) unless `yes` or `ds.ask` is off."""
    folder = Path(data_root) / ds.name
    sizes = {a.url: _remote_size(a.url, timeout) for a in ds.archives}
    unknown = [u for u, n in sizes.items() if n is None]  # the server not reached, or it announces no size
    amount = (f"{sum(n or 0 for n in sizes.values()) / 1e9:.1f} GB" if not unknown else
              "of unknown size (the server did not say)" if len(unknown) == len(sizes) else
              f"over {sum(n or 0 for n in sizes.values()) / 1e9:.1f} GB (not every size known)")
    listing = "\n".join(f"    {a.url}  ({'size unknown' if sizes[a.url] is None else f'{sizes[a.url] / 1e9:.2f} GB'})"
                        for a in ds.archives)
    if yes or not ds.ask:
        log.info("%s: %s from its publisher (%s) into %s:\n%s", ds.name, amount, ds.homepage, folder, listing)
    else:
        raise DataError(f"{ds.name} is {amount} to download into {folder}:\n{listing}\n"
                        f"  Rerun with --yes to download it; or fetch those files yourself, put them in "
                        f"{folder / '.downloads'}/ and rerun with --yes to check and unpack them (see {ds.homepage}).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open_lock(folder)
    except OSError as err:
        raise DataError(f"cannot write in {folder} ({err.strerror or err}); give --data-root a folder you can "
                        f"write to") from err
    with lock:
        if take_turn(lock, folder):
            lock.seek(0)
            if lock.read() == FINISHED:  # the fetch this one waited for completed it, `after` included
                return folder
        writable = lock.writable()
        if writable:
            lock.truncate(0)  # a fetch that stops short leaves no FINISHED behind
        _download_large_into(ds, folder, sizes, timeout)
        if writable:
            lock.write(FINISHED)
    return folder


def _download_large_into(ds: LargeDataset, folder: Path, sizes: dict[str, int | None], timeout: float) -> None:
    try:
        (folder / UNFINISHED).touch()
    except PermissionError:  # another user's, left by a fetch of theirs that stopped: it is there
        pass
    _fetch_and_unpack(ds, folder, sizes, timeout)
    (folder / UNFINISHED).unlink(missing_ok=True)


def _fetch_and_unpack(ds: LargeDataset, folder: Path, sizes: dict[str, int | None], timeout: float) -> None:
    sums_file = folder / "SHA256SUMS"
    known = read_sums(sums_file) if sums_file.is_file() else {}  # read under the lock: another fetch may have added
    downloads = folder / ".downloads"
    for a in ds.archives:
        name = a.url.rsplit("/", 1)[-1]
        path = downloads / name
        if not path.is_file():
            downloads.mkdir(exist_ok=True)  # not before: an empty one would read as a fetch begun (unfinished)
            try:
                _download_resumable(a.url, path, sizes[a.url], timeout, ds.homepage)
            except Unreachable as err:  # every archive still to fetch, not one per attempt
                todo = [(b.url, downloads / b.url.rsplit("/", 1)[-1]) for b in ds.archives]
                todo = [(url, p) for url, p in todo if not p.is_file()]
                raise DataError(f"could not download {a.url}: {err.reason}. Fetch "
                                f"{'it' if len(todo) == 1 else f'these {len(todo)} files'} on a machine with network "
                                f"and put {'it' if len(todo) == 1 else 'them'} in place, then rerun (see {ds.homepage}):\n"
                                + "\n".join(f"    {url}  ->  {p}" for url, p in todo)) from err
        digest = sha256_of(path)
        if name in known and known[name] != digest:
            raise DataError(f"{path}: sha256 {digest} differs from the {known[name]} recorded in {sums_file} at the "
                            f"first download; delete it to fetch it again (or delete {sums_file} if you replaced "
                            f"it on purpose)")
        count = _extract(path, a.extract, folder)
        if count == 0:
            raise DataError(f"{path}: none of {sorted(a.extract)} found inside; is it the right archive?")
        if name not in known:  # recorded once it has unpacked: a cut-short file is never the reference
            known[name] = digest
            # Added to what is there, line for line: a user's own lines (comments, `*name` entries) stay.
            before = sums_file.read_text() if sums_file.is_file() else ""
            tmp = sums_file.with_name(".SHA256SUMS.tmp")
            tmp.write_text(before + ("\n" if before and not before.endswith("\n") else "") + f"{digest}  {name}\n")
            os.replace(tmp, sums_file)
    if ds.after:
        try:
            ds.after(folder)
        # Unexpected contents (a file missing, not UTF-8, a JSON key absent) break `after` mid-way: say
        # where, not a traceback. Its own DataErrors pass through as they are.
        # Not every OSError: a full disk or a permission is not the archives' fault.
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError, KeyError) as err:
            step = getattr(ds.after, "__name__", "after")
            raise DataError(f"{folder}: its archives unpacked, but {step} failed on what they hold "
                            f"({type(err).__name__}: {_one_line(err)}); if you put them in {downloads} by hand, "
                            f"check they are the publisher's ({ds.homepage}), else delete {downloads} and "
                            f"{sums_file} and fetch again") from err


class Unreachable(DataError):
    """A download the network refused: `reason` says why, the message where to put a copy instead."""

    def __init__(self, reason: Exception, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _download_resumable(url: str, path: Path, expected: int | None, timeout: float, homepage: str) -> None:
    """url -> path through path.part. An interrupted download continues where it stopped (an HTTP
    range request); a server that ignores the range sends the whole file, which replaces the part.
    The part becomes the file only once it is known whole: it has the size the server announced, or
    a chunked body ended with its last chunk, or (no size announced) a range request for what follows
    it is refused (416). A server that announces no size and ignores ranges cannot say; then the part
    is taken as it is, and unpacking finds a cut archive by its missing end."""
    part = path.with_suffix(path.suffix + ".part")
    # What the part's bytes came from (the server's strong ETag or Last-Modified), sent as If-Range when
    # resuming: if the file changed since, the server sends it whole, not the new tail after the old head.
    validator_file = part.with_suffix(part.suffix + ".validator")

    def unreachable(err: Exception) -> DataError:
        return Unreachable(err, f"could not download {url}: {err}. Fetch it on a machine with network and put it "
                                f"at {path}, then rerun (see {homepage})")

    have = part.stat().st_size if part.is_file() else 0
    if expected and have > expected:  # not a prefix of this file: start over
        part.unlink()
        have = 0
    confirming = False  # the last body ended with no size to check it by: ask for what follows it
    for _ in range(MAX_REQUESTS):
        if expected and have == expected:  # a complete part (killed before the rename) needs no request
            break
        headers = {"Range": f"bytes={have}-"} if have else {}
        if have and validator_file.is_file():
            headers["If-Range"] = validator_file.read_text().strip()
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                resumed = bool(have) and getattr(resp, "status", 200) == 206
                if confirming and not resumed:  # the server ignores ranges: closed before it resends it all
                    break
                length = int(resp.headers.get("Content-Length") or 0)
                expected = (have if resumed else 0) + length if length else expected
                if not resumed:  # a body from its first byte: remember which version of the file it is
                    etag = resp.headers.get("ETag") or ""
                    validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
                    if validator:
                        validator_file.write_text(validator + "\n")
                    else:
                        validator_file.unlink(missing_ok=True)
                with open(part, "ab" if resumed else "wb") as out, \
                        tqdm(total=expected, initial=have if resumed else 0, unit="B", unit_scale=True,
                             desc=f"download {path.name}") as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
                # http.client raises IncompleteRead on a chunked body cut before its last chunk
                whole = bool(getattr(resp, "chunked", False))
        except urllib.error.HTTPError as err:
            if not (err.code == 416 and have):  # 416 with a part: nothing left to send
                raise unreachable(err) from err
            break
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as err:  # IncompleteRead
            raise unreachable(err) from err
        grown = part.stat().st_size > (have if resumed else 0)
        have = part.stat().st_size
        if expected or whole or (confirming and not grown):
            break
        confirming = True
    else:
        raise DataError(f"{url}: the server kept sending more after {MAX_REQUESTS} requests without saying the size; "
                        f"fetch it by hand and put it at {path} (see {homepage})")
    if part.stat().st_size == 0:
        raise DataError(f"{url}: the server sent an empty file; rerun later, or fetch it by hand and put it at {path}")
    if expected and part.stat().st_size != expected:
        raise DataError(f"{url}: got {part.stat().st_size} bytes, the server announced {expected}; rerun to "
                        f"continue the download")
    os.replace(part, path)
    validator_file.unlink(missing_ok=True)
