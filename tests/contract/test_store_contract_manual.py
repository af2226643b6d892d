"""Issued by hand (docs/manual-issuance.md): `issued_manually` is final on every store — never
claimed, no longer holding back its ordering key, purged with the other final rows — and a row
being delivered cannot be marked, by its state or, mid-action, by its fence."""

from __future__ import annotations

import pytest

from gateway.errors import ActionNotAllowed
from gateway.jsonpointer import JsonPointer
from gateway.outbox.oncall import Actor, OnCall
from gateway.outbox.store import Store
from gateway.outbox.submissions import (
    MANUAL_ISSUANCE,
    SubmissionState,
    Transition,
)
from tests.contract.test_store_contract_fences import on_call
from tests.support.fakes import FakeClock
from tests.support.submissions import LEASE, NOW, OWNER, in_state, queued

S = SubmissionState
OPERATOR = Actor("alice", "operator")
NUMBER = "24112000000012345678"


def oncall(store: Store) -> OnCall:
    return OnCall(
        store=store,
        clock=FakeClock(NOW + 5),
        wake_dispatcher=lambda: None,
        protected_pointers={"issue": (JsonPointer("/order/orderNo"),)},
    )


async def test_a_marked_row_is_final_with_its_invoice_number_and_audited(store: Store) -> None:
    """Marked: issued_manually, the number in its result, nothing scheduled, audited."""
    row = await queued(store, "A-1")
    marked = await oncall(store).mark_issued(row.id, OPERATOR, NUMBER, "issued in the portal")
    assert (S.ISSUED_MANUALLY, True, None) == (
        marked.state,
        marked.state.final,
        marked.next_attempt_at,
    )
    assert marked.result is not None
    assert NUMBER == marked.result[MANUAL_ISSUANCE]["invoice_number"]
    assert marked == await store.get(row.id)
    [entry], _ = await store.audit_log(limit=1, cursor=None)
    assert ("mark-issued", (row.id,), NUMBER) == (
        entry.action,
        entry.submission_ids,
        (entry.details or {}).get("invoice_number"),
    )


async def test_a_marked_row_is_never_claimed_and_releases_its_ordering_key(store: Store) -> None:
    """The marked head of an ordering key is never claimed (so neither sent nor reconciled) nor
    followed for issuance; the row behind it now is claimed."""
    head = await queued(store, "A-1", ordering="K")
    behind = await queued(store, "A-2", ordering="K", now=NOW + 1)
    await oncall(store).mark_issued(head.id, OPERATOR, NUMBER, "issued in the portal")
    claimed = await store.claim_due(now=NOW + 60, limit=10, owner=OWNER, lease_seconds=LEASE)
    assert [behind.id] == [row.id for row in claimed]
    assert [] == list(await store.issuance_due(operations=["issue"], now=NOW + 60, limit=10))


async def test_queued_dead_unknown_and_failed_rows_can_be_marked(store: Store) -> None:
    actions = oncall(store)
    for number, state in enumerate((S.QUEUED, S.DEAD, S.UNKNOWN, S.FAILED)):
        row = await in_state(store, f"A-{number}", state)
        marked = await actions.mark_issued(row.id, OPERATOR, NUMBER, "issued in the portal")
        assert S.ISSUED_MANUALLY is marked.state, state


async def test_other_states_cannot_be_marked(store: Store) -> None:
    """A row being sent, delivered, discarded or already marked is refused and unchanged."""
    actions = oncall(store)
    for number, state in enumerate((S.DELIVERING, S.DELIVERED, S.DISCARDED, S.ISSUED_MANUALLY)):
        row = await in_state(store, f"A-{number}", state)
        with pytest.raises(ActionNotAllowed, match="cannot be marked issued"):
            await actions.mark_issued(row.id, OPERATOR, NUMBER, "issued in the portal")
        assert row == await store.get(row.id), state


async def test_a_row_claimed_while_being_marked_is_not_marked(store: Store) -> None:
    """On-call read the row queued; the dispatcher claimed it before the mark was written: the
    mark (with the fence on-call read) changes nothing and records no audit entry."""
    row = await queued(store, "A-1")
    [claimed] = await store.claim_due(now=NOW + 1, limit=1, owner=OWNER, lease_seconds=LEASE)
    change = Transition(S.ISSUED_MANUALLY, result={MANUAL_ISSUANCE: {"invoice_number": NUMBER}})
    audit = on_call("mark-issued", row.id)
    assert await store.transition(row.id, row.fence, change, now=NOW + 2, audit=audit) is None
    assert claimed == await store.get(row.id)
    assert S.DELIVERING is claimed.state
    assert ([], None) == await store.audit_log(limit=5, cursor=None)


async def test_marked_rows_are_purged_like_other_final_rows(store: Store) -> None:
    """Retention deletes an issued_manually row last updated before the cut-off."""
    row = await queued(store, "A-1")
    await oncall(store).mark_issued(row.id, OPERATOR, NUMBER, "issued in the portal")
    assert 1 == await store.purge(finished_before=NOW + 60)
    assert await store.get(row.id) is None
