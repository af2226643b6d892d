"""The store protocols: everything the gateway keeps durably, as the outbox relies on it.

Every implementation (SQLite today) must pass the store contract suite in `tests/contract/`.

Exactly-once delivery rests on these guarantees; each method's docstring says which it needs
and how a store with concurrent writers (PostgreSQL) provides them:

- **Atomic and durable.** Every write method is one transaction: when it returns, all of it is
  committed to disk; when it raises `StoreError`, none of it is. Database errors are
  translated to `StoreError` where they enter, never passed on.
- **Visible to everyone.** Once a write has returned, every later read sees it, through this
  store or any other store opened on the same database.
- **Safe under concurrency.** The guarantees hold for concurrent callers in one process and
  for several gateway processes sharing one database. The embedded SQLite store gets them for
  free: its single writer runs every write in turn under one `BEGIN IMMEDIATE` lock. A store
  with concurrent writers needs what each method names: unique constraints, row locks, the
  fence check inside the writing statement (never read, then write).
- **Fences.** A submission's `fence` names who may write it: the holder of the lease an
  admission or a claim handed out, or on-call, who read the row before acting. Claims,
  reclaims and on-call changes bump it; a write naming an older fence is refused.
- **Time is the caller's.** Schedules and leases are compared with the `now` the caller
  passes, never with a clock of the store's own. Processes sharing a database take their `now`
  from the database's clock (`database_time`, see `gateway.clock.DatabaseClock`), so their
  leases and schedules agree whatever their hosts' clocks say.
- **Single node only**: `rebase` and `reclaim(everything=True)` assume no other process uses
  the database. The gateway calls them once, on start, and only when `single_node` is true.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.outbox.callbacks import CallbackQueue
from gateway.outbox.submissions import (
    AuditEntry,
    IssuanceCheck,
    NewSubmission,
    Page,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)
from gateway.upstream.auth.tokens import StoredToken, TokenStore

__all__ = ["Admission", "OutboxCounts", "OutboxStore", "Resealed", "Store"]


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
    """The outbox at a glance, for metrics and the status page (its two parts may be read a
    moment apart)."""

    #: Every state, 0 for those no row is in.
    by_state: dict[SubmissionState, int]
    #: When the longest-waiting submission was accepted (`created_at`): the oldest `queued`
    #: row, or `unknown` row due for reconciliation. Parked `unknown` rows (no due time) and
    #: `dead` ones wait for on-call, not for the dispatcher, and do not count. None if none.
    oldest_queued_at: float | None
    #: Delivered submissions whose invoice the platform is still issuing (looked up at least
    #: once and not final), by operation; operations with none are left out.
    issuing: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resealed:
    """What one `Store.reseal` batch did."""

    #: Rows looked at, and of those how many were re-sealed under the current key.
    checked: int
    resealed: int
    #: Rows a concurrent write changed between the read and the compare-and-set: left as the
    #: writer made them (it sealed with its own current key); a later pass looks again.
    changed: int
    #: Where the next batch starts; None when this batch reached the last row.
    cursor: str | None


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

        In one transaction: the new row is `queued` and acknowledged (due at `now`) when
        `queue` is true or when an unresolved submission of the same tenant has the same
        ordering key (it must wait behind it); otherwise it is `delivering`, leased to `owner`
        until `now + lease_seconds`, fence 0. Returns only once the row is on disk, exactly as
        `get` will read it. Raises `StoreError` when that cannot be done.

        The key is (tenant, operation, idempotency key), matched whatever the existing row's
        state or body (comparing fingerprints is the caller's business); a submission without
        an idempotency key always creates a row.

        Isolation: of admissions of one key racing in, from any processes, exactly one creates
        and all the others get its row. That needs a unique constraint on the key, and on
        conflict a read of the winner's row once it has committed (PostgreSQL: `INSERT … ON
        CONFLICT DO NOTHING`, which waits for the conflicting insert, then `SELECT`). Of
        admissions of one (tenant, ordering key) racing in, at most one may be `delivering`:
        the check for an unresolved predecessor and the insert are serialised per pair
        (PostgreSQL: a transaction-scoped advisory lock on it, taken before the check), or two
        would both find none and both be forwarded at once. The order of those inserts is the
        acceptance order that `claim_due`'s ordering rule follows.
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

        Returns the row as stored after the change. `updated_at` becomes `now` and
        `next_attempt_at` the change's (None: not scheduled). Leaving `delivering` clears the
        lease. Becoming `delivered` starts a new issuance (docs/design.md#issuance-lifecycle):
        the recorded one is cleared and the row is due for `issuance_due` at `now`. A routine
        change (no `audit`) keeps the fence, so its holder may write again;
        an on-call change (with `audit`) bumps it, so a holder that raced it cannot write, and
        records `audit` in the same transaction: both or neither. A refused change (stale
        fence, unknown id) writes nothing, not even the audit entry.

        The lease's expiry is not checked here: the fence is the only guard. A holder past its
        expiry may still record its result, until `reclaim` bumps the fence.

        Isolation: compare-and-set in the writing statement itself (`UPDATE … WHERE id = $1
        AND fence = $2 RETURNING …`; under PostgreSQL's READ COMMITTED the WHERE is checked
        again once a concurrent writer's lock is released). Of concurrent on-call changes
        naming the same fence, from any processes, exactly one applies.
        """
        ...

    async def claim_due(
        self, *, now: float, limit: int, owner: str, lease_seconds: float
    ) -> Sequence[Submission]:
        """Lease up to `limit` due submissions (`queued`, or `unknown` with a due time).

        Due means `next_attempt_at <= now`; an `unknown` row without a due time is parked for
        on-call and never claimed, nor is a `delivering`, `dead` or final one. Only the oldest
        unresolved submission of each (tenant, ordering key) is eligible, whatever its state
        or schedule: a red-letter never overtakes its original, in flight or backing off.
        Tenants take turns, one row each per turn, and the turns go on across claims from the
        tenant after the one served last (the rotation may be kept per process), so one
        tenant's backlog cannot starve another's, not even with claims of one row at a time.
        Each claimed row becomes `delivering`, leased to `owner` until `now + lease_seconds`,
        with a new fence; its attempts, `maybe_sent` and payload stay as they were. Rows come
        back in acceptance order.

        Isolation: claims from any processes lease disjoint rows. Choosing and leasing are one
        transaction that locks the rows it takes and skips rows another claim has locked
        (PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED`, then the UPDATE). Skipping never lets
        a row overtake its head: the head is still unresolved in what the eligibility check
        reads, locked or not.
        """
        ...

    async def reclaim(self, *, now: float, everything: bool = False) -> int:
        """Turn `delivering` rows whose lease has expired (`lease_expires_at <= now`) into
        `unknown`: they may have been sent. Returns how many.

        A reclaimed row is `maybe_sent`, acknowledged, due at `now` (to be reconciled), leased
        to nobody, with its fence bumped so the old holder cannot record a late result.

        Isolation: state and expiry are checked in the UPDATE's WHERE, row by row, so a holder
        racing its reclaim either records its result first (the row is no longer `delivering`
        and is left alone) or is fenced out; never both. Any process may sweep.

        `everything`: every `delivering` row, expired or not. Single node only, on start: with
        several processes it would take the live leases of the others.
        """
        ...

    async def rebase(self, *, now: float) -> float:
        """If the clock stepped back since waiting rows were last written (the newest of them is
        more than a few seconds ahead of `now`), move their schedules back by as much, so a
        clock step while the gateway was down does not stall them; returns the shift in
        seconds (0 when there was none, and then nothing changes).

        Waiting rows are `queued` and `unknown` ones; their `next_attempt_at`, `updated_at` and
        `age_from` move, in one transaction. Other rows keep their history, and acceptance
        times (`created_at`) never move. A second call on the same clock finds no step.

        Single node only, on start: with several processes, one whose clock is behind the
        others' is not a step and must not reschedule their rows.
        """
        ...

    async def issuance_due(
        self, *, operations: Sequence[str], now: float, limit: int
    ) -> Sequence[Submission]:
        """Up to `limit` `delivered` submissions of `operations` whose invoice is due to be
        looked up (due time `<= now`), the longest due first.

        A row is due from the moment it becomes `delivered` until `record_issuance` records a
        final issuance (or no next check); an `issue_failed` row, or one of an operation not
        named, is never returned. Rows imported as delivered with an issuance not final are
        due from their delivery.

        Isolation: a plain read, no lock. Two processes may look the same invoices up at
        once; that is harmless, as `record_issuance` records facts the platform reported and
        checks the row's fence and state in its own writing statement.
        """
        ...

    async def record_issuance(
        self, checks: Sequence[IssuanceCheck], *, now: float
    ) -> Sequence[Submission]:
        """Record what lookups learned about delivered submissions' invoices, durably, in one
        transaction; returns the rows changed, as stored after the change.

        Each check applies only while its row is still `delivered` with the check's fence
        (an on-call action or a later delivery moved it on otherwise, and the check is
        dropped without error). It stores the issuance and the next due time (`next_check_at`;
        None: no longer looked up). An issuance that ended failed (`outcome.failed`) turns the
        row `issue_failed` (final; `updated_at = now`, last error class
        `issuance_<outcome>`, last error naming the status and cause); anything else leaves
        state, fence and `updated_at` as they were.

        Isolation: the fence and state check is in each row's UPDATE (`UPDATE … WHERE id = $1
        AND fence = $2 AND state = 'delivered'`), so a check racing an on-call change or a
        redelivery either lands first or is dropped, never half applied.
        """
        ...

    async def get(self, submission_id: str) -> Submission | None:
        """The submission as last committed, by any process; None if there is none."""
        ...

    async def counts(self) -> OutboxCounts: ...

    async def next_due(self) -> float | None:
        """The earliest `next_attempt_at` of a waiting row (`queued`, or `unknown` with a due
        time), whether or not it may be claimed yet (behind its ordering key, say); None when
        nothing waits. The dispatcher's hint for when to look again."""
        ...

    async def purge(self, *, finished_before: float) -> int:
        """Delete final rows (delivered, failed, issue_failed, discarded, issued_manually) last
        updated before `finished_before`; returns how many. Their idempotency keys are free
        again.

        Never deletes a row the outbox still needs (`queued`, `delivering`, `unknown`, `dead`),
        not even one racing to a final state: state and age are checked in the DELETE's WHERE,
        not read first. Any process may purge.
        """
        ...

    async def query(self, query: SubmissionQuery, *, limit: int, cursor: str | None) -> Page:
        """Submissions matching `query`, newest accepted first, a page at a time.

        Every given field of `query` must hold (`accepted_after` inclusive, `accepted_before`
        exclusive, `text` a substring of the business key). The cursor is opaque and
        positional: following it visits every row that matched when the first page was read,
        once, even while rows are added; the last page has no cursor. A cursor this store did
        not hand out raises `ValueError`.
        """
        ...

    async def count(self, query: SubmissionQuery) -> int:
        """How many submissions match `query` (what a bulk action would touch)."""
        ...

    def stream(self, query: SubmissionQuery) -> AsyncIterator[Submission]:
        """Every matching submission, oldest accepted first, without holding them all in memory.

        Each row is yielded at most once, as committed when the store read it; rows added or
        changed while the stream runs may or may not show (no snapshot spans the stream).
        """
        ...

    async def import_rows(self, rows: Sequence[Submission], *, audit: AuditEntry) -> int:
        """Insert exported rows into an empty store (as one transaction); `StoreError` if the
        store already holds submissions (audit entries and tokens do not count).

        Each row is stored exactly as given (id, state, fence, lease, times, body, response),
        in the order given, which becomes their acceptance order (`stream` yields oldest
        first). `audit` is recorded in the same transaction. A row that cannot be stored (a
        duplicate id or key) fails the whole import with `StoreError`; nothing stays.

        Isolation: the emptiness check and the inserts are one transaction that no other
        import (or admission) can interleave with: of imports racing into one empty store, one
        succeeds (PostgreSQL: lock the table in EXCLUSIVE mode before checking).
        """
        ...

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Durably append an audit entry; returns it with its sequence number and time.

        The time is the entry's own `at` if set, else the store's wall clock when recording.
        Sequence numbers are unique and grow in the order entries are recorded.
        """
        ...

    async def audit_log(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """Audit entries, newest (highest sequence number) first, a page at a time; the cursor
        as for `query` (None after the last page; `ValueError` for a foreign one)."""
        ...


class Store(TokenStore, OutboxStore, Protocol):
    """Everything the gateway keeps durably.

    Tokens: `save_token` replaces the token under its key in one atomic upsert (of concurrent
    saves, the last committed wins whole), durably; `load_token` sees it from any process.
    """

    #: True when one process at a time uses the database (the embedded SQLite store): the
    #: start-up `rebase` and `reclaim(everything=True)` are safe. False for a store replicas
    #: share (PostgreSQL): each start reclaims only expired leases.
    @property
    def callbacks(self) -> CallbackQueue:
        """The callback event queue (`gateway.outbox.callbacks`)."""
        ...

    single_node: bool

    async def database_time(self) -> float | None:
        """The database server's wall clock now (UTC unix seconds), for processes sharing the
        database to schedule by; None for the embedded store (its host's clock serves)."""
        ...

    async def announce(self) -> None:
        """Tell every process on this database that submissions may be due now (PostgreSQL:
        `NOTIFY`), so their dispatchers look before their next poll. Best effort: never
        raises (polling is the fallback). The embedded store has no one to tell."""
        ...

    def on_announcement(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever any process on this database announces (its own included).

        PostgreSQL: `LISTEN` on a connection of its own (not from the pool, not through a
        transaction pooler), re-established with back-off when lost; each time it starts
        listening (the first time included) it calls `callback` once, for whatever was
        announced while nobody listened. One callback: a later call replaces it. The embedded
        store never calls it."""
        ...

    async def merge_rows(self, rows: Sequence[Submission]) -> int:
        """Store each row exactly as given (as `import_rows` does) unless this store already
        holds a submission with its id; returns how many were stored. One transaction.

        For `invoice-gateway store copy`, which may be run again after an interruption: rows
        copied before are left alone. Acceptance order follows the order of the calls and of
        `rows`. A row whose idempotency key another id holds fails the call with `StoreError`.
        """
        ...

    async def merge_audit(self, entries: Sequence[AuditEntry]) -> int:
        """Store audit entries with their own sequence numbers and times, skipping numbers
        this store already holds; returns how many were stored. Later `record_audit` numbers
        continue above the highest. For `store copy`."""
        ...

    async def token_rows(self) -> Sequence[tuple[str, StoredToken]]:
        """Every saved token row (key and token), for `store copy`."""
        ...

    async def key_usage(self) -> dict[str, int]:
        """How many stored values (body, response, result, issuance) are sealed under each key
        id (docs/encryption.md); plaintext values are not counted. Reads every row."""
        ...

    async def reseal(self, *, after: str | None, limit: int) -> Resealed:
        """Re-seal under the current key the sealed columns of up to `limit` rows after the
        cursor `after` (None: from the first), in acceptance order, as one transaction; a
        row already wholly under the current key is left alone. Without a current key, sealed
        values are stored in plaintext again. For `invoice-gateway store rotate-key`.

        Isolation: compare-and-set on the old values (`UPDATE … WHERE id = $1 AND body = $2
        AND response IS NOT DISTINCT FROM $3 …`): a row a gateway changed meanwhile is never
        overwritten with what was read before; it is counted in `changed`. `SealingError`
        (a `StoreError`) when a row is sealed under a key this store lacks."""
        ...

    async def check_writable(self) -> None:
        """Raise `StoreError` unless a write transaction can be started (and committed) right
        now: fails on a full disk, a read-only file or database, a standby, a closed store.

        May write to prove it, but leaves nothing the outbox reads (no submission, audit
        entry or count changes).
        """
        ...

    def observe_commits(self, callback: Callable[[int, float], None]) -> None:
        """Call `callback(writes, seconds)` after every durable commit (for metrics): how many
        write calls shared it (1 without group commit) and how long it took.

        Never for reads or failed commits. One observer: a later call replaces it. The
        callback runs on the store's own task, so it must be quick and must not raise.
        """
        ...

    async def close(self) -> None:
        """Release the database. Writes not yet committed fail with `StoreError`; none is
        half applied."""
        ...
