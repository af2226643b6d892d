"""`backup_sqlite` (`invoice-gateway store backup`) on real SQLite files: the snapshot it copies
while another connection keeps committing, and a full disk."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.outbox.store import open_store
from gateway.outbox.store.backup import BackupError, backup_sqlite, record_backup
from gateway.outbox.submissions import AuditEntry
from tests.support.disk import mount_small_fs, unmount
from tests.support.submissions import queued

QUEUED = 40
#: Commits made while the backup runs, one after each of its first steps.
WRITES = 10


def a_store(path: Path, *, filler: int = 0) -> None:
    """A store file with `QUEUED` queued submissions (and a table of `filler` bytes)."""

    async def fill() -> None:
        store = await open_store(f"sqlite:///{path}")
        try:
            for n in range(QUEUED):
                await queued(store, f"A-{n}")
        finally:
            await store.close()

    asyncio.run(fill())
    if filler:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE filler (x BLOB)")
            db.execute("INSERT INTO filler VALUES (zeroblob(?))", (filler,))


def audit_entries(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM audit_log").fetchone()[0])


def test_the_copy_is_the_snapshot_taken_when_it_started(tmp_path: Path) -> None:
    """Another connection commits between steps (as a gateway would): the backup goes on in
    one pass and holds the store as it was when it began, none of the later commits (a backup
    restarted on each change would copy them, and might never finish)."""
    source, target = tmp_path / "gateway.db", tmp_path / "backup.db"
    a_store(source)
    steps: list[tuple[int, int]] = []
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")

    def progress(done: int, total: int) -> None:
        steps.append((done, total))
        if len(steps) > WRITES:
            return  # bounded: a backup that restarts on each commit still ends, and fails below
        writer.execute(
            "INSERT INTO audit_log (at, actor, role, action, submission_ids) "
            "VALUES (0, 'gateway', 'system', 'test.write', '[]')"
        )

    try:
        report = backup_sqlite(source, target, pages_per_step=1, progress=progress)
    finally:
        writer.close()

    total = steps[-1][1]
    assert [(n, total) for n in range(1, total + 1)] == steps
    assert ({"queued": QUEUED}, total) == (report.by_state, report.pages)
    assert (0, WRITES) == (audit_entries(target), audit_entries(source))
    with sqlite3.connect(target) as db:
        assert [("ok",)] == db.execute("PRAGMA integrity_check").fetchall()
        assert "delete" == db.execute("PRAGMA journal_mode").fetchone()[0]
    assert [] == list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_fails_the_backup_and_leaves_no_file(tmp_path: Path) -> None:
    """A store larger than the target's filesystem: `BackupError` (not a usage error), no
    target and no temporary file; the same target elsewhere then works."""
    source, disk = tmp_path / "gateway.db", tmp_path / "small-disk"
    a_store(source, filler=2 * 1024 * 1024)
    mount_small_fs(disk, "1m")
    try:
        with pytest.raises(BackupError, match=r"disk is full|No space left") as failed:
            backup_sqlite(source, disk / "backup.db", pages_per_step=64)
        assert not failed.value.usage
        assert [] == list(disk.iterdir())
    finally:
        unmount(disk)
    report = backup_sqlite(source, tmp_path / "backup.db")
    assert QUEUED == report.submissions


def test_refusals_are_usage_errors_and_write_nothing(tmp_path: Path) -> None:
    source, target = tmp_path / "gateway.db", tmp_path / "backup.db"
    a_store(source)
    not_a_store = tmp_path / "notes.db"
    not_a_store.write_text("not a database")
    target.write_bytes(b"precious")
    cases = {
        "there is no store at": (tmp_path / "missing.db", tmp_path / "b1.db"),
        "does not exist: create it": (source, tmp_path / "nope" / "b2.db"),
        "exists already": (source, target),
        "cannot read the store at": (not_a_store, tmp_path / "b3.db"),
    }
    for message, (path, into) in cases.items():
        with pytest.raises(BackupError, match=message) as refused:
            backup_sqlite(path, into)
        assert refused.value.usage, message
    with pytest.raises(BackupError, match="is the store itself") as itself:
        backup_sqlite(source, tmp_path / "." / "gateway.db", replace=True)
    assert itself.value.usage
    assert b"precious" == target.read_bytes()
    assert {"gateway.db", "backup.db", "notes.db"} == {p.name for p in tmp_path.iterdir()}


def test_the_backup_is_recorded_in_the_audit_log_of_the_store(tmp_path: Path) -> None:
    source = tmp_path / "gateway.db"
    a_store(source)
    entry = AuditEntry(actor="ops", role="operator", action="store.backup", details={"a": 1})
    recorded = asyncio.run(record_backup(source, entry))
    assert (1, "store.backup") == (recorded.seq, recorded.action)
    assert 1 == audit_entries(source)
