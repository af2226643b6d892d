"""Fences: a change applies only while the writer's fence is current; on-call changes bump it."""

from __future__ import annotations

import asyncio

from gateway.outbox.store import Store
from gateway.outbox.submissions import (
    AuditEntry,
    StoredResponse,
    SubmissionState,
    Transition,
)
from tests.contract.factories import Database
from tests.support.submissions import NOW, admit, in_state, new_submission

DELIVERED = Transition(
    SubmissionState.DELIVERED,
    attempts_delta=1,
    response=StoredResponse(200, (("Content-Type", "application/json"),), b'{"code":"E0000"}'),
    result={"invoiceSerialNum": "23110000000000000001"},
)


def on_call(action: str, submission_id: str) -> AuditEntry:
    return AuditEntry(
        actor="alice", role="operator", action=action, submission_ids=(submission_id,), reason="r"
    )


async def test_the_current_fence_applies_the_change(store: Store) -> None:
    """With the current fence the change is applied, stored, and the stored row returned."""
    row = (await admit(store, new_submission("A-1"))).submission
    changed = await store.transition(row.id, row.fence, DELIVERED, now=NOW + 2)
    assert changed is not None
    assert (SubmissionState.DELIVERED, 1, NOW + 2, NOW + 2) == (
        changed.state,
        changed.attempts,
        changed.updated_at,
        changed.delivered_at,
    )
    assert (DELIVERED.response, DELIVERED.result) == (changed.response, changed.result)
    assert changed == await store.get(row.id)


async def test_a_stale_fence_changes_nothing(store: Store) -> None:
    """A writer whose fence is not the row's gets None and the row stays as it was."""
    row = (await admit(store, new_submission("A-1"))).submission
    assert await store.transition(row.id, row.fence + 1, DELIVERED, now=NOW) is None
    assert row == await store.get(row.id)


async def test_an_unknown_id_changes_nothing(store: Store) -> None:
    """A transition of a submission that does not exist returns None."""
    assert await store.transition("sub_missing", 0, DELIVERED, now=NOW) is None


async def test_a_routine_change_keeps_the_fence(store: Store) -> None:
    """Without an audit entry the fence stays: the holder may write again (e.g. back-off)."""
    row = (await admit(store, new_submission("A-1"))).submission
    retry = Transition(SubmissionState.QUEUED, attempts_delta=1, next_attempt_at=NOW + 5)
    requeued = await store.transition(row.id, row.fence, retry, now=NOW)
    assert requeued is not None
    assert row.fence == requeued.fence


async def test_leaving_delivering_clears_the_lease(store: Store) -> None:
    """A row that is no longer `delivering` is leased to nobody."""
    row = (await admit(store, new_submission("A-1"))).submission
    retry = Transition(SubmissionState.QUEUED, attempts_delta=1, next_attempt_at=NOW + 5)
    changed = await store.transition(row.id, row.fence, retry, now=NOW)
    assert changed is not None
    assert (None, None) == (changed.lease_owner, changed.lease_expires_at)


async def test_an_on_call_change_bumps_the_fence(store: Store) -> None:
    """After an audited change, the previous fence can no longer write."""
    row = await in_state(store, "A-1", SubmissionState.DEAD)
    replay = Transition(SubmissionState.QUEUED, acknowledged=True, next_attempt_at=NOW)
    replayed = await store.transition(
        row.id, row.fence, replay, now=NOW, audit=on_call("replay", row.id)
    )
    assert replayed is not None
    assert replayed.fence > row.fence
    assert await store.transition(row.id, row.fence, DELIVERED, now=NOW) is None
    assert SubmissionState.QUEUED == (await store.get(row.id) or row).state


async def test_an_on_call_change_writes_its_audit_entry(store: Store) -> None:
    """The audit entry of an on-call change is in the log once the change is."""
    row = await in_state(store, "A-1", SubmissionState.DEAD)
    discard = Transition(SubmissionState.DISCARDED, error_class="discarded", error="by alice")
    await store.transition(
        row.id, row.fence, discard, now=NOW + 9, audit=on_call("discard", row.id)
    )
    entries, _ = await store.audit_log(limit=10, cursor=None)
    assert [("discard", (row.id,), "alice", NOW + 9)] == [
        (entry.action, entry.submission_ids, entry.actor, entry.at) for entry in entries
    ]


async def test_a_refused_on_call_change_writes_no_audit_entry(store: Store) -> None:
    """Change and audit entry are one transaction: a stale fence writes neither."""
    row = await in_state(store, "A-1", SubmissionState.DEAD)
    discard = Transition(SubmissionState.DISCARDED)
    refused = await store.transition(
        row.id, row.fence + 1, discard, now=NOW, audit=on_call("discard", row.id)
    )
    assert refused is None
    assert ([], None) == await store.audit_log(limit=10, cursor=None)


async def test_racing_on_call_changes_apply_once(store: Store, peer: Store) -> None:
    """Two operators acting on the same row with the same fence (through two gateways): one
    change applies, the other is refused, and only one audit entry is written."""
    row = await in_state(store, "A-1", SubmissionState.DEAD)
    replay = Transition(SubmissionState.QUEUED, acknowledged=True, next_attempt_at=NOW)
    discard = Transition(SubmissionState.DISCARDED)
    results = await asyncio.gather(
        store.transition(row.id, row.fence, replay, now=NOW, audit=on_call("replay", row.id)),
        peer.transition(row.id, row.fence, discard, now=NOW, audit=on_call("discard", row.id)),
    )
    applied = [result for result in results if result is not None]
    entries, _ = await store.audit_log(limit=10, cursor=None)
    assert 1 == len(applied)
    assert [applied[0].state] == [
        {"replay": SubmissionState.QUEUED, "discard": SubmissionState.DISCARDED}[entry.action]
        for entry in entries
    ]
    assert applied[0] == await store.get(row.id)


async def test_an_on_call_payload_edit_replaces_the_body(store: Store) -> None:
    """A transition with `body` stores the new payload (and the audit entry's details)."""
    row = await in_state(store, "A-1", SubmissionState.DEAD)
    edit = Transition(SubmissionState.DEAD, body=b'{"order":{"orderNo":"A-1","x":1}}')
    details = {"pointer": "/order/x", "before": None, "after": 1}
    audit = AuditEntry("alice", "operator", "edit", (row.id,), details=details)
    edited = await store.transition(row.id, row.fence, edit, now=NOW, audit=audit)
    entries, _ = await store.audit_log(limit=1, cursor=None)
    assert edited is not None
    assert edit.body == edited.body
    assert details == entries[0].details


async def test_resetting_attempts_and_age_starts_them_afresh(store: Store) -> None:
    """`reset_attempts` sets attempts to the delta; `restart_age` counts age from now."""
    row = await in_state(store, "A-1", SubmissionState.DEAD)
    requeue = Transition(
        SubmissionState.QUEUED, reset_attempts=True, restart_age=True, next_attempt_at=NOW + 60
    )
    fresh = await store.transition(
        row.id, row.fence, requeue, now=NOW + 60, audit=on_call("requeue", row.id)
    )
    assert fresh is not None
    assert (1, 0, NOW + 60) == (row.attempts, fresh.attempts, fresh.age_from)


async def test_a_change_is_durable(database: Database, store: Store) -> None:
    """A returned transition survives a restart."""
    row = (await admit(store, new_submission("A-1"))).submission
    changed = await store.transition(row.id, row.fence, DELIVERED, now=NOW)
    again = await database.reopen(store)
    assert changed == await again.get(row.id)
