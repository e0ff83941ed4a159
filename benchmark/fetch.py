"""Download a data set from its publisher, checked by sha256, with a progress bar.

Nothing is written until the archive's sha256 and every extracted file's sha256 check out, and files
land by atomic rename, so an interrupted download never leaves a half-written data root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from benchmark.errors import DataError


@dataclass(frozen=True)
class Dataset:
    name: str  # folder under the data root
    url: str  # the publisher's archive
    members: dict[str, str]  # file name under data_root/name -> its path's tail inside the archive
    sha256: dict[str, str]  # file name under data_root/name -> sha256
    homepage: str


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

    def close(self) -> None:
        (self.zip or self.tar).close()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def offline_help(ds: Dataset, folder: Path, reason: str) -> str:
    listed = list(ds.sha256.items())
    files = "\n".join(f"    {folder / name}  (sha256 {digest})" for name, digest in listed[:12])
    if len(listed) > 12:
        files += f"\n    ... and {len(listed) - 12} more files in the same layout"
    members = ", ".join(list(ds.members.values())[:3]) + (", ..." if len(ds.members) > 3 else "")
    return (
        f"could not download {ds.name} from {ds.url}: {reason}\n"
        f"  Fetch it on a machine with network and place these files:\n{files}\n"
        f"  They are {members} inside {ds.url.rsplit('/', 1)[-1]} (see {ds.homepage}).\n"
        f"  Or point --data-root (or RNNREG_DATA_ROOT) at a folder that already holds {ds.name}/."
    )


def missing_files(ds: Dataset, folder: Path) -> list[str]:
    return [name for name in ds.sha256 if not (folder / name).is_file()]


def download(ds: Dataset, data_root: Path, timeout: float = 60.0) -> Path:
    """Fetch `ds` into data_root/ds.name unless its files are already there; return that folder."""
    folder = Path(data_root) / ds.name
    if not missing_files(ds, folder):
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(offline_help(ds, folder, f"cannot create {folder}: {err}")) from err
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        archive = Path(tmp) / ds.url.rsplit("/", 1)[-1]
        try:
            with urllib.request.urlopen(ds.url, timeout=timeout) as resp, open(archive, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {ds.name}") as bar:
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise DataError(offline_help(ds, folder, str(err))) from err
        extracted = Path(tmp) / "x"
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
        except (tarfile.TarError, zipfile.BadZipFile, KeyError, EOFError) as err:
            raise DataError(offline_help(ds, folder, f"archive {archive.name} is corrupt or incomplete ({err})")) from err
        for name, digest in ds.sha256.items():
            got = sha256_of(extracted / name)
            if got != digest:
                raise DataError(offline_help(ds, folder, f"sha256 of {name} is {got}, expected {digest}"))
        for name in ds.sha256:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(extracted / name, folder / name)
    return folder
