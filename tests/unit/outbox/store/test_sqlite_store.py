"""What only the SQLite store does: group commit, failure isolation inside a shared commit, and
schema migrations. What every store must do is in the contract suite (`tests/contract/`)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.outbox.store.sqlite import MIGRATIONS, SqliteStore
from tests.support.submissions import admit, new_submission


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "outbox.db")
    try:
        yield opened
    finally:
        await opened.close()


async def test_concurrent_writes_share_commits(store: SqliteStore) -> None:
    """Fifty concurrent admissions need far fewer than fifty commits (group commit)."""
    before = store.commit_stats.commits
    await asyncio.gather(*(admit(store, new_submission(f"K-{i}")) for i in range(50)))
    assert store.commit_stats.commits - before < 25


async def test_one_bad_write_fails_alone(store: SqliteStore) -> None:
    """A write that fails inside a shared commit fails only its own caller."""
    committer = store._committer

    def bad(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")

    good = [admit(store, new_submission(f"G-{i}")) for i in range(5)]
    results = await asyncio.gather(committer.submit(bad), *good, return_exceptions=True)
    assert isinstance(results[0], StoreError)
    assert all(not isinstance(r, BaseException) and r.created for r in results[1:])


async def test_reopening_migrates_nothing_twice(tmp_path: Path) -> None:
    """A store opened again stays at the newest schema version (no migration runs twice)."""
    await (await SqliteStore.open(tmp_path / "s.db")).close()
    await (await SqliteStore.open(tmp_path / "s.db")).close()
    with sqlite3.connect(tmp_path / "s.db") as connection:
        assert [(len(MIGRATIONS),)] == connection.execute(
            "SELECT version FROM schema_version"
        ).fetchall()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer gateway is not touched by an older one."""
    await (await SqliteStore.open(tmp_path / "s.db")).close()
    with sqlite3.connect(tmp_path / "s.db") as connection:
        connection.execute("UPDATE schema_version SET version = 999")
    with pytest.raises(StoreError, match="newer than this gateway knows"):
        await SqliteStore.open(tmp_path / "s.db")


async def test_a_bug_in_one_write_fails_it_alone_and_writing_goes_on(store: SqliteStore) -> None:
    """A write raising something no store error would (a bug) fails its caller with a store
    error naming it, its savepoint rolled back; the next writes commit as before."""

    def buggy(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO upstream_token VALUES ('half-done', '', 0, 1)")
        raise TypeError("a bug in a write")

    with pytest.raises(StoreError, match="a bug in a write"):
        await store._committer.submit(buggy)
    assert (await admit(store, new_submission("after-the-bug"))).created
    assert await store.load_token("half-done") is None  # rolled back to its savepoint
