"""Export and import: `stream` yields rows oldest first; `import_rows` restores them exactly,
only into an empty store, all or nothing."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.errors import StoreError
from gateway.outbox.store import Store, StoredToken
from gateway.outbox.submissions import (
    AuditEntry,
    StoredResponse,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)
from tests.support.submissions import LEASE, NOW, OWNER, admit, in_state, new_submission, queued

IMPORT = AuditEntry(actor="alice", role="admin", action="import", details={"rows": 0}, at=NOW)


async def exported(store: Store, query: SubmissionQuery | None = None) -> list[Submission]:
    return [row async for row in store.stream(query or SubmissionQuery())]


async def varied_rows(store: Store) -> list[Submission]:
    """Rows queued, delivering, unknown, dead and delivered, with a response, a result, bumped
    fences and an ordering key; as exported."""
    rows = [
        await queued(store, "Q-1", ordering="ORD-1", now=NOW),
        await queued(store, "Q-1-R", ordering="ORD-1", now=NOW + 1),
        await in_state(store, "U-1", SubmissionState.UNKNOWN, next_attempt_at=None, now=NOW + 2),
        await in_state(store, "X-1", SubmissionState.DEAD, error_class="http_5xx", now=NOW + 3),
        (await admit(store, new_submission("F-1", tenant="acme"), now=NOW + 4)).submission,
    ]
    done = (await admit(store, new_submission("D-1", body=b"\x00not json"), now=NOW + 5)).submission
    answer = StoredResponse(200, (("Content-Type", "application/json"),), b'{"code":"E0000"}')
    delivered = Transition(
        SubmissionState.DELIVERED, attempts_delta=2, response=answer, result={"serial": "1"}
    )
    claimed = await store.claim_due(now=NOW + 6, limit=1, owner=OWNER, lease_seconds=LEASE)
    assert [rows[0].id] == [row.id for row in claimed]
    await store.transition(done.id, done.fence, delivered, now=NOW + 6)
    return await exported(store)


async def test_stream_yields_every_row_oldest_first(store: Store) -> None:
    """Without a filter, every row, in the order they were accepted."""
    rows = [await queued(store, f"A-{index}", now=NOW + index) for index in range(7)]
    assert rows == await exported(store)


async def test_stream_yields_only_matching_rows(store: Store) -> None:
    """With a filter, only the rows that match it, still oldest first."""
    dead = [
        await in_state(store, "X-1", SubmissionState.DEAD, tenant="demo"),
        await in_state(store, "X-2", SubmissionState.DEAD, tenant="demo"),
    ]
    await in_state(store, "X-3", SubmissionState.DEAD, tenant="acme")
    await queued(store, "Q-1", tenant="demo")
    query = SubmissionQuery(states=(SubmissionState.DEAD,), tenant="demo")
    assert dead == await exported(store, query)


async def test_stream_of_many_rows_misses_none(store: Store, empty_store: Store) -> None:
    """A stream longer than any page an implementation reads at once still yields every row."""
    template = await queued(store, "A-0")
    rows = [
        dataclasses.replace(template, id=f"sub_{index:06d}", idempotency_key=f"A-{index}")
        for index in range(1500)
    ]
    await empty_store.import_rows(rows, audit=IMPORT)
    assert [row.id for row in rows] == [
        row.id async for row in empty_store.stream(SubmissionQuery())
    ]


async def test_an_import_restores_the_exported_rows_exactly(
    store: Store, empty_store: Store
) -> None:
    """Ids, states, fences, leases, bodies, responses, results and times come back as exported."""
    rows = await varied_rows(store)
    assert len(rows) == await empty_store.import_rows(rows, audit=IMPORT)
    assert rows == await exported(empty_store)
    assert rows[3] == await empty_store.get(rows[3].id)


async def test_an_import_keeps_the_order_ordering_keys_wait_in(
    store: Store, empty_store: Store
) -> None:
    """After an import, the head of an ordering key is still claimed before the row behind it."""
    original = await queued(store, "A-1", ordering="ORD-1", now=NOW)
    await queued(store, "A-1-R", ordering="ORD-1", now=NOW + 1)
    await empty_store.import_rows(await exported(store), audit=IMPORT)
    claimed = await empty_store.claim_due(now=NOW + 2, limit=10, owner=OWNER, lease_seconds=LEASE)
    assert [original.id] == [row.id for row in claimed]


async def test_an_import_keeps_idempotency(store: Store, empty_store: Store) -> None:
    """A retry of an imported submission finds it instead of creating another."""
    row = await queued(store, "A-1")
    await empty_store.import_rows([row], audit=IMPORT)
    again = await admit(empty_store, new_submission("A-1"))
    assert (False, row) == (again.created, again.submission)


async def test_an_import_records_its_audit_entry(empty_store: Store) -> None:
    """The import's audit entry is in the log with the rows."""
    await empty_store.import_rows([], audit=IMPORT)
    entries, _ = await empty_store.audit_log(limit=10, cursor=None)
    assert [("import", "alice", NOW)] == [(e.action, e.actor, e.at) for e in entries]


async def test_audit_entries_and_tokens_do_not_make_a_store_non_empty(
    store: Store, empty_store: Store
) -> None:
    """Only submissions count: a store with audit entries and a token still takes an import."""
    row = await queued(store, "A-1")
    await empty_store.record_audit(AuditEntry(actor="alice", role="admin", action="pause"))
    await empty_store.save_token("scheme:key", StoredToken("tok", NOW, 60.0))
    assert 1 == await empty_store.import_rows([row], audit=IMPORT)
    assert [row] == await exported(empty_store)


async def test_an_import_into_a_store_with_submissions_is_refused(store: Store) -> None:
    """Into a non-empty store: `StoreError`, and neither rows nor audit entry are added."""
    row = await queued(store, "A-1")
    imported = dataclasses.replace(row, id="sub_other", idempotency_key="B-1")
    with pytest.raises(StoreError, match="already holds submissions"):
        await store.import_rows([imported], audit=IMPORT)
    assert [row] == await exported(store)
    assert ([], None) == await store.audit_log(limit=10, cursor=None)


async def test_a_failing_import_imports_nothing(store: Store, empty_store: Store) -> None:
    """One transaction: a row that cannot be stored (a duplicate id) leaves the store empty."""
    first, second = await queued(store, "A-1"), await queued(store, "A-2")
    clash = dataclasses.replace(second, id=first.id)
    with pytest.raises(StoreError):
        await empty_store.import_rows([first, clash], audit=IMPORT)
    assert [] == await exported(empty_store)
    assert ([], None) == await empty_store.audit_log(limit=10, cursor=None)


async def test_racing_imports_into_an_empty_store_import_once(
    store: Store, empty_store: Store
) -> None:
    """Two imports racing into one empty store: one succeeds, the other raises `StoreError`."""
    first = [await queued(store, "A-1")]
    second = [dataclasses.replace(first[0], id="sub_other", idempotency_key="B-1")]
    results = await asyncio.gather(
        empty_store.import_rows(first, audit=IMPORT),
        empty_store.import_rows(second, audit=IMPORT),
        return_exceptions=True,
    )
    outcomes = sorted("imported" if result == 1 else type(result).__name__ for result in results)
    assert ["StoreError", "imported"] == outcomes
    assert (first if results[0] == 1 else second) == await exported(empty_store)
