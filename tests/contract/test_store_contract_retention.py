"""Retention: `purge` deletes final rows past the cut, never one the outbox still needs."""

from __future__ import annotations

from gateway.outbox.store import Store
from gateway.outbox.submissions import SubmissionState
from tests.support.submissions import NOW, admit, in_state, new_submission, queued

CUT = NOW + 100


async def test_purge_deletes_only_final_rows_finished_before_the_cut(store: Store) -> None:
    """Delivered, failed and discarded rows updated before the cut go, and are counted."""
    final = [
        await in_state(store, f"F-{state.value}", state, now=NOW)
        for state in (SubmissionState.DELIVERED, SubmissionState.FAILED, SubmissionState.DISCARDED)
    ]
    assert 3 == await store.purge(finished_before=CUT)
    assert [None, None, None] == [await store.get(row.id) for row in final]


async def test_purge_never_deletes_a_row_the_outbox_still_needs(store: Store) -> None:
    """Queued, unknown, dead and delivering rows stay, however old."""
    kept = [
        await queued(store, "Q-1", now=NOW),
        await in_state(store, "U-1", SubmissionState.UNKNOWN, now=NOW),
        await in_state(store, "X-1", SubmissionState.DEAD, now=NOW),
        (await admit(store, new_submission("D-1"), now=NOW)).submission,
    ]
    assert 0 == await store.purge(finished_before=NOW + 10**9)
    assert kept == [await store.get(row.id) for row in kept]


async def test_purge_keeps_rows_finished_at_or_after_the_cut(store: Store) -> None:
    """A final row last updated at the cut or later is still within its retention."""
    recent = [
        await in_state(store, "D-at", SubmissionState.DELIVERED, now=CUT),
        await in_state(store, "D-after", SubmissionState.DELIVERED, now=CUT + 1),
    ]
    old = await in_state(store, "D-before", SubmissionState.DELIVERED, now=CUT - 1)
    assert 1 == await store.purge(finished_before=CUT)
    assert [None, *recent] == [await store.get(row.id) for row in (old, *recent)]


async def test_a_purged_rows_idempotency_key_is_free_again(store: Store) -> None:
    """Past retention, a submission with the same key is a new submission."""
    old = await in_state(store, "A-1", SubmissionState.DELIVERED, now=NOW)
    await store.purge(finished_before=CUT)
    again = await admit(store, new_submission("A-1"), now=CUT)
    assert again.created
    assert old.id != again.submission.id
