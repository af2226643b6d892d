"""What on-call and metrics read: `query` (filtered, newest first, paged), `count`, `counts`."""

from __future__ import annotations

import pytest

from gateway.outbox.store import Store
from gateway.outbox.submissions import Submission, SubmissionQuery, SubmissionState
from tests.support.submissions import NOW, admit, in_state, new_submission, queued

S = SubmissionState


async def seed(store: Store) -> dict[str, Submission]:
    """Six rows of two tenants and two operations, in several states, a minute apart."""
    return {
        "demo-dead": await in_state(
            store, "ORD-100", S.DEAD, tenant="demo", now=NOW, error_class="http_5xx"
        ),
        "demo-queued": await queued(store, "ORD-101", tenant="demo", now=NOW + 60),
        "acme-dead": await in_state(
            store, "ORD-200", S.DEAD, tenant="acme", now=NOW + 120, error_class="timeout"
        ),
        "demo-red": await in_state(
            store,
            "ORD-102",
            S.DEAD,
            tenant="demo",
            operation="red",
            now=NOW + 180,
            error_class="http_5xx",
        ),
        "acme-delivered": await in_state(
            store, "ORD-201", S.DELIVERED, tenant="acme", now=NOW + 240
        ),
        "demo-unknown": await in_state(
            store, "XYZ-1", S.UNKNOWN, tenant="demo", now=NOW + 300, next_attempt_at=NOW + 400
        ),
    }


async def matching(store: Store, query: SubmissionQuery) -> list[Submission]:
    return list((await store.query(query, limit=100, cursor=None)).items)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            SubmissionQuery(),
            ["demo-unknown", "acme-delivered", "demo-red", "acme-dead", "demo-queued", "demo-dead"],
        ),
        (SubmissionQuery(states=(S.DEAD,)), ["demo-red", "acme-dead", "demo-dead"]),
        (SubmissionQuery(states=(S.QUEUED, S.UNKNOWN)), ["demo-unknown", "demo-queued"]),
        (SubmissionQuery(tenant="acme"), ["acme-delivered", "acme-dead"]),
        (SubmissionQuery(operation="red"), ["demo-red"]),
        (SubmissionQuery(error_class="http_5xx"), ["demo-red", "demo-dead"]),
        (
            SubmissionQuery(accepted_after=NOW + 120),
            ["demo-unknown", "acme-delivered", "demo-red", "acme-dead"],
        ),
        (SubmissionQuery(accepted_before=NOW + 120), ["demo-queued", "demo-dead"]),
        (SubmissionQuery(text="ORD-20"), ["acme-delivered", "acme-dead"]),
        (
            SubmissionQuery(
                states=(S.DEAD,), tenant="demo", error_class="http_5xx", accepted_after=NOW + 1
            ),
            ["demo-red"],
        ),
    ],
    ids=[
        "none",
        "state",
        "states",
        "tenant",
        "operation",
        "error-class",
        "accepted-after",
        "accepted-before",
        "text",
        "all-at-once",
    ],
)
async def test_query_filters_and_lists_newest_first(
    store: Store, query: SubmissionQuery, expected: list[str]
) -> None:
    """Each filter field narrows the rows (accepted_after inclusive, accepted_before exclusive,
    text a substring of the business key); all given fields must hold; newest first."""
    rows = await seed(store)
    assert [rows[name].id for name in expected] == [row.id for row in await matching(store, query)]
    assert len(expected) == await store.count(query)


async def test_query_pages_with_a_cursor_every_row_once(store: Store) -> None:
    """Following the cursor visits every matching row once, newest first; the last page has none."""
    rows = [await queued(store, f"A-{index}", now=NOW + index) for index in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.query(SubmissionQuery(), limit=3, cursor=cursor)
        seen += [row.id for row in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert (3, [row.id for row in reversed(rows)]) == (pages, seen)


async def test_rows_added_while_paging_do_not_shift_the_pages(store: Store) -> None:
    """A cursor is positional: rows accepted after the first page neither repeat nor push
    earlier rows out of the later pages."""
    rows = [await queued(store, f"A-{index}", now=NOW + index) for index in range(4)]
    first = await store.query(SubmissionQuery(), limit=2, cursor=None)
    for index in range(3):
        await queued(store, f"B-{index}", now=NOW + 10 + index)
    second = await store.query(SubmissionQuery(), limit=2, cursor=first.next_cursor)
    listed = [row.id for row in (*first.items, *second.items)]
    assert ([row.id for row in reversed(rows)], None) == (listed, second.next_cursor)


async def test_query_returns_rows_as_stored(store: Store) -> None:
    """A listed row is the whole stored row (what `get` returns)."""
    row = await in_state(store, "A-1", S.DEAD, error_class="http_5xx")
    assert [row] == await matching(store, SubmissionQuery())


async def test_a_query_cursor_the_store_never_gave_is_refused(store: Store) -> None:
    """A made-up cursor raises ValueError (the admin API answers 400)."""
    with pytest.raises(ValueError, match="cursor"):
        await store.query(SubmissionQuery(), limit=3, cursor="page-two")


async def test_counts_has_every_state_and_zero_for_the_absent(store: Store) -> None:
    """`counts().by_state` names every state, counting each row once."""
    await seed(store)
    await admit(store, new_submission("F-1"))
    expected = {state: 0 for state in S} | {
        S.DEAD: 3,
        S.QUEUED: 1,
        S.DELIVERED: 1,
        S.UNKNOWN: 1,
        S.DELIVERING: 1,
    }
    assert expected == (await store.counts()).by_state


async def test_counts_gives_the_oldest_waiting_acceptance_time(store: Store) -> None:
    """The oldest waiting row's acceptance time: queued rows, and unknown rows due for
    reconciliation; dead, parked and final rows do not count."""
    await in_state(store, "X-1", S.DEAD, now=NOW)
    await in_state(store, "U-parked", S.UNKNOWN, now=NOW + 10, next_attempt_at=None)
    await in_state(store, "U-due", S.UNKNOWN, now=NOW + 20, next_attempt_at=NOW + 99)
    await queued(store, "Q-1", now=NOW + 30)
    assert NOW + 20 == (await store.counts()).oldest_queued_at


async def test_counts_of_an_outbox_with_nothing_waiting(store: Store) -> None:
    """With nothing waiting, there is no oldest waiting time."""
    await in_state(store, "D-1", S.DELIVERED)
    await in_state(store, "U-parked", S.UNKNOWN, next_attempt_at=None)
    assert (await store.counts()).oldest_queued_at is None


async def test_next_due_is_the_earliest_waiting_time(store: Store) -> None:
    """The earliest `next_attempt_at` of queued and due unknown rows; delivering, parked and
    final rows do not count; None when nothing waits."""
    assert None is await store.next_due()
    await in_state(store, "D-1", SubmissionState.DELIVERED, now=NOW)
    await in_state(store, "U-1", SubmissionState.UNKNOWN, now=NOW)  # parked: no due time
    assert None is await store.next_due()
    await in_state(store, "Q-1", SubmissionState.QUEUED, now=NOW, next_attempt_at=NOW + 30)
    await in_state(store, "Q-2", SubmissionState.QUEUED, now=NOW, next_attempt_at=NOW + 7)
    await in_state(store, "U-2", SubmissionState.UNKNOWN, now=NOW, next_attempt_at=NOW + 9)
    assert NOW + 7 == await store.next_due()
