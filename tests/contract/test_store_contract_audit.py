"""The audit log: entries appended durably, numbered, read newest first a page at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from gateway.outbox.store import Store
from gateway.outbox.submissions import AuditEntry
from tests.contract.factories import Database
from tests.support.submissions import NOW


def entry(action: str, *, at: float = 0.0) -> AuditEntry:
    return AuditEntry(
        actor="alice",
        role="operator",
        action=action,
        submission_ids=("sub_1", "sub_2"),
        reason="the platform was down",
        details={"filter": {"tenant": "demo"}, "note": "发票"},
        at=at,
    )


async def test_recording_returns_the_entry_numbered_and_as_stored(store: Store) -> None:
    """The returned entry has its sequence number and time, and reads back as returned."""
    recorded = await store.record_audit(entry("pause", at=NOW))
    entries, _ = await store.audit_log(limit=10, cursor=None)
    assert recorded.seq > 0
    assert entry("pause", at=NOW) == dataclasses.replace(recorded, seq=0)
    assert [recorded] == entries


async def test_an_entry_without_a_time_is_stamped_when_recorded(store: Store) -> None:
    """An entry recorded with no time gets the store's time of recording."""
    before = time.time()
    recorded = await store.record_audit(entry("pause"))
    assert before <= recorded.at <= time.time()


async def test_sequence_numbers_grow_even_when_recorded_concurrently(store: Store) -> None:
    """Entries recorded at once get distinct sequence numbers, all listed."""
    recorded = await asyncio.gather(
        *(store.record_audit(entry(f"a{i}", at=NOW)) for i in range(20))
    )
    entries, _ = await store.audit_log(limit=100, cursor=None)
    assert 20 == len({r.seq for r in recorded})
    assert sorted(recorded, key=lambda r: r.seq, reverse=True) == entries


async def test_the_log_pages_newest_first_with_a_cursor(store: Store) -> None:
    """Following the cursor lists every entry once, newest first; the last page has none."""
    for index in range(7):
        await store.record_audit(entry(f"action-{index}", at=NOW + index))
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        entries, cursor = await store.audit_log(limit=3, cursor=cursor)
        pages.append([e.action for e in entries])
        if cursor is None:
            break
    newest_first = [f"action-{index}" for index in reversed(range(7))]
    assert [newest_first[0:3], newest_first[3:6], newest_first[6:]] == pages


async def test_an_exactly_full_last_page_has_no_cursor(store: Store) -> None:
    """When the entries fill the page exactly, there is no next cursor (no empty page to ask)."""
    for index in range(3):
        await store.record_audit(entry(f"action-{index}", at=NOW))
    entries, cursor = await store.audit_log(limit=3, cursor=None)
    assert (3, None) == (len(entries), cursor)


async def test_a_cursor_the_store_never_gave_is_refused(store: Store) -> None:
    """A made-up cursor raises ValueError (the admin API answers 400), not a store error."""
    with pytest.raises(ValueError, match="cursor"):
        await store.audit_log(limit=3, cursor="not-a-cursor")


async def test_the_log_survives_a_restart(database: Database, store: Store) -> None:
    """Recorded entries are durable."""
    recorded = await store.record_audit(entry("pause", at=NOW))
    again = await database.reopen(store)
    assert ([recorded], None) == await again.audit_log(limit=10, cursor=None)
