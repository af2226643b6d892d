"""Claims: due rows are leased once each, heads of their ordering key only, tenants in turn."""

from __future__ import annotations

import asyncio
from collections import Counter

from gateway.outbox.store import Store
from gateway.outbox.submissions import Submission, SubmissionState, Transition
from tests.support.submissions import LEASE, NOW, admit, in_state, new_submission, queued

DISPATCHER = "gateway-2"


async def claim(store: Store, *, now: float = NOW + 1, limit: int = 100) -> list[Submission]:
    return list(await store.claim_due(now=now, limit=limit, owner=DISPATCHER, lease_seconds=LEASE))


def ids(rows: list[Submission]) -> list[str]:
    return [row.id for row in rows]


async def test_a_claimed_row_is_delivering_leased_and_newly_fenced(store: Store) -> None:
    """A claimed row is `delivering`, leased to the claimer until now + lease, with a new fence."""
    row = await queued(store, "A-1")
    [claimed] = await claim(store, now=NOW + 1)
    assert (row.id, SubmissionState.DELIVERING, DISPATCHER, NOW + 1 + LEASE) == (
        claimed.id,
        claimed.state,
        claimed.lease_owner,
        claimed.lease_expires_at,
    )
    assert claimed.fence > row.fence
    assert claimed == await store.get(row.id)


async def test_a_claim_keeps_what_the_delivery_needs_to_know(store: Store) -> None:
    """Claiming keeps attempts, maybe-sent, payload and acknowledgement as they were."""
    row = await in_state(store, "A-1", SubmissionState.UNKNOWN, next_attempt_at=NOW)
    [claimed] = await claim(store)
    assert (row.attempts, True, row.body, row.acknowledged) == (
        claimed.attempts,
        claimed.maybe_sent,
        claimed.body,
        claimed.acknowledged,
    )


async def test_the_previous_fence_cannot_write_after_a_claim(store: Store) -> None:
    """Whoever held the row before the claim (e.g. a stale on-call view) is fenced out."""
    row = await queued(store, "A-1")
    await claim(store)
    refused = await store.transition(
        row.id, row.fence, Transition(SubmissionState.DELIVERED), now=NOW
    )
    assert refused is None


async def test_only_due_rows_are_claimed(store: Store) -> None:
    """Queued and unknown rows due by now are claimed; later ones, parked unknown rows (no due
    time), in-flight and dead rows are not."""
    due = [
        await in_state(store, "Q-due", SubmissionState.QUEUED, next_attempt_at=NOW),
        await in_state(store, "U-due", SubmissionState.UNKNOWN, next_attempt_at=NOW + 1),
    ]
    for key, state, at in (
        ("Q-later", SubmissionState.QUEUED, NOW + 2),
        ("U-later", SubmissionState.UNKNOWN, NOW + 2),
        ("U-parked", SubmissionState.UNKNOWN, None),
        ("X-dead", SubmissionState.DEAD, NOW),
    ):
        await in_state(store, key, state, next_attempt_at=at)
    await admit(store, new_submission("D-flight"))
    assert sorted(ids(due)) == sorted(ids(await claim(store, now=NOW + 1)))


async def test_a_parked_unknown_row_is_never_claimed(store: Store) -> None:
    """An `unknown` row without a due time waits for on-call, however late it gets."""
    await in_state(store, "U-parked", SubmissionState.UNKNOWN, next_attempt_at=None)
    assert [] == await claim(store, now=NOW + 10**9)


async def test_at_most_limit_rows_are_claimed_oldest_first(store: Store) -> None:
    """A claim takes at most `limit` rows, the earliest accepted first."""
    rows = [await queued(store, f"A-{index}", now=NOW + index) for index in range(5)]
    assert ids(rows[:3]) == ids(await claim(store, now=NOW + 10, limit=3))


async def test_a_claimed_row_is_not_claimed_again_while_leased(store: Store) -> None:
    """Until its lease runs out (and it is reclaimed), a claimed row is nobody else's."""
    await queued(store, "A-1")
    assert 1 == len(await claim(store, now=NOW + 1))
    assert [] == await claim(store, now=NOW + 2)
    assert [] == await claim(store, now=NOW + 1 + LEASE + 1)


