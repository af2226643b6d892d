"""Leases: an expired `delivering` row becomes `unknown` (maybe sent); its holder is fenced out."""

from __future__ import annotations

import asyncio

from gateway.outbox.store import Store
from gateway.outbox.submissions import SubmissionState, Transition
from tests.support.submissions import LEASE, NOW, admit, new_submission

DELIVERED = Transition(SubmissionState.DELIVERED, attempts_delta=1)


async def test_a_live_lease_is_left_alone(store: Store) -> None:
    """Before its lease expires a `delivering` row is not reclaimed."""
    row = (await admit(store, new_submission("A-1"))).submission
    assert 0 == await store.reclaim(now=NOW + LEASE - 1)
    assert row == await store.get(row.id)


async def test_an_expired_lease_becomes_unknown(store: Store) -> None:
    """At its expiry the row becomes `unknown`: maybe sent, acknowledged, due now, unleased."""
    row = (await admit(store, new_submission("A-1"))).submission
    assert 1 == await store.reclaim(now=NOW + LEASE)
    after = await store.get(row.id)
    assert after is not None
    assert (SubmissionState.UNKNOWN, True, True, NOW + LEASE, None, None) == (
        after.state,
        after.maybe_sent,
        after.acknowledged,
        after.next_attempt_at,
        after.lease_owner,
        after.lease_expires_at,
    )


async def test_reclaim_takes_only_the_expired_leases(store: Store) -> None:
    """Of two in-flight rows, only the one whose lease has run out is reclaimed."""
    old = (await admit(store, new_submission("A-1"), now=NOW)).submission
    young = (await admit(store, new_submission("A-2"), now=NOW + 20)).submission
    assert 1 == await store.reclaim(now=NOW + LEASE + 1)
    states = [(await store.get(row.id) or row).state for row in (old, young)]
    assert [SubmissionState.UNKNOWN, SubmissionState.DELIVERING] == states


async def test_reclaim_touches_no_other_state(store: Store) -> None:
    """Queued, unknown and final rows are not reclaimed, whatever the time."""
    rows = [(await admit(store, new_submission(f"Q-{i}"), queue=True)).submission for i in range(2)]
    done = (await admit(store, new_submission("D-1"))).submission
    delivered = await store.transition(done.id, done.fence, DELIVERED, now=NOW)
    assert 0 == await store.reclaim(now=NOW + 10 * LEASE)
    assert [*rows, delivered] == [await store.get(row.id) for row in (*rows, done)]


async def test_reclaim_everything_takes_live_leases_too(store: Store) -> None:
    """On a single node's start, every `delivering` row becomes `unknown`, expired or not."""
    rows = [(await admit(store, new_submission(f"A-{i}"))).submission for i in range(3)]
    assert 3 == await store.reclaim(now=NOW + 1, everything=True)
    states = {(await store.get(row.id) or row).state for row in rows}
    assert {SubmissionState.UNKNOWN} == states


async def test_a_reclaimed_rows_old_holder_cannot_write(store: Store) -> None:
    """The holder whose lease was reclaimed cannot record its (late) result."""
    row = (await admit(store, new_submission("A-1"))).submission
    await store.reclaim(now=NOW + LEASE)
    assert await store.transition(row.id, row.fence, DELIVERED, now=NOW + LEASE) is None
    after = await store.get(row.id)
    assert after is not None
    assert SubmissionState.UNKNOWN == after.state


async def test_a_holder_racing_its_reclaim_either_wins_or_is_fenced(
    store: Store, peer: Store
) -> None:
    """A late result and a reclaim (by another gateway) race: exactly one of them lands."""
    rows = [(await admit(store, new_submission(f"A-{i}"))).submission for i in range(10)]
    results = await asyncio.gather(
        peer.reclaim(now=NOW + LEASE),
        *(store.transition(row.id, row.fence, DELIVERED, now=NOW + LEASE) for row in rows),
    )
    reclaimed, recorded = results[0], [r for r in results[1:] if r is not None]
    final = [(await store.get(row.id) or row).state for row in rows]
    assert 10 == reclaimed + len(recorded)
    assert len(recorded) == final.count(SubmissionState.DELIVERED)
    assert reclaimed == final.count(SubmissionState.UNKNOWN)
