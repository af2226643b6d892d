"""Rebase: after the clock stepped back, waiting rows are rescheduled by the step, once."""

from __future__ import annotations

from gateway.outbox.store import Store
from gateway.outbox.submissions import SubmissionState, Transition
from tests.support.submissions import LEASE, NOW, OWNER, admit, in_state, new_submission, queued

STEP = 3600.0


async def test_a_step_back_moves_waiting_schedules_back_by_the_step(store: Store) -> None:
    """Queued and due-unknown rows written an hour 'ahead' are due an hour earlier; the shift
    is returned."""
    rows = [
        await in_state(store, "Q-1", SubmissionState.QUEUED, next_attempt_at=NOW + 10),
        await in_state(store, "U-1", SubmissionState.UNKNOWN, next_attempt_at=NOW + 20),
    ]
    assert STEP == await store.rebase(now=NOW - STEP)
    after = [await store.get(row.id) for row in rows]
    assert [NOW + 10 - STEP, NOW + 20 - STEP] == [
        row.next_attempt_at for row in after if row is not None
    ]


async def test_after_a_rebase_what_was_due_is_due_on_the_clock_behind(store: Store) -> None:
    """The point of rebasing: a row due when the clock stepped back is claimable at once."""
    row = await queued(store, "A-1", now=NOW)
    await store.rebase(now=NOW - STEP)
    claimed = await store.claim_due(now=NOW - STEP, limit=10, owner=OWNER, lease_seconds=LEASE)
    assert [row.id] == [claimed_row.id for claimed_row in claimed]


async def test_rebase_leaves_rows_that_are_not_waiting(store: Store) -> None:
    """Final, dead, in-flight and parked rows keep their history and schedule."""
    untouched = [
        await in_state(store, "D-1", SubmissionState.DELIVERED),
        await in_state(store, "X-1", SubmissionState.DEAD),
        (await admit(store, new_submission("F-1"))).submission,
    ]
    await queued(store, "Q-1")
    assert STEP == await store.rebase(now=NOW - STEP)
    assert untouched == [await store.get(row.id) for row in untouched]


async def test_without_a_step_rebase_changes_nothing(store: Store) -> None:
    """With the clock at or past the last writes, the shift is 0 and every row is as it was."""
    rows = [
        await queued(store, "Q-1", now=NOW),
        await in_state(store, "U-1", SubmissionState.UNKNOWN, next_attempt_at=NOW + 30),
    ]
    assert (0, 0) == (await store.rebase(now=NOW), await store.rebase(now=NOW + STEP))
    assert rows == [await store.get(row.id) for row in rows]


async def test_a_second_rebase_shifts_nothing_more(store: Store) -> None:
    """Once rebased, a restart on the same (behind) clock finds no step."""
    row = await queued(store, "Q-1")
    await store.rebase(now=NOW - STEP)
    rebased = await store.get(row.id)
    assert 0 == await store.rebase(now=NOW - STEP)
    assert rebased == await store.get(row.id)


async def test_an_empty_store_has_nothing_to_rebase(store: Store) -> None:
    """With no waiting rows there is no step to detect."""
    done = (await admit(store, new_submission("D-1"))).submission
    await store.transition(done.id, done.fence, Transition(SubmissionState.DELIVERED), now=NOW)
    assert 0 == await store.rebase(now=NOW - STEP)
