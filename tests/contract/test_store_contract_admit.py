"""Admission: one row per idempotency key, durable on return, queued behind its ordering key."""

from __future__ import annotations

import asyncio

from gateway.outbox.store import Store
from gateway.outbox.submissions import SubmissionQuery, SubmissionState, Transition
from tests.contract.factories import Database
from tests.support.submissions import LEASE, NOW, OWNER, admit, new_submission


async def test_a_new_key_is_stored_delivering_and_leased_to_its_owner(store: Store) -> None:
    """Without `queue`, a new submission is `delivering`, leased to the caller, not acknowledged."""
    admission = await admit(store, new_submission("A-1"))
    row = admission.submission
    assert admission.created
    assert (SubmissionState.DELIVERING, OWNER, NOW + LEASE, False, 0) == (
        row.state,
        row.lease_owner,
        row.lease_expires_at,
        row.acknowledged,
        row.attempts,
    )


async def test_queue_stores_it_queued_acknowledged_and_due_now(store: Store) -> None:
    """With `queue` (circuit open), the row is queued, acknowledged, due at once, leased to none."""
    row = (await admit(store, new_submission("A-1"), queue=True)).submission
    assert (SubmissionState.QUEUED, True, NOW, None) == (
        row.state,
        row.acknowledged,
        row.next_attempt_at,
        row.lease_owner,
    )


async def test_the_admitted_row_is_what_get_reads_back(store: Store) -> None:
    """On return the row is stored exactly as returned: what was sent, and its lifecycle."""
    new = new_submission("A-1", body='{"order":{"orderNo":"A-1","buyer":"北京"}}'.encode())
    row = (await admit(store, new)).submission
    assert row == await store.get(row.id)
    assert (new.body, new.headers, new.query, new.fingerprint) == (
        row.body,
        row.headers,
        row.query,
        row.fingerprint,
    )


async def test_the_admitted_row_survives_a_restart(database: Database, store: Store) -> None:
    """Admission is durable: a store opened again after close finds the row."""
    row = (await admit(store, new_submission("A-1"))).submission
    again = await database.reopen(store)
    assert row == await again.get(row.id)


async def test_the_same_key_returns_the_existing_row_untouched(store: Store) -> None:
    """Same tenant, operation and key: `created=False` and the first row, whatever the body."""
    first = (await admit(store, new_submission("A-1"))).submission
    second = await admit(store, new_submission("A-1", body=b'{"other":true}'), queue=True)
    assert (False, first) == (second.created, second.submission)
    assert first == await store.get(first.id)


async def test_the_same_key_finds_the_row_in_any_state(store: Store) -> None:
    """A retry after delivery gets the delivered row back (to replay its answer), not a new one."""
    first = (await admit(store, new_submission("A-1"))).submission
    delivered = await store.transition(
        first.id, first.fence, Transition(SubmissionState.DELIVERED, attempts_delta=1), now=NOW
    )
    again = await admit(store, new_submission("A-1"), now=NOW + 60)
    assert (False, delivered) == (again.created, again.submission)


async def test_another_tenant_with_the_same_key_is_another_submission(store: Store) -> None:
    """Idempotency keys are scoped by tenant."""
    first = (await admit(store, new_submission("A-1", tenant="demo"))).submission
    other = await admit(store, new_submission("A-1", tenant="acme"))
    assert other.created
    assert first.id != other.submission.id


async def test_another_operation_with_the_same_key_is_another_submission(store: Store) -> None:
    """Idempotency keys are scoped by operation: issuing and red-lettering one order are two."""
    first = (await admit(store, new_submission("A-1", operation="issue"))).submission
    other = await admit(store, new_submission("A-1", operation="red"))
    assert other.created
    assert first.id != other.submission.id


async def test_without_a_key_every_admission_is_new(store: Store) -> None:
    """A submission without an idempotency key is never deduplicated."""
    first = await admit(store, new_submission(None))
    second = await admit(store, new_submission(None))
    assert (True, True) == (first.created, second.created)
    assert first.submission.id != second.submission.id


async def test_concurrent_admissions_of_one_key_create_one_row(store: Store) -> None:
    """Twenty racing admissions of one key: exactly one creates, all get the same row."""
    results = await asyncio.gather(*(admit(store, new_submission("A-1")) for _ in range(20)))
    assert 1 == sum(result.created for result in results)
    assert 1 == len({result.submission.id for result in results})
    assert 1 == await store.count(SubmissionQuery())


async def test_two_gateways_admitting_one_key_create_one_row(store: Store, peer: Store) -> None:
    """Racing admissions through two stores on one database still create exactly one row."""
    results = await asyncio.gather(
        *(admit(side, new_submission("A-1")) for _ in range(10) for side in (store, peer))
    )
    assert 1 == sum(result.created for result in results)
    assert 1 == len({result.submission.id for result in results})


async def test_an_unresolved_predecessor_holds_a_new_submission_back(store: Store) -> None:
    """Same tenant and ordering key as an unresolved row: queued (acknowledged) even unasked."""
    await admit(store, new_submission("A-1", ordering="ORD-1"))
    red = await admit(store, new_submission("A-1-R", ordering="ORD-1"))
    assert (True, SubmissionState.QUEUED, True, None) == (
        red.created,
        red.submission.state,
        red.submission.acknowledged,
        red.submission.lease_owner,
    )


async def test_any_unresolved_predecessor_state_holds_it_back(store: Store) -> None:
    """Queued, unknown and dead predecessors all hold a later submission with their key back."""
    held = []
    for index, state in enumerate(
        (SubmissionState.QUEUED, SubmissionState.UNKNOWN, SubmissionState.DEAD)
    ):
        first = (await admit(store, new_submission(f"P-{index}", ordering=f"O-{index}"))).submission
        await store.transition(first.id, first.fence, Transition(state), now=NOW)
        later = await admit(store, new_submission(f"L-{index}", ordering=f"O-{index}"))
        held.append(later.submission.state)
    assert [SubmissionState.QUEUED] * 3 == held


async def test_a_final_predecessor_holds_nothing_back(store: Store) -> None:
    """Once the earlier row with the ordering key is final, a new one is forwarded at once."""
    first = (await admit(store, new_submission("A-1", ordering="ORD-1"))).submission
    await store.transition(first.id, first.fence, Transition(SubmissionState.DELIVERED), now=NOW)
    red = await admit(store, new_submission("A-1-R", ordering="ORD-1"))
    assert SubmissionState.DELIVERING == red.submission.state


async def test_ordering_keys_are_scoped_by_tenant(store: Store) -> None:
    """Another tenant's unresolved row with the same ordering key holds nothing back."""
    await admit(store, new_submission("A-1", tenant="demo", ordering="ORD-1"))
    other = await admit(store, new_submission("A-1", tenant="acme", ordering="ORD-1"))
    assert SubmissionState.DELIVERING == other.submission.state


async def test_racing_admissions_of_one_ordering_key_forward_only_one(
    store: Store, peer: Store
) -> None:
    """Submissions with one ordering key racing in (through two gateways): one is forwarded,
    every other waits behind it."""
    results = await asyncio.gather(
        *(
            admit(side, new_submission(f"A-{index}-{side_index}", ordering="ORD-1"))
            for index in range(5)
            for side_index, side in enumerate((store, peer))
        )
    )
    states = sorted(result.submission.state for result in results)
    assert [SubmissionState.DELIVERING] + [SubmissionState.QUEUED] * 9 == states
