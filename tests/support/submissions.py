"""Outbox rows as store tests build them: a `NewSubmission` with sensible defaults, admitted
(and moved to a state) through the store's own protocol, at a time the test chooses."""

from __future__ import annotations

import json

from gateway.outbox.store import Admission, OutboxStore
from gateway.outbox.submissions import (
    NewSubmission,
    Submission,
    SubmissionState,
    Transition,
    fingerprint,
)

#: The wall time store tests start at (2027-01-15); later moments are offsets from it.
NOW = 1_800_000_000.0
#: Who holds what a test admits or claims, and for how long.
OWNER = "gateway-1"
LEASE = 30.0


def new_submission(
    key: str | None = "A-1",
    *,
    tenant: str = "demo",
    operation: str = "issue",
    ordering: str | None = None,
    body: bytes | None = None,
) -> NewSubmission:
    """An invoice submission with idempotency key `key`, its order number the business key."""
    body = body if body is not None else json.dumps({"order": {"orderNo": key}}).encode()
    return NewSubmission(
        tenant=tenant,
        operation=operation,
        idempotency_key=key,
        fingerprint=fingerprint(body),
        business_key=key,
        ordering_key=ordering,
        method="POST",
        path="/open/v1/services",
        query=(("v", "2"),),
        headers=(("method", operation), ("Content-Type", "application/json")),
        body=body,
        request_id=f"r-{key}",
    )


async def admit(
    store: OutboxStore,
    new: NewSubmission,
    *,
    queue: bool = False,
    now: float = NOW,
    owner: str = OWNER,
) -> Admission:
    """`store.admit(new)` as intake calls it, leased to `owner` for `LEASE` seconds."""
    return await store.admit(new, queue=queue, owner=owner, lease_seconds=LEASE, now=now)


async def queued(
    store: OutboxStore,
    key: str | None,
    *,
    tenant: str = "demo",
    ordering: str | None = None,
    now: float = NOW,
) -> Submission:
    """A new submission queued (acknowledged, due at `now`), as with the circuit open."""
    admission = await admit(
        store, new_submission(key, tenant=tenant, ordering=ordering), queue=True, now=now
    )
    assert admission.created
    return admission.submission


async def in_state(
    store: OutboxStore,
    key: str,
    state: SubmissionState,
    *,
    tenant: str = "demo",
    operation: str = "issue",
    ordering: str | None = None,
    now: float = NOW,
    next_attempt_at: float | None = None,
    error_class: str | None = None,
) -> Submission:
    """A new submission admitted at `now` and moved to `state` at `now`, with `next_attempt_at`
    (for `queued`, `now` unless given) and `error_class`; the row as stored."""
    if state is SubmissionState.QUEUED and next_attempt_at is None:
        next_attempt_at = now
    new = new_submission(key, tenant=tenant, operation=operation, ordering=ordering)
    row = (await admit(store, new, queue=True, now=now)).submission
    change = Transition(
        state,
        attempts_delta=1,
        maybe_sent=state is SubmissionState.UNKNOWN,
        next_attempt_at=next_attempt_at,
        error_class=error_class,
        error=f"{error_class} happened" if error_class else None,
    )
    moved = await store.transition(row.id, row.fence, change, now=now)
    assert moved is not None
    return moved
