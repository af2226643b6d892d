"""What readiness and metrics ask of the store: `check_writable` and `observe_commits`."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StoreError
from gateway.outbox.store import Store, StoredToken
from gateway.outbox.submissions import AuditEntry, SubmissionQuery, SubmissionState, Transition
from tests.contract.factories import Database
from tests.support.submissions import NOW, admit, new_submission


async def test_an_open_store_passes_the_check_which_leaves_nothing_behind(store: Store) -> None:
    """`check_writable` returns quietly, and leaves no submission, audit entry or count behind."""
    await store.check_writable()
    counts = await store.counts()
    assert (0, [], {0}, None) == (
        await store.count(SubmissionQuery()),
        (await store.audit_log(limit=10, cursor=None))[0],
        set(counts.by_state.values()),
        counts.oldest_queued_at,
    )


async def test_a_closed_store_is_not_writable(database: Database, store: Store) -> None:
    """Once closed, `check_writable` raises `StoreError` (readiness then says why)."""
    await database.close(store)
    with pytest.raises(StoreError):
        await store.check_writable()


async def test_every_write_is_reported_once_after_its_commit(store: Store) -> None:
    """The commit observer hears of each write (admit, transition, claim, audit, token, probe)
    once, with a duration; reads report nothing."""
    reports: list[tuple[int, float]] = []
    store.observe_commits(lambda writes, seconds: reports.append((writes, seconds)))
    row = (await admit(store, new_submission("A-1"))).submission
    await store.transition(row.id, row.fence, Transition(SubmissionState.DELIVERED), now=NOW)
    await store.claim_due(now=NOW, limit=10, owner="gateway-1", lease_seconds=30)
    await store.record_audit(AuditEntry(actor="alice", role="operator", action="pause"))
    await store.save_token("scheme:key", StoredToken("tok", NOW, 60))
    await store.check_writable()
    await store.get(row.id)
    await store.counts()
    await store.load_token("scheme:key")
    assert 6 == sum(writes for writes, _ in reports)
    assert all(seconds >= 0 for _, seconds in reports)


async def test_concurrent_writes_are_each_reported(store: Store) -> None:
    """Writes sharing commits (or not) add up to as many as were made."""
    reports: list[int] = []
    store.observe_commits(lambda writes, _seconds: reports.append(writes))
    await asyncio.gather(*(admit(store, new_submission(f"A-{index}")) for index in range(30)))
    assert 30 == sum(reports)


async def test_a_later_observer_replaces_the_earlier_one(store: Store) -> None:
    """There is one commit observer: registering another stops reports to the first."""
    first: list[int] = []
    second: list[int] = []
    store.observe_commits(lambda writes, _seconds: first.append(writes))
    store.observe_commits(lambda writes, _seconds: second.append(writes))
    await admit(store, new_submission("A-1"))
    assert ([], [1]) == (first, second)
