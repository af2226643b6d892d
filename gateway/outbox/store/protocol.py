"""The store protocols: everything the gateway keeps durably, as the outbox relies on it.

Every implementation (SQLite today) must pass the store contract suite in `tests/contract/`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.outbox.submissions import (
    AuditEntry,
    NewSubmission,
    Page,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)
from gateway.upstream.auth.tokens import TokenStore

__all__ = ["Admission", "OutboxCounts", "OutboxStore", "Store"]


@dataclass(frozen=True, slots=True)
class Admission:
    """What `OutboxStore.admit` did with a new submission.

    `created` is False when a submission with the same tenant, operation and idempotency key
    already existed: `submission` is that one, untouched. Otherwise `submission` is the new row:
    `delivering` (leased to the caller, who forwards it now) or `queued` (acknowledged; the
    dispatcher delivers it).
    """

    submission: Submission
    created: bool


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    by_state: dict[SubmissionState, int]
    oldest_queued_at: float | None


class OutboxStore(Protocol):
    async def admit(
        self,
        new: NewSubmission,
        *,
        queue: bool,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> Admission:
        """Durably store `new` unless its idempotency key is already taken (then return that).

        In one transaction: the new row is `queued` and acknowledged when `queue` is true or
        when an unresolved submission of the same tenant has the same ordering key (it must
        wait behind it); otherwise it is `delivering`, leased to `owner`. Returns only once
        the row is on disk. Raises `StoreError` when that cannot be done.
        """
        ...

    async def transition(
        self,
        submission_id: str,
        fence: int,
        change: Transition,
        *,
        now: float,
        audit: AuditEntry | None = None,
    ) -> Submission | None:
        """Apply `change` if the row's fence still equals `fence` (durably); else None.

        Leaving `delivering` clears the lease. An on-call change bumps the fence (so a holder
        that raced it cannot write) and records `audit` in the same transaction.
        """
        ...

    async def claim_due(
        self, *, now: float, limit: int, owner: str, lease_seconds: float
    ) -> Sequence[Submission]:
        """Lease up to `limit` due submissions (`queued`, or `unknown` with a due time).

        Only the oldest unresolved submission of each (tenant, ordering key) is eligible, and
        tenants take turns, so one tenant's backlog cannot starve another's. Each claimed row
        becomes `delivering` with a new fence.
        """
        ...

    async def reclaim(self, *, now: float, everything: bool = False) -> int:
        """Turn `delivering` rows whose lease has expired (all of them, with `everything`,
        as a single-node store does on start) into `unknown`: they may have been sent."""
        ...

    async def rebase(self, *, now: float) -> float:
        """If the clock stepped back since waiting rows were last written (the newest of them is
        ahead of `now`), move their schedules back by as much, so a clock step while the gateway
        was down does not stall them; returns the shift in seconds (0 when there was none)."""
        ...

    async def get(self, submission_id: str) -> Submission | None: ...

    async def counts(self) -> OutboxCounts: ...

    async def purge(self, *, finished_before: float) -> int:
        """Delete delivered, failed and discarded rows last updated before `finished_before`."""
        ...

    async def query(self, query: SubmissionQuery, *, limit: int, cursor: str | None) -> Page:
        """Submissions matching `query`, newest first, a page at a time."""
        ...

    async def count(self, query: SubmissionQuery) -> int:
        """How many submissions match `query` (what a bulk action would touch)."""
        ...

    def stream(self, query: SubmissionQuery) -> AsyncIterator[Submission]:
        """Every matching submission, oldest first, without holding them all in memory."""
        ...

    async def import_rows(self, rows: Sequence[Submission], *, audit: AuditEntry) -> int:
        """Insert exported rows into an empty store (as one transaction); `StoreError` if the
        store already holds submissions."""
        ...

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Durably append an audit entry; returns it with its sequence number and time."""
        ...

    async def audit_log(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """Audit entries, newest first, a page at a time."""
        ...


class Store(TokenStore, OutboxStore, Protocol):
    """Everything the gateway keeps durably."""

    async def check_writable(self) -> None:
        """Raise `StoreError` unless a write transaction can be started right now."""
        ...

    def observe_commits(self, callback: Callable[[int, float], None]) -> None:
        """Call `callback(writes, seconds)` after every durable commit (for metrics)."""
        ...

    async def close(self) -> None: ...
