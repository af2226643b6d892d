"""The SQLite outbox store on a real file: admission, fences, reclaim, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from gateway.errors import StoreError
from gateway.outbox.store.sqlite import MIGRATIONS, SqliteStore
from gateway.outbox.submissions import NewSubmission, SubmissionState, Transition, fingerprint

NOW = 1_800_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "outbox.db")
    try:
        yield opened
    finally:
        await opened.close()


def new(
    key: str | None = "A-1",
    *,
    ordering: str | None = None,
    tenant: str = "demo",
    body: bytes = b'{"a":1}',
) -> NewSubmission:
    return NewSubmission(
        tenant=tenant,
        operation="issue",
        idempotency_key=key,
        fingerprint=fingerprint(body),
        business_key=key,
        ordering_key=ordering,
        method="POST",
        path="/open/v1/services",
        query=(),
        headers=(("method", "issue"),),
        body=body,
        request_id="r1",
    )


async def admit(store: SqliteStore, submission: NewSubmission, *, queue: bool = False):  # type: ignore[no-untyped-def]
    return await store.admit(submission, queue=queue, owner="me", lease_seconds=30, now=NOW)


async def test_admit_is_durable_and_forwardable(store: SqliteStore) -> None:
    """A new submission is stored `delivering`, leased to the caller, not yet acknowledged."""
    admission = await admit(store, new())
    row = await store.get(admission.submission.id)
    assert admission.created
    assert row is not None
    assert (SubmissionState.DELIVERING, "me", False) == (
        row.state,
        row.lease_owner,
        row.acknowledged,
    )


async def test_same_key_returns_the_existing_row(store: SqliteStore) -> None:
    """A second admission with the same tenant, operation and key returns the first, untouched."""
    first = await admit(store, new())
    second = await admit(store, new(body=b'{"a":2}'))
    assert not second.created
    assert first.submission.id == second.submission.id


async def test_same_key_in_one_batch_is_deduplicated(store: SqliteStore) -> None:
    """Concurrent admissions sharing a commit still see each other: one row."""
    results = await asyncio.gather(*(admit(store, new()) for _ in range(20)))
    assert 1 == sum(r.created for r in results)
    assert 1 == len({r.submission.id for r in results})


async def test_other_tenant_same_key_is_separate(store: SqliteStore) -> None:
    """Keys are scoped by tenant."""
    first = await admit(store, new())
    other = await admit(store, new(tenant="acme"))
    assert other.created
    assert first.submission.id != other.submission.id


async def test_ordering_key_with_unresolved_predecessor_is_queued(store: SqliteStore) -> None:
    """A submission behind an unresolved one with the same ordering key waits, even when healthy."""
    await admit(store, new("A-1", ordering="A-1"))
    red = await admit(store, new("A-1-R", ordering="A-1"))
    assert (SubmissionState.QUEUED, True) == (red.submission.state, red.submission.acknowledged)


async def test_queue_flag_queues_and_acknowledges(store: SqliteStore) -> None:
    """With the circuit open the row is queued at once, due now."""
    admission = await admit(store, new(), queue=True)
    assert SubmissionState.QUEUED == admission.submission.state
    assert NOW == admission.submission.next_attempt_at


async def test_transition_needs_the_current_fence(store: SqliteStore) -> None:
    """A holder whose fence is stale cannot write."""
    row = (await admit(store, new())).submission
    done = Transition(SubmissionState.DELIVERED, attempts_delta=1)
    assert await store.transition(row.id, row.fence + 1, done, now=NOW) is None
    changed = await store.transition(row.id, row.fence, done, now=NOW)
    assert changed is not None
    assert (SubmissionState.DELIVERED, None, 1) == (
        changed.state,
        changed.lease_owner,
        changed.attempts,
    )


async def test_reclaim_everything_makes_in_flight_rows_unknown(store: SqliteStore) -> None:
    """After a crash every `delivering` row may have been sent: unknown, acknowledged, fenced."""
    row = (await admit(store, new())).submission
    assert 1 == await store.reclaim(now=NOW, everything=True)
    after = await store.get(row.id)
    assert after is not None
    assert (SubmissionState.UNKNOWN, True, True) == (
        after.state,
        after.maybe_sent,
        after.acknowledged,
    )
    assert row.fence + 1 == after.fence
    late = Transition(SubmissionState.DELIVERED)
    assert await store.transition(row.id, row.fence, late, now=NOW) is None


async def test_reclaim_only_expired_leases(store: SqliteStore) -> None:
    """Without `everything`, only leases past their expiry are reclaimed."""
    await admit(store, new())
    assert 0 == await store.reclaim(now=NOW + 10)
    assert 1 == await store.reclaim(now=NOW + 31)


async def test_purge_keeps_unresolved_rows(store: SqliteStore) -> None:
    """Retention deletes old final rows, never queued or dead ones."""
    done = (await admit(store, new("A"))).submission
    await store.transition(done.id, done.fence, Transition(SubmissionState.DELIVERED), now=NOW)
    queued = (await admit(store, new("B"), queue=True)).submission
    dead = (await admit(store, new("C"))).submission
    await store.transition(dead.id, dead.fence, Transition(SubmissionState.DEAD), now=NOW)
    assert 1 == await store.purge(finished_before=NOW + 1)
    assert await store.get(done.id) is None
    assert await store.get(queued.id) is not None
    assert await store.get(dead.id) is not None


async def test_concurrent_writes_share_commits(store: SqliteStore) -> None:
    """Fifty concurrent admissions need far fewer than fifty commits (group commit)."""
    before = store.commit_stats.commits
    await asyncio.gather(*(admit(store, new(f"K-{i}")) for i in range(50)))
    assert store.commit_stats.commits - before < 25


async def test_one_bad_write_fails_alone(store: SqliteStore) -> None:
    """A write that fails inside a shared commit fails only its own caller."""
    committer = store._committer

    async def bad(db: aiosqlite.Connection) -> None:
        await db.execute("INSERT INTO no_such_table VALUES (1)")

    good = [admit(store, new(f"G-{i}")) for i in range(5)]
    results = await asyncio.gather(committer.submit(bad), *good, return_exceptions=True)
    assert isinstance(results[0], StoreError)
    assert all(not isinstance(r, BaseException) and r.created for r in results[1:])


async def test_reopen_keeps_data_and_schema(tmp_path: Path) -> None:
    """Reopening migrates nothing twice and keeps what was stored."""
    first = await SqliteStore.open(tmp_path / "s.db")
    row = (await admit(first, new())).submission
    await first.close()
    second = await SqliteStore.open(tmp_path / "s.db")
    try:
        assert await second.get(row.id) is not None
    finally:
        await second.close()
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


async def test_oldest_waiting_counts_unknown_rows_due_for_reconciliation(
    store: SqliteStore,
) -> None:
    """An answer-lost submission waiting to be reconciled is waiting too; a parked one is not."""
    row = (await admit(store, new("A"))).submission
    due = Transition(SubmissionState.UNKNOWN, maybe_sent=True, next_attempt_at=NOW + 5)
    await store.transition(row.id, row.fence, due, now=NOW)
    assert NOW == (await store.counts()).oldest_queued_at
    parked = await store.get(row.id)
    assert parked is not None
    await store.transition(parked.id, parked.fence, Transition(SubmissionState.UNKNOWN), now=NOW)
    assert (await store.counts()).oldest_queued_at is None


async def test_clock_stepped_back_across_a_restart_does_not_stall_the_outbox(
    store: SqliteStore,
) -> None:
    """Rows written an hour 'ahead' (the clock stepped back while the gateway was down) are
    rescheduled by as much, once; delivered rows keep their history."""
    waiting = (await admit(store, new("A"), queue=True)).submission
    done = (await admit(store, new("B"))).submission
    await store.transition(done.id, done.fence, Transition(SubmissionState.DELIVERED), now=NOW)
    before = await store.get(waiting.id)
    assert before is not None
    assert before.next_attempt_at is not None
    behind = NOW - 3600
    assert 3600 == await store.rebase(now=behind)
    after, history = await store.get(waiting.id), await store.get(done.id)
    assert after is not None
    assert history is not None
    assert before.next_attempt_at - 3600 == after.next_attempt_at
    assert NOW == history.updated_at
    assert 0 == await store.rebase(now=behind)  # a second restart shifts nothing more
    assert 0 == await store.rebase(now=NOW + 3600)  # a step forward: rows are just due
