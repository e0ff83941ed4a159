"""The results file: one CSV row per finished run, appended atomically.

Rows of different tasks carry different metrics, so the header is the union of all rows' keys. Each
append rereads the file, writes the whole table to a temporary file in the same folder and renames it
over the old one under an exclusive lock: a crash leaves the old file whole, and two runs finishing
together both land.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tasks.nn.errors import ConfigError, DataError
from tasks.nn.mechanisms import ZAREMBA

log = logging.getLogger(__name__)

RUNS_FILE = "runs.csv"


def checkpoint_kind(files: list[Path | str]) -> str:
    """`last`, `best` (best-epochNNN.ckpt) or `mixed`, from the members' files: a .ckpt given by path
    is taken as it is, whatever --checkpoint says."""
    kinds = {"last" if Path(f).name == "last.ckpt" else "best" if Path(f).name.startswith("best") else "other"
             for f in files}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def row_regularizer(row: dict[str, str]) -> str:
    """A row's regularizer: "none" for `--dropout off`; rows from before regularizers trained the paper's."""
    if row.get("dropout") == "off":
        return "none"
    return row.get("regularizer") or ZAREMBA
CSV_LOG = "csv"  # <run>/csv/metrics.csv: Lightning's CSVLogger, one row per logged step or epoch
_PART = re.compile(r"metrics\.part-(\d+)\.csv")


def metric_logs(run_dir: Path) -> list[Path]:
    """A run's CSV metric logs, oldest first: the parts set aside when the run was resumed
    (metrics.part-1.csv, ...: Lightning's CSVLogger starts its file anew), then metrics.csv."""
    folder = Path(run_dir) / CSV_LOG
    parts = {int(m.group(1)): p for p in folder.glob("metrics.part-*.csv") if (m := _PART.fullmatch(p.name))}
    current = [folder / "metrics.csv"] if (folder / "metrics.csv").is_file() else []
    return [*(parts[k] for k in sorted(parts)), *current]


def set_log_aside(run_dir: Path) -> Path | None:
    """Before a resumed run's CSVLogger starts (it deletes the file it finds): metrics.csv ->
    the next metrics.part-N.csv, so the learning curve keeps the epochs trained before."""
    log_file = Path(run_dir) / CSV_LOG / "metrics.csv"
    if not log_file.is_file():
        return None
    numbers = [int(m.group(1)) for p in log_file.parent.iterdir() if (m := _PART.fullmatch(p.name))]
    part = log_file.with_name(f"metrics.part-{max(numbers, default=0) + 1}.csv")
    os.replace(log_file, part)
    return part


def last_logged(run_dir: Path, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The last value of each metric named with one of `prefixes` over a run's CSV logs."""
    out: dict[str, float] = {}
    for path in metric_logs(run_dir):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                out.update({k: float(v) for k, v in row.items() if k and k.startswith(prefixes) and v})
    return out


STEP_KEYS = ("train_loss", "train_nll")  # logged every few steps; the rest of train_*/valid_* once an epoch


def save_curves(run_dir: Path, results_dir: Path, name: str) -> Path | None:
    """<results>/curves/<name>.csv (the row's `curves` names it): the run's per-epoch train and
    valid metrics (Lightning's 0-based `epoch`, as in its CSV logs), so the learning curves travel
    with the results rows and the leaderboard can draw them without the run folder."""
    epochs: dict[int, dict[str, str]] = {}
    for path in metric_logs(run_dir):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                values = {k: v for k, v in row.items()
                          if k and k.startswith(("train_", "valid_")) and k not in STEP_KEYS and v}
                if values and row.get("epoch"):
                    epochs.setdefault(int(row["epoch"]), {}).update(values)
    if not epochs:
        return None
    out = Path(results_dir) / "curves" / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows_atomic(out, [{"epoch": e, **v} for e, v in sorted(epochs.items())], ["epoch"])
    return out


def _open_shared(path: Path, flags: int) -> int:
    """os.open, without O_CREAT when the file is there: in a shared folder with the sticky bit,
    Linux's fs.protected_regular refuses an O_CREAT open of another user's file even where it is
    writable (root included)."""
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        return os.open(path, flags | os.O_CREAT, 0o666)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-write: flock on NFS is a POSIX write lock, which needs a descriptor open for writing.
    with os.fdopen(_open_shared(path.with_name(path.name + ".lock"), os.O_RDWR), "r+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_writable(folder: Path, fix: str, parts: tuple[str, ...] = (), replaced: tuple[str, ...] = ()) -> None:
    """Fail in one line, before any work, if `folder` (or where it would be made) or one of its `parts`
    that exists (a subfolder, a file) cannot be written, or a file in it that is `replaced` by rename
    (runs.csv) cannot be: a run whose results folder is read-only would otherwise train for hours and
    lose its row at the end. `fix`: what to do instead."""
    folder = Path(folder).absolute()
    try:
        # A folder not there yet is not made here (a run refused later leaves none behind): where it
        # would be made, the nearest folder that exists must take it, and no broken link on the way.
        made_in = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
        if not made_in.exists():
            raise ConfigError(f"{folder}: cannot be made ({made_in} is a broken link); {fix}")
        if made_in != folder and not made_in.is_dir():
            raise ConfigError(f"{folder}: cannot be made ({made_in} is a file); {fix}")
        subfolders = [folder / p for p in parts if (folder / p).is_dir()]
    except OSError as err:  # a folder on the way that cannot be entered
        raise ConfigError(f"{folder}: cannot be reached ({err.strerror or err}); {fix}") from err
    for target in [made_in, *subfolders]:
        try:  # a new file made and deleted: what the atomic writes there do
            fd, tmp = tempfile.mkstemp(dir=target, prefix=".write-check-", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise ConfigError(f"{target}: cannot be written ({err.strerror or err}); {fix}") from err
    # A file rewritten by rename (runs.csv) needs only its folder; one opened for writing in place (a
    # lock file, left by another user's or a sudo run) needs itself.
    for path in (folder / p for p in parts if (folder / p).is_file()):
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{path}: not writable by you (a file another user, or a sudo run, left); delete it "
                              f"(the folder is yours) or {fix}")
    _check_sticky(folder, replaced, fix)


def _check_sticky(folder: Path, names: tuple[str, ...], fix: str) -> None:
    """In a shared folder with the sticky bit (mode 1777, as /tmp), only a file's owner, the folder's
    owner or root may replace it by rename: another user's runs.csv there would fail at the end."""
    me = getattr(os, "geteuid", lambda: 0)()
    try:
        st = folder.stat()
    except OSError:  # not made yet: nothing in it to replace
        return
    if not st.st_mode & stat.S_ISVTX or me in (0, st.st_uid):
        return
    for path in (folder / n for n in names):
        try:
            owner = path.lstat().st_uid  # a link is replaced itself, whatever it points at
        except OSError:
            continue
        if owner != me:
            raise ConfigError(f"{path}: another user's, in a shared folder (sticky bit) where only its owner can "
                              f"replace it; {fix}")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV. A damaged last line (a write cut short by hand-editing or a full
    disk) is left out with a warning; damage anywhere else is an error naming the line."""
    rows, header, damaged = _read(path)
    if damaged is not None:
        log.warning("%s: its last line is damaged (%d fields, the header has %d) and is left out; "
                    "rerun that run or delete the line", path, len(damaged), len(header))
    return rows


def _read(path: Path) -> tuple[list[dict[str, str]], list[str], list[str] | None]:
    """(the rows, the header, the damaged last line's fields or None)."""
    if not path.exists():
        return [], [], None
    try:
        # UTF-8 whatever the locale; -sig: a file saved again by a spreadsheet starts with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = list(csv.reader(f))
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable results CSV ({err}); move it aside to start a new one") from err
    if not records:
        return [], [], None
    header, body = records[0], [r for r in records[1:] if r]
    bad = [i for i, r in enumerate(body) if len(r) != len(header)]
    damaged = None
    if bad and bad[-1] == len(body) - 1:
        damaged, body, bad = body[-1], body[:-1], bad[:-1]
    if bad:
        raise DataError(f"{path}: data line {bad[0] + 1} has {len(body[bad[0]])} fields, the header has "
                        f"{len(header)}; fix or delete that line")
    return [dict(zip(header, r)) for r in body], header, damaged


def _mode_of(path: Path) -> int:
    """The file's permissions if it exists, else what the umask gives a new file."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_rows_atomic(path: Path, rows: list[dict[str, Any]], first: list[str] = ()) -> None:
    header = list(first)
    for row in rows:
        header += [k for k in row if k not in header]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode_of(path))  # mkstemp's 0600 would make a shared results folder unreadable to the rest
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def append_row(results_dir: Path, row: dict[str, Any], replaces: str | None = None) -> Path:
    """Append `row`; with `replaces` (a column), a row holding the same value there goes: a run
    killed between writing its row and marking its folder finished, then resumed, has one row."""
    path = Path(results_dir) / RUNS_FILE
    with locked(path):
        rows, header, damaged = _read(path)
        if damaged is not None:
            # Rewriting the file would drop the line for good: its text goes to a file beside it first.
            aside = path.with_name(path.name + ".damaged")
            with os.fdopen(_open_shared(aside, os.O_WRONLY | os.O_APPEND), "a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(damaged)
                f.flush()
                os.fsync(f.fileno())
            log.warning("%s: its last line was damaged (%d fields, the header has %d); it is kept in %s, "
                        "fix it there and paste it back", path, len(damaged), len(header), aside)
        if replaces is not None and str(row[replaces]):  # an empty value would match every row without one
            rows = [r for r in rows if r.get(replaces) != str(row[replaces])]
        first = list(rows[0].keys()) if rows else list(row.keys())
        write_rows_atomic(path, rows + [row], first)
    return path
