"""Following accepted invoices: `issuance_due`, `record_issuance`, `counts().issuing`, and what
a redelivery, an on-call change, purge and export/import do to a recorded issuance."""

from __future__ import annotations

from gateway.outbox.store import Store
from gateway.outbox.submissions import (
    AuditEntry,
    Issuance,
    IssuanceCheck,
    IssuanceOutcome,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)
from tests.support.submissions import NOW, in_state, queued

S = SubmissionState
O = IssuanceOutcome  # noqa: E741 — a one-letter alias like `S`, not a variable
INTERVAL = 5.0


def issuance(outcome: IssuanceOutcome, serial: str = "S-1", **facts: str) -> Issuance:
    """An issuance with `outcome`, its platform status as Nuonuo numbers it."""
    status = {"issuing": "20", "done": "2", "failed": "22", "signing_failed": "24"}
    return Issuance(outcome, status=status.get(outcome.value), serial=serial, **facts)


def check(row: Submission, value: Issuance, *, at: float = NOW) -> IssuanceCheck:
    """What a lookup at `at` learned, with the next lookup `INTERVAL` later unless final."""
    following = None if value.outcome.final else at + INTERVAL
    return IssuanceCheck(row.id, row.fence, value, next_check_at=following)


async def due(store: Store, *, now: float, operations: tuple[str, ...] = ("issue",)) -> list[str]:
    rows = await store.issuance_due(operations=list(operations), now=now, limit=100)
    return [row.business_key or "" for row in rows]


async def test_only_delivered_rows_of_named_operations_are_due(store: Store) -> None:
    """A delivered row is due from its delivery; queued, failed and other operations' are not."""
    await in_state(store, "A-1", S.DELIVERED, now=NOW)
    await in_state(store, "A-2", S.FAILED, now=NOW)
    await queued(store, "A-3", now=NOW)
    await in_state(store, "R-1", S.DELIVERED, operation="red", now=NOW)
    await in_state(store, "A-4", S.DELIVERED, now=NOW + 10)
    assert [] == await due(store, now=NOW - 1)
    assert ["A-1"] == await due(store, now=NOW)
    assert ["A-1", "A-4"] == await due(store, now=NOW + 10)
    assert ["A-1", "A-4", "R-1"] == sorted(
        await due(store, now=NOW + 10, operations=("issue", "red"))
    )


async def test_issuing_is_recorded_and_due_again_after_the_interval(store: Store) -> None:
    """An issuing invoice is stored, counted as issuing, and due again at its next check."""
    row = await in_state(store, "A-1", S.DELIVERED, now=NOW)
    recorded = await store.record_issuance(
        [check(row, issuance(O.ISSUING, checked_at=NOW))], now=NOW
    )
    assert [row.id] == [r.id for r in recorded]
    stored = await store.get(row.id)
    assert stored is not None
    assert issuance(O.ISSUING, checked_at=NOW) == stored.issuance
    assert (S.DELIVERED, row.fence, row.updated_at) == (
        stored.state,
        stored.fence,
        stored.updated_at,
    )
    assert [] == await due(store, now=NOW + INTERVAL - 0.1)
    assert ["A-1"] == await due(store, now=NOW + INTERVAL)
    assert {"issue": 1} == (await store.counts()).issuing


async def test_done_keeps_it_delivered_with_its_invoice_number(store: Store, peer: Store) -> None:
    """Status done: delivered, invoice number and PDF recorded, never due again (any process)."""
    row = await in_state(store, "A-1", S.DELIVERED, now=NOW)
    done = issuance(O.DONE, invoice_number="24310000000000000001", pdf_url="https://x/1.pdf")
    await store.record_issuance([check(row, done)], now=NOW + 1)
    stored = await peer.get(row.id)
    assert stored is not None
    assert (S.DELIVERED, done) == (stored.state, stored.issuance)
    assert [] == await due(peer, now=NOW + 10_000)
    assert {} == (await peer.counts()).issuing


