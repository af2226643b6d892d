"""The gateway's durable state, behind protocols a PostgreSQL store can implement too.

Callers see only these protocols and the dataclasses in `gateway.submissions`; the SQLite
store (embedded default) lives in `gateway.store.sqlite`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.submissions import NewSubmission, Submission, SubmissionState, Transition

if TYPE_CHECKING:
    from gateway.config import OutboxConfig

__all__ = [
    "Admission",
    "OutboxCounts",
    "OutboxStore",
    "Store",
    "StoredToken",
    "TokenStore",
    "open_store",
]


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An upstream access token and when it was obtained (UTC unix seconds)."""

    value: str
    obtained_at: float
    expires_in: float

    def age_fraction(self, now: float) -> float:
        """How much of the token's lifetime has passed at wall time `now` (may exceed 1)."""
        return max(0.0, now - self.obtained_at) / self.expires_in


class TokenStore(Protocol):
    async def load_token(self, key: str) -> StoredToken | None:
        """The token saved under `key`, if any."""
        ...

    async def save_token(self, key: str, token: StoredToken) -> None:
        """Durably replace the token under `key`."""
        ...


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
        self, submission_id: str, fence: int, change: Transition, *, now: float
    ) -> Submission | None:
        """Apply `change` if the row's fence still equals `fence` (durably); else None.

        Leaving `delivering` clears the lease.
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

    async def get(self, submission_id: str) -> Submission | None: ...

    async def counts(self) -> OutboxCounts: ...

    async def purge(self, *, finished_before: float) -> int:
        """Delete delivered, failed and discarded rows last updated before `finished_before`."""
        ...


class Store(TokenStore, OutboxStore, Protocol):
    """Everything the gateway keeps durably."""

    async def check_writable(self) -> None:
        """Raise `StoreError` unless a write transaction can be started right now."""
        ...

    async def close(self) -> None: ...


async def open_store(url: str, outbox: OutboxConfig | None = None) -> Store:
    """Open (creating and migrating as needed) the store at `url`."""
    from gateway.config import OutboxConfig
    from gateway.store.sqlite import SqliteStore

    outbox = outbox or OutboxConfig()
    return await SqliteStore.open(
        url.removeprefix("sqlite:///"),
        synchronous=outbox.synchronous,
        group_commit=outbox.group_commit,
        commit_window=outbox.commit_window,
        batch_cap=outbox.commit_batch_cap,
    )
