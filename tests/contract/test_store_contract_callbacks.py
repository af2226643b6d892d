"""The callback event queue (`store.callbacks`): which changes write an event, in their own
transaction; claims with leases and fences across processes; settling, skipping, replaying."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.outbox.callbacks import CallbackEvent, CallbackState
from gateway.outbox.store import Store
from gateway.outbox.submissions import (
    Issuance,
    IssuanceCheck,
    IssuanceOutcome,
    SubmissionState,
    Transition,
)
from tests.support.submissions import NOW, admit, in_state, new_submission, queued

S = SubmissionState
C = CallbackState
TENANTS = ("demo", "acme")


async def claim(
    store: Store, *, now: float = NOW + 1, owner: str = "gw-1", limit: int = 100
) -> Sequence[CallbackEvent]:
    return await store.callbacks.claim_callbacks(
        now=now, limit=limit, owner=owner, lease_seconds=30.0, tenants=TENANTS
    )


async def test_a_queued_submission_becoming_final_writes_one_event(store: Store) -> None:
    """Each final state a 202'd submission reaches is one event, named after the state."""
    for key, state in [("A-1", S.DELIVERED), ("A-2", S.FAILED), ("A-3", S.DEAD)]:
        await in_state(store, key, state)
    events = await claim(store)
    assert ["submission.delivered", "submission.failed", "submission.dead"] == [
        event.type for event in events
    ]
    assert {C.SENDING} == {event.state for event in events}
    assert {NOW} == {event.created_at for event in events}


async def test_waiting_states_and_live_answers_write_none(store: Store) -> None:
    """Queued, unknown or delivering is no news; a live submission (its client got the answer
    itself, never a 202) becoming delivered writes nothing either."""
    await in_state(store, "A-1", S.UNKNOWN)
    await queued(store, "A-2")
    live = (await admit(store, new_submission("A-3"), queue=False)).submission
    delivered = await store.transition(
        live.id, live.fence, Transition(S.DELIVERED, attempts_delta=1), now=NOW
    )
    assert delivered is not None
    assert [] == await claim(store)


async def test_an_issued_invoice_is_an_event_for_every_submission(store: Store) -> None:
    """An issuance ending `done` is news even for a live submission: no answer could say it."""
    live = (await admit(store, new_submission("A-1"), queue=False)).submission
    row = await store.transition(
        live.id, live.fence, Transition(S.DELIVERED, attempts_delta=1), now=NOW
    )
    assert row is not None
    done = Issuance(IssuanceOutcome.DONE, status="2", serial="S-1", invoice_number="0001")
    await store.record_issuance([IssuanceCheck(row.id, row.fence, done, None)], now=NOW + 5)
    events = await claim(store, now=NOW + 6)
    assert [("submission.issued", row.id, NOW + 5)] == [
        (e.type, e.submission_id, e.created_at) for e in events
    ]


async def test_claims_from_two_processes_take_disjoint_events(store: Store, peer: Store) -> None:
    for n in range(6):
        await in_state(store, f"A-{n}", S.DELIVERED)
    first = await claim(store, owner="gw-1", limit=4)
    second = await claim(peer, owner="gw-2", limit=4)
    assert 4 == len(first)
    assert 2 == len(second)
    assert not {e.seq for e in first} & {e.seq for e in second}


async def test_a_settled_event_is_not_claimed_again_and_a_stale_fence_writes_nothing(
    store: Store,
) -> None:
    await in_state(store, "A-1", S.DELIVERED)
    (event,) = await claim(store)
    queue = store.callbacks
    assert await queue.settle_callback(event.seq, event.fence, state=C.DELIVERED, now=NOW + 2)
    assert not await queue.settle_callback(event.seq, event.fence, state=C.DEAD, now=NOW + 3)
    assert [] == await claim(store, now=NOW + 100)
    (shown,) = await queue.callback_events()
    assert (C.DELIVERED, 1, NOW + 2) == (shown.state, shown.attempts, shown.delivered_at)