async def test_a_later_row_waits_for_the_head_of_its_ordering_key(store: Store) -> None:
    """Of rows sharing tenant and ordering key, only the oldest unresolved one is claimed."""
    original = await queued(store, "A-1", ordering="ORD-1")
    await queued(store, "A-1-R", ordering="ORD-1")
    other = await queued(store, "B-1", ordering="ORD-2")
    assert sorted([original.id, other.id]) == sorted(ids(await claim(store)))


async def test_a_red_letter_never_overtakes_a_delivering_original(store: Store) -> None:
    """While the original is in flight, the red-letter behind it is not claimed."""
    original = (await admit(store, new_submission("A-1", ordering="ORD-1"))).submission
    await queued(store, "A-1-R", ordering="ORD-1")
    assert SubmissionState.DELIVERING == original.state
    assert [] == await claim(store)


async def test_a_red_letter_never_overtakes_an_original_not_yet_due(store: Store) -> None:
    """A due red-letter waits behind its original even while the original backs off."""
    original = (await admit(store, new_submission("A-1", ordering="ORD-1"))).submission
    red = await queued(store, "A-1-R", ordering="ORD-1")
    backoff = Transition(SubmissionState.QUEUED, attempts_delta=1, next_attempt_at=NOW + 60)
    await store.transition(original.id, original.fence, backoff, now=NOW)
    assert [] == await claim(store, now=NOW + 1)
    assert [original.id] == ids(await claim(store, now=NOW + 60))
    assert red.id not in ids(await claim(store, now=NOW + 61))


async def test_the_next_row_of_an_ordering_key_is_due_once_its_head_is_final(
    store: Store,
) -> None:
    """When the head is delivered, the row behind it becomes claimable."""
    await queued(store, "A-1", ordering="ORD-1")
    red = await queued(store, "A-1-R", ordering="ORD-1")
    [head] = await claim(store)
    await store.transition(head.id, head.fence, Transition(SubmissionState.DELIVERED), now=NOW + 2)
    assert [red.id] == ids(await claim(store, now=NOW + 2))


async def test_tenants_take_turns_within_a_claim(store: Store) -> None:
    """With a backlog of one tenant, a claim still includes the other tenants' rows."""
    for index in range(20):
        await queued(store, f"A-{index}", tenant="a-big")
    small = [await queued(store, f"B-{index}", tenant="b-small") for index in range(2)]
    claimed = await claim(store, now=NOW + 1, limit=6)
    assert {"a-big": 4, "b-small": 2} == Counter(row.tenant for row in claimed)
    assert set(ids(small)) <= set(ids(claimed))


async def test_one_row_claims_no_longer_always_serve_the_first_tenant_by_name(
    store: Store,
) -> None:
    """Claims of one row at a time (one free delivery slot each) go round the tenants: the
    tenant whose name sorts first no longer starves the others until its backlog is gone."""
    for index in range(5):
        await queued(store, f"A-{index}", tenant="a-big")
        await queued(store, f"B-{index}", tenant="b-small")
    tenants = [(await claim(store, now=NOW + 1, limit=1))[0].tenant for _ in range(4)]
    assert {"a-big": 2, "b-small": 2} == Counter(tenants)


async def test_concurrent_claims_never_return_the_same_row(store: Store) -> None:
    """Claims racing on one store lease disjoint sets of rows, together all that was due."""
    rows = [await queued(store, f"A-{index}", tenant=f"t{index % 3}") for index in range(30)]
    batches = await asyncio.gather(*(claim(store, limit=4) for _ in range(10)))
    claimed = [row_id for batch in batches for row_id in ids(batch)]
    assert len(claimed) == len(set(claimed))
    assert sorted(ids(rows)) == sorted(claimed)


async def test_two_gateways_claiming_never_return_the_same_row(store: Store, peer: Store) -> None:
    """Claims racing through two stores on one database lease disjoint sets of rows."""
    rows = [await queued(store, f"A-{index}", tenant=f"t{index % 3}") for index in range(30)]
    batches = await asyncio.gather(
        *(claim(side, limit=4) for _ in range(5) for side in (store, peer))
    )
    claimed = [row.id for batch in batches for row in batch]
    assert len(claimed) == len(set(claimed))
    assert sorted(ids(rows)) == sorted(claimed)
