"""The checks a run must pass: every acknowledged submission in the store."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from gateway.tools.bench import (
    BenchError,
    DurabilityCheck,
    count_submissions,
)


def test_durability_holds_when_the_store_has_at_least_every_acknowledged_row() -> None:
    """Rows >= 202s is fine (requests cut off at the end may be stored unanswered); fewer is not."""
    assert DurabilityCheck(rows=105, acknowledged=100).ok
    assert DurabilityCheck(rows=100, acknowledged=100).ok
    short = DurabilityCheck(rows=98, acknowledged=100)
    assert not short.ok
    assert "98 rows for 100 acknowledged: MISSING 2" == short.describe()


def test_count_submissions_reads_the_submission_table(tmp_path: Path) -> None:
    """The stopped gateway's SQLite file is counted directly."""
    path = tmp_path / "gateway.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE submission (seq INTEGER PRIMARY KEY, id TEXT)")
        db.executemany("INSERT INTO submission (id) VALUES (?)", [(str(i),) for i in range(7)])
        db.commit()
    assert 7 == count_submissions(path)


def test_count_submissions_without_a_store_or_table_is_an_error(tmp_path: Path) -> None:
    """No file, or no submission table, is a failed check rather than zero rows."""
    with pytest.raises(BenchError, match="left no store"):
        count_submissions(tmp_path / "missing.db")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(BenchError, match="cannot count"):
        count_submissions(empty)