async def test_a_retry_waits_for_its_time_and_an_expired_lease_is_claimed_again(
    store: Store,
) -> None:
    await in_state(store, "A-1", S.DELIVERED)
    await in_state(store, "A-2", S.FAILED)
    retried, abandoned = await claim(store)
    queue = store.callbacks
    assert await queue.settle_callback(
        retried.seq,
        retried.fence,
        state=C.PENDING,
        now=NOW + 1,
        next_attempt_at=NOW + 10,
        error="HTTP 503",
    )
    assert [] == await claim(store, now=NOW + 9)  # the other is still leased (30 s)
    again = await claim(store, now=NOW + 31)
    assert [retried.seq, abandoned.seq] == [e.seq for e in again]
    assert abandoned.fence < again[1].fence
    assert not await queue.settle_callback(
        abandoned.seq, abandoned.fence, state=C.DELIVERED, now=NOW + 32
    )


async def test_events_of_tenants_without_a_callback_are_skipped(store: Store) -> None:
    await in_state(store, "A-1", S.DELIVERED, tenant="other")
    await in_state(store, "A-2", S.DELIVERED)
    assert ["demo"] == [e.tenant for e in await claim(store)]
    (skipped,) = await store.callbacks.callback_events(states=[C.SKIPPED])
    assert ("other", "no callback URL") == (skipped.tenant, skipped.last_error)


async def test_replay_sends_a_delivered_or_dead_event_again(store: Store) -> None:
    row = await in_state(store, "A-1", S.DELIVERED)
    (event,) = await claim(store)
    queue = store.callbacks
    assert None is await queue.replay_callback(event.seq, now=NOW + 2)  # being sent
    await queue.settle_callback(event.seq, event.fence, state=C.DEAD, now=NOW + 2, error="gone")
    replayed = await queue.replay_callback(event.seq, now=NOW + 3)
    assert replayed is not None
    assert (C.PENDING, NOW + 3, 1) == (replayed.state, replayed.next_attempt_at, replayed.attempts)
    (again,) = await claim(store, now=NOW + 3)
    assert (event.seq, row.id) == (again.seq, again.submission_id)
    assert None is await queue.replay_callback(999_999, now=NOW + 4)


async def test_events_are_listed_newest_first_by_state_tenant_and_submission(
    store: Store,
) -> None:
    a = await in_state(store, "A-1", S.DELIVERED)
    await in_state(store, "A-2", S.DEAD, tenant="acme")
    queue = store.callbacks
    assert ["acme", "demo"] == [e.tenant for e in await queue.callback_events()]
    assert ["acme"] == [e.tenant for e in await queue.callback_events(tenant="acme")]
    assert [a.id] == [e.submission_id for e in await queue.callback_events(submission_id=a.id)]
    assert [] == await queue.callback_events(states=[C.DELIVERED])
    assert 2 == len(await queue.callback_events(states=[C.PENDING]))
    assert 1 == len(await queue.callback_events(limit=1))
    (only,) = await queue.callback_events(seq=(await queue.callback_events())[-1].seq)
    assert a.id == only.submission_id


async def test_settled_events_past_retention_are_purged(store: Store) -> None:
    for key in ("A-1", "A-2", "A-3"):
        await in_state(store, key, S.DELIVERED)
    delivered, dead, waiting = await claim(store)
    queue = store.callbacks
    await queue.settle_callback(delivered.seq, delivered.fence, state=C.DELIVERED, now=NOW + 1)
    await queue.settle_callback(dead.seq, dead.fence, state=C.DEAD, now=NOW + 1)
    assert 0 == await queue.purge_callbacks(settled_before=NOW)
    assert 2 == await queue.purge_callbacks(settled_before=NOW + 1)
    assert [waiting.seq] == [e.seq for e in await queue.callback_events()]