async def test_failed_turns_the_row_issue_failed(store: Store) -> None:
    """Status failed or signing failed: issue_failed (final), with the cause as its last error."""
    failed_row = await in_state(store, "A-1", S.DELIVERED, now=NOW)
    unsigned_row = await in_state(store, "A-2", S.DELIVERED, now=NOW)
    await store.record_issuance(
        [
            check(failed_row, issuance(O.FAILED, fail_cause="购方税号校验失败")),
            check(unsigned_row, issuance(O.SIGNING_FAILED, "S-2", fail_cause="签章失败")),
        ],
        now=NOW + 7,
    )
    failed = await store.get(failed_row.id)
    unsigned = await store.get(unsigned_row.id)
    assert failed is not None
    assert unsigned is not None
    assert (S.ISSUE_FAILED, "issuance_failed", NOW + 7) == (
        failed.state,
        failed.last_error_class,
        failed.updated_at,
    )
    assert "购方税号校验失败" in (failed.last_error or "")
    assert (S.ISSUE_FAILED, "issuance_signing_failed") == (
        unsigned.state,
        unsigned.last_error_class,
    )
    assert [] == await due(store, now=NOW + 10_000)
    assert 2 == await store.count(SubmissionQuery(states=(S.ISSUE_FAILED,)))
    assert 2 == (await store.counts()).by_state[S.ISSUE_FAILED]


async def test_a_check_under_a_stale_fence_or_state_is_dropped(store: Store) -> None:
    """A check whose row on-call moved on (fence bumped, state changed) records nothing."""
    row = await in_state(store, "A-1", S.DELIVERED, now=NOW)
    audit = AuditEntry(actor="ops", role="operator", action="force-resend", reason="test")
    moved = await store.transition(
        row.id, row.fence, Transition(S.QUEUED, next_attempt_at=NOW), now=NOW, audit=audit
    )
    assert moved is not None
    assert [] == list(await store.record_issuance([check(row, issuance(O.FAILED))], now=NOW + 1))
    stored = await store.get(row.id)
    assert stored is not None
    assert (S.QUEUED, None) == (stored.state, stored.issuance)


async def test_a_new_delivery_starts_a_new_issuance(store: Store) -> None:
    """Delivered again (after a forced resend): the old issuance is cleared, due again at once."""
    row = await in_state(store, "A-1", S.DELIVERED, now=NOW)
    await store.record_issuance([check(row, issuance(O.DONE))], now=NOW)
    again = await store.transition(row.id, row.fence, Transition(S.DELIVERED), now=NOW + 50)
    assert again is not None
    assert (None, ["A-1"]) == (again.issuance, await due(store, now=NOW + 50))


async def test_issue_failed_rows_are_purged_after_retention(store: Store) -> None:
    """issue_failed is final: purged like delivered rows once past retention."""
    row = await in_state(store, "A-1", S.DELIVERED, now=NOW)
    await store.record_issuance([check(row, issuance(O.FAILED))], now=NOW)
    assert 1 == await store.purge(finished_before=NOW + 1)
    assert None is await store.get(row.id)


async def test_export_and_import_keep_the_issuance(store: Store, empty_store: Store) -> None:
    """An exported row carries its issuance; imported, one still issuing is due again."""
    issuing_row = await in_state(store, "A-1", S.DELIVERED, now=NOW)
    done_row = await in_state(store, "A-2", S.DELIVERED, now=NOW)
    await store.record_issuance(
        [check(issuing_row, issuance(O.ISSUING)), check(done_row, issuance(O.DONE, "S-2"))],
        now=NOW,
    )
    rows = [row async for row in store.stream(SubmissionQuery())]
    restored = [Submission.from_record(row.to_record()) for row in rows]
    audit = AuditEntry(actor="ops", role="operator", action="import")
    await empty_store.import_rows(restored, audit=audit)
    imported = await empty_store.get(done_row.id)
    assert imported is not None
    assert issuance(O.DONE, "S-2") == imported.issuance
    assert ["A-1"] == await due(empty_store, now=NOW + 1)
