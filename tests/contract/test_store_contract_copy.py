"""What `invoice-gateway store copy` relies on: `merge_rows` and `merge_audit` store what they
are given once (a copy may run again after an interruption), and `token_rows` lists tokens."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.errors import StoreError
from gateway.outbox.store import Store, StoredToken
from gateway.outbox.submissions import AuditEntry, Submission, SubmissionQuery, SubmissionState
from tests.support.submissions import LEASE, NOW, OWNER, admit, in_state, new_submission, queued


async def exported(store: Store) -> list[Submission]:
    return [row async for row in store.stream(SubmissionQuery())]


async def varied_rows(store: Store) -> list[Submission]:
    """Rows queued (behind an ordering key), unknown, dead, delivering and delivered."""
    await queued(store, "Q-1", ordering="ORD-1", now=NOW)
    await queued(store, "Q-1-R", ordering="ORD-1", now=NOW + 1)
    await in_state(store, "U-1", SubmissionState.UNKNOWN, next_attempt_at=None, now=NOW + 2)
    await in_state(store, "X-1", SubmissionState.DEAD, error_class="http_5xx", now=NOW + 3)
    await admit(store, new_submission("F-1", tenant="acme"), now=NOW + 4)
    await in_state(store, "D-1", SubmissionState.DELIVERED, now=NOW + 5)
    return await exported(store)


def entry(action: str, *, seq: int, at: float) -> AuditEntry:
    return AuditEntry(
        actor="alice",
        role="operator",
        action=action,
        submission_ids=("sub_1",),
        reason="copied",
        details={"note": "发票"},
        at=at,
        seq=seq,
    )


async def test_merged_rows_are_stored_as_given(store: Store, empty_store: Store) -> None:
    """Every row absent from the store is stored exactly as given, and counted."""
    rows = await varied_rows(store)
    assert len(rows) == await empty_store.merge_rows(rows)
    assert rows == await exported(empty_store)
    assert rows[3] == await empty_store.get(rows[3].id)


async def test_rows_already_present_are_left_alone(store: Store, empty_store: Store) -> None:
    """A row whose id the store holds is skipped, whatever the given copy says."""
    first, second = await queued(store, "A-1"), await queued(store, "A-2")
    await empty_store.merge_rows([first])
    changed = dataclasses.replace(first, state=SubmissionState.DEAD, attempts=9)
    assert 1 == await empty_store.merge_rows([changed, second])
    assert [first, second] == await exported(empty_store)


async def test_merging_again_stores_nothing_new(store: Store, empty_store: Store) -> None:
    """A copy run again after it finished stores nothing a second time."""
    rows = await varied_rows(store)
    await empty_store.merge_rows(rows)
    assert 0 == await empty_store.merge_rows(rows)
    assert rows == await exported(empty_store)


async def test_merged_rows_keep_the_order_given(store: Store, empty_store: Store) -> None:
    """Acceptance order follows the calls and the rows within each: the head of an ordering
    key merged first is still claimed before the row behind it."""
    rows = [await queued(store, f"A-{index}", ordering="ORD-1") for index in range(4)]
    await empty_store.merge_rows(rows[:2])
    await empty_store.merge_rows(rows[2:])
    assert rows == await exported(empty_store)
    claimed = await empty_store.claim_due(now=NOW + 1, limit=10, owner=OWNER, lease_seconds=LEASE)
    assert [rows[0].id] == [row.id for row in claimed]


async def test_a_key_held_by_another_id_fails_the_merge(store: Store, empty_store: Store) -> None:
    """A row whose idempotency key another submission holds: `StoreError`, and nothing of the
    call is stored (one transaction)."""
    held = await queued(store, "A-1")
    await empty_store.merge_rows([held])
    fresh = await queued(store, "A-2")
    clash = dataclasses.replace(held, id="sub_other")
    with pytest.raises(StoreError):
        await empty_store.merge_rows([fresh, clash])
    assert [held] == await exported(empty_store)


async def test_merged_audit_entries_keep_their_numbers_and_times(store: Store) -> None:
    """Entries are stored under their own sequence numbers and times, newest first as ever."""
    entries = [entry("pause", seq=3, at=NOW), entry("resume", seq=7, at=NOW + 60)]
    assert 2 == await store.merge_audit(entries)
    assert (entries[::-1], None) == await store.audit_log(limit=10, cursor=None)


async def test_audit_numbers_already_held_are_skipped(store: Store) -> None:
    """An entry whose number the store holds is skipped; the others are stored."""
    await store.merge_audit([entry("pause", seq=3, at=NOW)])
    again = [entry("changed", seq=3, at=NOW + 1), entry("resume", seq=4, at=NOW + 2)]
    assert 1 == await store.merge_audit(again)
    logged, _ = await store.audit_log(limit=10, cursor=None)
    assert [(4, "resume"), (3, "pause")] == [(e.seq, e.action) for e in logged]


async def test_entries_recorded_after_a_merge_are_numbered_above_it(store: Store) -> None:
    """`record_audit` goes on above the highest merged number, whatever the store held."""
    await store.record_audit(entry("before", seq=0, at=NOW))
    await store.merge_audit([entry("copied", seq=40, at=NOW), entry("copied", seq=41, at=NOW)])
    recorded = await store.record_audit(entry("after", seq=0, at=NOW))
    assert recorded.seq > 41
    logged, _ = await store.audit_log(limit=1, cursor=None)
    assert [recorded] == logged


async def test_token_rows_lists_every_saved_token_by_key(store: Store) -> None:
    """Every saved token (the latest under each key), sorted by key; the readiness probe's
    row is not one of them."""
    await store.save_token("scheme:b", StoredToken("tok-b", NOW, 60.0))
    await store.save_token("scheme:a", StoredToken("tok-old", NOW, 60.0))
    await store.save_token("scheme:a", StoredToken("tok-a", NOW + 1, 120.0))
    await store.check_writable()
    assert [
        ("scheme:a", StoredToken("tok-a", NOW + 1, 120.0)),
        ("scheme:b", StoredToken("tok-b", NOW, 60.0)),
    ] == list(await store.token_rows())


async def test_a_store_without_tokens_lists_none(store: Store) -> None:
    """No token saved: no rows."""
    assert [] == list(await store.token_rows())
