"""`invoice-gateway store backup`: a consistent copy of a SQLite store's file, taken while
gateways keep running and writing.

SQLite's online backup API copies the database a few pages at a time from one read
transaction: in WAL mode that is one snapshot, which gateways' commits do not disturb (they
go to the WAL meanwhile), so the copy finishes however busy the store is. The copy goes to a
temporary file next to the target, is checked (`PRAGMA integrity_check`, and its submissions by
state against the snapshot's), made durable, and only then renamed into place: the target is
either the old file or a whole, checked copy, never half of one. On any failure the temporary
file is removed.

Sealed values are copied as they are: a backup of an encrypted store needs the same keys.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.errors import StoreError
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.submissions import AuditEntry

__all__ = [
    "ACTION",
    "PAGES_PER_STEP",
    "BackupError",
    "BackupReport",
    "TargetExists",
    "backup_sqlite",
    "record_backup",
]

#: Pages copied per step of the backup API (4 MiB at the default page size).
PAGES_PER_STEP: Final = 1024
#: The audit entry a finished backup records in the store it copied.
ACTION: Final = "store.backup"
#: Files SQLite may keep next to a database.
SIDECARS: Final = ("-wal", "-shm", "-journal")

#: `progress(pages_done, pages_total)` after each step.
Progress = Callable[[int, int], None]


class BackupError(StoreError):
    """A backup that was not written; the message says what to do. `usage`: the request itself
    is wrong (no store there, no such directory), as opposed to a failure while writing."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class TargetExists(BackupError):
    """The target file exists, and replacing it was not asked for."""


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup wrote."""

    file: Path
    #: The file's size in bytes.
    size: int
    #: Submissions in the copy (as in the snapshot it was taken from), by state.
    by_state: dict[str, int]
    pages: int

    @property
    def submissions(self) -> int:
        return sum(self.by_state.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "bytes": self.size,
            "pages": self.pages,
            "submissions": self.submissions,
            "by_state": dict(self.by_state),
        }


def backup_sqlite(
    path: Path,
    target: Path,
    *,
    pages_per_step: int = PAGES_PER_STEP,
    progress: Progress | None = None,
    replace: bool = False,
) -> BackupReport:
    """Copy the store at `path` into `target` (see the module's docstring); `replace`: an
    existing `target` is replaced, else `TargetExists`. `BackupError` (with `usage`) when
    there is no store at `path`, no directory for `target`, or `target` is the store itself;
    `BackupError` when reading, writing or checking fails (the temporary file is removed,
    `target` left as it was)."""
    if not path.is_file():
        raise BackupError(f"there is no store at {path}", usage=True)
    if not target.parent.is_dir():
        raise BackupError(
            f"the directory {target.parent} does not exist: create it, or name a file in "
            "another one",
            usage=True,
        )
    if target.exists() and target.samefile(path):
        raise BackupError(f"{target} is the store itself: name another file", usage=True)
    if target.exists() and not replace:
        raise TargetExists(f"{target} exists already", usage=True)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
    except OSError as exc:
        raise BackupError(f"cannot write in {target.parent}: {exc}") from exc
    temp = Path(name)
    try:
        by_state, pages = _copy(path, temp, pages_per_step, progress)
        _fsync(temp)
        _place(temp, target, replace=replace)
        _fsync(target.parent)
        return BackupReport(target, target.stat().st_size, by_state, pages)
    except OSError as exc:
        raise BackupError(f"cannot write {target}: {exc}") from exc
    finally:
        for leftover in (temp, *(Path(f"{temp}{suffix}") for suffix in SIDECARS)):
            leftover.unlink(missing_ok=True)


async def record_backup(path: Path, entry: AuditEntry) -> AuditEntry:
    """Append `entry` to the audit log of the store at `path` (as gateways may be writing it)."""
    store = await SqliteStore.open(path, migrate=False)
    try:
        return await store.record_audit(entry)
    finally:
        await store.close()


def _copy(
    path: Path, temp: Path, pages_per_step: int, progress: Progress | None
) -> tuple[dict[str, int], int]:
    """The store's snapshot into `temp`, checked; (its submissions by state, pages copied)."""
    pages = 0

    def step(_status: int, remaining: int, total: int) -> None:
        nonlocal pages
        pages = total
        if progress is not None:
            progress(total - remaining, total)

    try:
        # mode=rw: a mistyped path is not created as an empty store.
        source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    try:
        try:
            source.isolation_level = None
            source.execute("PRAGMA busy_timeout = 5000")
            # One read transaction for the whole copy: its snapshot is what the backup copies.
            source.execute("BEGIN")
            expected = _by_state(source)
        except sqlite3.Error as exc:
            raise _unreadable(path, exc) from exc
        copy = sqlite3.connect(temp, isolation_level=None)
        try:
            source.backup(copy, pages=pages_per_step, progress=step)
            # A file of its own: no WAL for whoever opens it next (a gateway turns WAL on).
            copy.execute("PRAGMA journal_mode = DELETE")
            problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
            found = _by_state(copy)
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise BackupError(
            f"the backup failed: {exc}. Nothing was written: free space in {temp.parent} (or "
            "name a file elsewhere) and run the command again"
        ) from exc
    finally:
        source.close()
    if problems != ["ok"]:
        raise BackupError(f"the copy failed its integrity check ({'; '.join(problems[:5])})")
    if found != expected:
        raise BackupError(f"the copy holds submissions {found}, the store held {expected}")
    return found, pages


def _unreadable(path: Path, exc: sqlite3.Error) -> BackupError:
    return BackupError(
        f"cannot read the store at {path}: {exc} (is it a gateway's store file, readable by "
        "this user?)",
        usage=True,
    )


def _by_state(db: sqlite3.Connection) -> dict[str, int]:
    rows = db.execute("SELECT state, count(*) FROM submission GROUP BY state ORDER BY state")
    return {str(state): int(n) for state, n in rows}


def _place(temp: Path, target: Path, *, replace: bool) -> None:
    """Rename `temp` to `target` in one step; without `replace`, never over an existing file
    (a hard link fails when the name is taken, a rename would not)."""
    if replace:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)
    except FileExistsError:
        raise TargetExists(f"{target} exists already", usage=True) from None


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
