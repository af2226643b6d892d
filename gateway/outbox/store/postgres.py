"""The PostgreSQL store: several gateway replicas sharing one database, through asyncpg.

Every call takes a connection from the pool; every write is one transaction, committed
(`synchronous_commit` on) before it returns. The isolation `protocol` asks for comes from the
database: a unique index and `INSERT … ON CONFLICT` for idempotency keys, transaction-scoped
advisory locks for ordering keys and `exclusive`, the fence inside each writing statement,
`FOR UPDATE SKIP LOCKED` for claims. Wake-ups travel by `LISTEN/NOTIFY` on a connection of
their own. Database errors become `StoreError` in `_translated`, where they enter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import structlog

from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.outbox.store.callback_queue import PostgresCallbackQueue
from gateway.outbox.store.postgres_schema import migrate as migrate_schema
from gateway.outbox.store.protocol import Admission, OutboxCounts, Resealed
from gateway.outbox.store.rows import (
    AUDIT_COLUMNS,
    COLUMNS,
    admitted,
    audit_entry,
    audit_values,
    cursor_of,
    issuance_error,
    parse_cursor,
    resealed,
    seal_body,
    seal_json,
    submission,
    submission_values,
)
from gateway.outbox.store.sealing import Sealer
from gateway.outbox.store.urls import masked_url
from gateway.outbox.submissions import (
    FINAL_STATES,
    UNRESOLVED_STATES,
    AuditEntry,
    IssuanceCheck,
    NewSubmission,
    Page,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)
from gateway.upstream.auth.tokens import StoredToken

__all__ = ["PostgresStore"]

log = structlog.get_logger("gateway.outbox.store")

#: What a failing database call raises, from the server, the driver or the network.
_DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
#: The channel announcements travel on.
CHANNEL = "gateway_wake"
#: How the LISTEN connection shows in `pg_stat_activity`.
LISTENER_NAME = "invoice-gateway-listen"
#: Back-off of the LISTEN connection's reconnects: first wait, and the longest.
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 10.0
#: How often the idle LISTEN connection is checked (a silently dropped one never says so).
LISTEN_CHECK_S = 15.0
#: A stored time this far ahead of the clock means the clock stepped back (as in SQLite).
CLOCK_STEP_TOLERANCE_S = 5.0
#: Rows `stream` reads at a time.
STREAM_BATCH = 500

_UNRESOLVED = ", ".join(f"'{state.value}'" for state in UNRESOLVED_STATES)
_WAITING = "('queued', 'unknown')"
_FINISHED = "(" + ", ".join(f"'{state.value}'" for state in FINAL_STATES) + ")"
_DATABASE_NOW = "extract(epoch FROM clock_timestamp())::float8"
_PLACEHOLDERS = ", ".join(f"${n}" for n in range(1, len(COLUMNS.split(",")) + 1))

# -- tokens (`upstream_token`), health, coordination --------------------------------------

_UPSTREAM_LOAD = "SELECT value, obtained_at, expires_in FROM upstream_token WHERE key = $1"
_UPSTREAM_SAVE = (
    "INSERT INTO upstream_token (key, value, obtained_at, expires_in) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "obtained_at = excluded.obtained_at, expires_in = excluded.expires_in"
)
_UPSTREAM_ROWS = (
    "SELECT key, value, obtained_at, expires_in FROM upstream_token "
    "WHERE key <> 'readyz' ORDER BY key"
)
_IN_RECOVERY = "SELECT pg_is_in_recovery()"
#: A harmless write proving the database takes writes; no submission or audit entry.
_PROBE = (
    "INSERT INTO upstream_token (key, value, obtained_at, expires_in) "
    "VALUES ('readyz', '', 0, 1) ON CONFLICT (key) DO UPDATE SET obtained_at = 0"
)
_DATABASE_TIME = f"SELECT {_DATABASE_NOW}"
_LOCK_NAME = "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))"
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
_PING = "SELECT 1"

# -- admission and changes ----------------------------------------------------------------

#: Serialises admissions of one (tenant, ordering key) until commit. Length-prefixed, so no
#: two pairs hash the same text (PostgreSQL text cannot hold a NUL separator).
_LOCK_ORDERING_KEY = (
    "SELECT pg_advisory_xact_lock("
    "hashtextextended(length($1::text) || ':' || $1::text || $2::text, 1))"
)
_HAS_UNRESOLVED = (
    "SELECT EXISTS (SELECT 1 FROM submission WHERE tenant = $1 AND ordering_key = $2 "
    f"AND state IN ({_UNRESOLVED}))"
)
_INSERT = f"INSERT INTO submission ({COLUMNS}) VALUES ({_PLACEHOLDERS})"
_ADMIT = (
    f"{_INSERT} ON CONFLICT (tenant, operation, idempotency_key) "
    f"WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING {COLUMNS}"
)
_MERGE = f"{_INSERT} ON CONFLICT (id) DO NOTHING RETURNING seq"
_BY_ID = f"SELECT {COLUMNS} FROM submission WHERE id = $1"
_BY_KEY = (
    f"SELECT {COLUMNS} FROM submission "
    "WHERE tenant = $1 AND operation = $2 AND idempotency_key = $3"
)
_RECLAIM = (
    "UPDATE submission SET state = 'unknown', maybe_sent = TRUE, acknowledged = TRUE, "
    "lease_owner = NULL, lease_expires_at = NULL, fence = fence + 1, "
    "next_attempt_at = $1, updated_at = $1, last_error_class = 'lease_expired', "
    "last_error = 'the gateway stopped while delivering it; it may have been sent' "
    "WHERE state = 'delivering' AND ($2::boolean OR lease_expires_at <= $1)"
)
_LATEST_WAITING = f"SELECT max(updated_at) FROM submission WHERE state IN {_WAITING}"
_REBASE = (
    "UPDATE submission SET next_attempt_at = next_attempt_at - $1, "
    f"updated_at = updated_at - $1, age_from = age_from - $1 WHERE state IN {_WAITING}"
)
_PURGE = f"DELETE FROM submission WHERE state IN {_FINISHED} AND updated_at < $1"

# -- claims -------------------------------------------------------------------------------

#: Tenants with waiting rows, one index probe each (a loose index scan).
_WAITING_TENANTS = f"""
    WITH RECURSIVE waiting (tenant) AS (
        (SELECT tenant FROM submission WHERE state IN {_WAITING} ORDER BY tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT s.tenant FROM submission s
                WHERE s.state IN {_WAITING} AND s.tenant > w.tenant
                ORDER BY s.tenant LIMIT 1)
        FROM waiting w WHERE w.tenant IS NOT NULL
    )
    SELECT tenant FROM waiting WHERE tenant IS NOT NULL
"""
#: Locks up to $4 due heads of each tenant in $1, after the row $2 names (the last one taken),
#: in acceptance order; rows other claims have locked are skipped. A head is a row no earlier
#: unresolved row of its tenant and ordering key waits before, locked or not.
_LOCK_DUE_HEADS = f"""
    SELECT t.tenant, c.seq
    FROM unnest($1::text[], $2::bigint[]) AS t (tenant, after)
    CROSS JOIN LATERAL (
        SELECT s.seq FROM submission s
        WHERE s.tenant = t.tenant AND s.state IN {_WAITING} AND s.seq > t.after
          AND s.next_attempt_at <= $3
          AND (s.ordering_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM submission p
              WHERE p.tenant = s.tenant AND p.ordering_key = s.ordering_key
                AND p.seq < s.seq AND p.state IN ({_UNRESOLVED})))
        ORDER BY s.seq LIMIT $4
        FOR UPDATE OF s SKIP LOCKED
    ) c
    ORDER BY c.seq
"""
_LEASE = f"""
    WITH claimed AS (
        UPDATE submission SET state = 'delivering', lease_owner = $1, lease_expires_at = $2,
            fence = fence + 1, updated_at = $3
        WHERE seq = ANY($4::bigint[])
        RETURNING *
    )
    SELECT {COLUMNS} FROM claimed ORDER BY seq
"""

# -- issuance -----------------------------------------------------------------------------

_ISSUANCE_DUE = (
    f"SELECT {COLUMNS} FROM submission WHERE operation = ANY($1::text[]) "
    "AND issuance_due_at <= $2 AND state = 'delivered' "
    "ORDER BY issuance_due_at, seq LIMIT $3"
)
_RECORD_ISSUANCE = (
    "UPDATE submission SET issuance = $1, issuance_outcome = $2, issuance_due_at = $3, "
    "state = CASE WHEN $4 THEN 'issue_failed' ELSE state END, "
    # An issuance ending (failed, or done: its callback event's time) is a change of the row.
    "updated_at = CASE WHEN $4 OR $2 = 'done' THEN $5 ELSE updated_at END, "
    "last_error_class = CASE WHEN $4 THEN $6 ELSE last_error_class END, "
    "last_error = CASE WHEN $4 THEN $7 ELSE last_error END "
    f"WHERE id = $8 AND fence = $9 AND state = 'delivered' RETURNING {COLUMNS}"
)

# -- encryption at rest -------------------------------------------------------------------

#: Stored values sealed under each key id (`gateway.outbox.store.sealing` formats).
_KEY_USAGE = """
    SELECT encode(substring(body FROM 5 FOR 8), 'hex'), count(*) FROM submission
        WHERE substring(body FROM 1 FOR 4) = '\\x00677731'::bytea GROUP BY 1
    UNION ALL SELECT substr(response, 11, 16), count(*) FROM submission
        WHERE left(response, 10) = 'gwsealed1:' GROUP BY 1
    UNION ALL SELECT substr(result, 11, 16), count(*) FROM submission
        WHERE left(result, 10) = 'gwsealed1:' GROUP BY 1
    UNION ALL SELECT substr(issuance, 11, 16), count(*) FROM submission
        WHERE left(issuance, 10) = 'gwsealed1:' GROUP BY 1
"""
_RESEAL_BATCH = (
    "SELECT seq, id, body, response, result, issuance FROM submission "
    "WHERE seq > $1 ORDER BY seq LIMIT $2"
)
#: Compare-and-set: a row a gateway changed since it was read is left alone.
_RESEAL = (
    "UPDATE submission SET body = $1, response = $2, result = $3, issuance = $4 "
    "WHERE id = $5 AND body = $6 AND response IS NOT DISTINCT FROM $7 "
    "AND result IS NOT DISTINCT FROM $8 AND issuance IS NOT DISTINCT FROM $9"
)

# -- reading, export, audit ---------------------------------------------------------------

_COUNT_STATES = "SELECT state, count(*) FROM submission GROUP BY state"
#: Waiting = queued, or unknown and due for reconciliation (parked rows wait for on-call).
_NEXT_DUE = f"SELECT min(next_attempt_at) FROM submission WHERE state IN {_WAITING}"
_OLDEST_WAITING = (
    f"SELECT min(created_at) FROM submission WHERE state IN {_WAITING} "
    "AND next_attempt_at IS NOT NULL"
)
_COUNT_ISSUING = (
    "SELECT operation, count(*) FROM submission WHERE issuance_outcome = 'issuing' "
    "GROUP BY operation"
)
_LOCK_SUBMISSIONS = "LOCK TABLE submission IN EXCLUSIVE MODE"
_HOLDS_SUBMISSIONS = "SELECT EXISTS (SELECT 1 FROM submission)"
_RECORD_AUDIT = (
    f"INSERT INTO audit_log (at, {AUDIT_COLUMNS}) "
    f"VALUES (COALESCE($1, {_DATABASE_NOW}), $2, $3, $4, $5, $6, $7) RETURNING seq, at"
)
_LOCK_AUDIT = "LOCK TABLE audit_log IN EXCLUSIVE MODE"
_MERGE_AUDIT = (
    f"INSERT INTO audit_log (seq, at, {AUDIT_COLUMNS}) "
    f"VALUES ($1, COALESCE($2, {_DATABASE_NOW}), $3, $4, $5, $6, $7, $8) "
    "ON CONFLICT (seq) DO NOTHING RETURNING seq"
)
#: After merging: later entries are numbered above every stored one.
_NUMBER_AUDIT_ABOVE = (
    "SELECT setval(pg_get_serial_sequence('audit_log', 'seq'), "
    "GREATEST(max(seq), nextval(pg_get_serial_sequence('audit_log', 'seq')))) FROM audit_log"
)
_AUDIT_LOG = (
    f"SELECT seq, at, {AUDIT_COLUMNS} FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Database errors in the block raise `StoreError` saying `what` failed."""
    try:
        yield
    except _DATABASE_ERRORS as exc:
        raise StoreError(f"{what}: {_describe(exc)}") from exc


class _Params:
    """Bound parameters of a statement assembled from fragments: `p(value)` keeps `value` and
    gives its placeholder (`$n`)."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


class PostgresStore:
    """The store replicas share; open with `PostgresStore.open` (or `open_store`)."""

    single_node = False

    def __init__(
        self, pool: asyncpg.Pool, url: str, settings: StoreConfig, sealer: Sealer | None = None
    ) -> None:
        self._sealer = sealer or Sealer()
        self._pool = pool
        self._where = masked_url(url)
        self._listen_url = settings.listen_url or url
        self._settings = settings
        self._closed = False
        #: The tenant served last by `claim_due` (per process, as the protocol allows).
        self._turn: str | None = None
        self._on_commit: Callable[[int, float], None] | None = None
        self._on_announcement: Callable[[], None] | None = None
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, url: str, settings: StoreConfig, *, migrate: bool, sealer: Sealer | None = None
    ) -> PostgresStore:
        """Connect to the database at `url` and check (with `migrate`: bring up to date) its
        schema; `StoreError` naming the URL without its password if that cannot be done."""
        where = masked_url(url)
        options: dict[str, Any] = {}
        if not settings.prepared_statements:
            options["statement_cache_size"] = 0  # PgBouncer in transaction mode
        try:
            pool = await asyncpg.create_pool(
                url,
                # No floor to restore: while the database is down the pool would otherwise log a
                # traceback every few seconds; connections are made as calls need them.
                min_size=0,
                max_size=settings.pool_size,
                timeout=settings.connect_timeout,
                command_timeout=settings.command_timeout,
                **options,
            )
        except (*_DATABASE_ERRORS, ValueError) as exc:
            pool, failure = None, exc
        else:
            failure = await _first_contact(pool, settings.connect_timeout)
        if failure is not None:
            if pool is not None:
                pool.terminate()
            raise StoreError(
                f"cannot reach the store at {where}: {_describe(failure)}; "
                "check that PostgreSQL is up and the URL is right"
            ) from None  # the cause may quote the URL, password and all
        store = cls(pool, url, settings, sealer)
        try:
            async with store._connection(f"cannot prepare the store at {where}") as connection:
                await migrate_schema(connection, where, apply=migrate)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        try:
            # Waits for calls still running to give their connections back.
            await asyncio.wait_for(self._pool.close(), self._settings.command_timeout)
        except _DATABASE_ERRORS:
            self._pool.terminate()
        except asyncio.CancelledError:
            self._pool.terminate()
            raise

    def observe_commits(self, callback: Callable[[int, float], None]) -> None:
        self._on_commit = callback

    @property
    def callbacks(self) -> PostgresCallbackQueue:
        """The callback event queue (`gateway.outbox.callbacks`)."""
        return PostgresCallbackQueue(self._write, self._connection)

    def _open(self, row: Any) -> Submission:
        """The submission a row of `COLUMNS` holds, opened by this store's sealer."""
        return submission(row, self._sealer)

    # -- connections ----------------------------------------------------------------------

    async def _acquire(self, what: str) -> Any:
        if self._closed:
            raise StoreError(f"{what}: the store at {self._where} is closed")
        with _translated(what):
            return await self._pool.acquire(timeout=self._settings.connect_timeout)

    async def _release(self, connection: Any) -> None:
        with contextlib.suppress(*_DATABASE_ERRORS):
            await self._pool.release(connection)

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Any]:
        """A pool connection for the block; database errors in it raise `StoreError`."""
        connection = await self._acquire(what)
        try:
            with _translated(what):
                yield connection
        finally:
            await self._release(connection)

    @contextlib.asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[Any]:
        """A connection in a transaction, committed when the block ends (rolled back if it
        raises); then the commit is reported to the observer."""
        started = time.perf_counter()
        async with self._connection(what) as connection, connection.transaction():
            yield connection
        if self._on_commit is not None:
            self._on_commit(1, time.perf_counter() - started)

    # -- health and coordination ----------------------------------------------------------

    async def check_writable(self) -> None:
        async with self._write(f"the store at {self._where} takes no writes") as connection:
            if await connection.fetchval(_IN_RECOVERY):
                raise StoreError(
                    f"the store at {self._where} is a standby (in recovery): it takes no writes"
                )
            await connection.execute(_PROBE)

    async def database_time(self) -> float | None:
        async with self._connection("cannot read the database's clock") as connection:
            return float(await connection.fetchval(_DATABASE_TIME))

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Holds `pg_advisory_xact_lock(name)` in a transaction of its own for the block
        (transaction-scoped: safe behind a transaction pooler). Errors of the block itself
        pass on as they are."""
        what = f"cannot hold the lock {name!r} in the store at {self._where}"
        connection = await self._acquire(what)
        try:
            transaction = connection.transaction()
            with _translated(what):
                await transaction.start()
                await connection.execute(_LOCK_NAME, name)
            try:
                yield
            except BaseException:
                with contextlib.suppress(*_DATABASE_ERRORS):
                    await transaction.rollback()
                raise
            with _translated(what):
                await transaction.commit()
        finally:
            await self._release(connection)

    async def announce(self) -> None:
        try:
            async with self._connection("cannot announce due submissions") as connection:
                await connection.execute(_NOTIFY)
        except StoreError as exc:
            log.debug("announcement not sent; the others will poll", error=str(exc))

    def on_announcement(self, callback: Callable[[], None]) -> None:
        """Needs a running event loop: the LISTEN connection is kept by a task of its own."""
        self._on_announcement = callback
        if self._listener is None and not self._closed:
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="store-listen"
            )

    async def _listen(self) -> None:
        """Keep a connection listening on `CHANNEL` until `close`, reconnecting with back-off;
        one warning per outage, and a note when listening again, with one call of the callback
        in place of the announcements missed meanwhile."""
        delay = RECONNECT_FIRST_S
        outage = False
        while True:
            try:
                connection = await asyncpg.connect(
                    self._listen_url,
                    timeout=self._settings.connect_timeout,
                    server_settings={"application_name": LISTENER_NAME},
                )
            except (*_DATABASE_ERRORS, ValueError) as exc:
                if not outage:
                    log.warning(
                        "cannot listen for announcements; polling meanwhile",
                        store=self._where,
                        error=_describe(exc),
                    )
                    outage = True
            else:
                try:
                    await self._listen_on(connection, recovered=outage)
                    delay, outage = RECONNECT_FIRST_S, False
                    await self._until_lost(connection)
                except _DATABASE_ERRORS:
                    pass  # lost: reconnect below
                finally:
                    await _close_quietly(connection)
                if not outage:
                    log.warning(
                        "lost the connection listening for announcements; reconnecting",
                        store=self._where,
                    )
                    outage = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _listen_on(self, connection: Any, *, recovered: bool) -> None:
        await connection.add_listener(CHANNEL, self._announced)
        if recovered:
            log.info("listening for announcements again", store=self._where)
        # What was announced while nothing listened — before the first connection was up (a
        # replica just started, already serving), or while it was lost — is lost: one call, so
        # the dispatcher looks now rather than at its next poll.
        if self._on_announcement is not None:
            self._on_announcement()

    async def _until_lost(self, connection: Any) -> None:
        """Return when `connection` closes under us; raise when it fails its periodic check."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        while not connection.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), LISTEN_CHECK_S)
                return
            await connection.execute(_PING, timeout=self._settings.connect_timeout)

    def _announced(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        if self._on_announcement is not None:
            self._on_announcement()

    # -- encryption at rest ---------------------------------------------------------------

    async def key_usage(self) -> dict[str, int]:
        async with self._connection("cannot read which keys seal the store") as connection:
            rows = await connection.fetch(_KEY_USAGE)
        usage: dict[str, int] = {}
        for kid, count in rows:
            usage[str(kid)] = usage.get(str(kid), 0) + int(count)
        return usage

    async def reseal(self, *, after: str | None, limit: int) -> Resealed:
        start = parse_cursor(after) or 0
        async with self._connection("cannot read submissions to re-seal") as connection:
            found = list(await connection.fetch(_RESEAL_BATCH, start, limit))
        # Opened and sealed before the transaction: it holds row locks only while writing.
        updates = [
            (new, row)
            for row in found
            if (new := resealed(self._sealer, tuple(row)[1:])) is not None
        ]
        done = 0
        if updates:
            async with self._write("cannot re-seal submissions") as connection:
                for new, row in updates:
                    done += _affected(await connection.execute(_RESEAL, *new, *tuple(row)[1:]))
        more = len(found) == limit
        return Resealed(
            checked=len(found),
            resealed=done,
            changed=len(updates) - done,
            cursor=cursor_of(found[-1][0]) if more and found else None,
        )

    # -- tokens ---------------------------------------------------------------------------

    async def load_token(self, key: str) -> StoredToken | None:
        async with self._connection("cannot read the upstream token") as connection:
            row = await connection.fetchrow(_UPSTREAM_LOAD, key)
        return StoredToken(row[0], row[1], row[2]) if row else None

    async def save_token(self, key: str, token: StoredToken) -> None:
        async with self._write("cannot save the upstream token") as connection:
            await connection.execute(
                _UPSTREAM_SAVE, key, token.value, token.obtained_at, token.expires_in
            )

    async def token_rows(self) -> Sequence[tuple[str, StoredToken]]:
        async with self._connection("cannot read the upstream tokens") as connection:
            rows = await connection.fetch(_UPSTREAM_ROWS)
        return [(str(r[0]), StoredToken(r[1], r[2], r[3])) for r in rows]

    # -- outbox ---------------------------------------------------------------------------

    async def admit(
        self,
        new: NewSubmission,
        *,
        queue: bool,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> Admission:
        async with self._write("cannot store the submission") as connection:
            blocked = False
            if new.ordering_key is not None:
                await connection.execute(_LOCK_ORDERING_KEY, new.tenant, new.ordering_key)
                blocked = bool(
                    await connection.fetchval(_HAS_UNRESOLVED, new.tenant, new.ordering_key)
                )
            row = admitted(
                new,
                queue=queue,
                blocked=blocked,
                owner=owner,
                lease_seconds=lease_seconds,
                now=now,
            )
            # On a taken key this waits for its holder's commit, then inserts nothing.
            stored = await connection.fetchrow(_ADMIT, *submission_values(row, self._sealer))
            if stored is not None:
                return Admission(self._open(stored), created=True)
            existing = await connection.fetchrow(
                _BY_KEY, new.tenant, new.operation, new.idempotency_key
            )
        if existing is None:  # purged between the conflict and the read
            raise StoreError("the submission holding this idempotency key just went; retry")
        return Admission(self._open(existing), created=False)

    async def transition(
        self,
        submission_id: str,
        fence: int,
        change: Transition,
        *,
        now: float,
        audit: AuditEntry | None = None,
    ) -> Submission | None:
        sql, params = _transition(
            submission_id, fence, change, now=now, audit=audit, sealer=self._sealer
        )
        async with self._write("cannot change the submission") as connection:
            row = await connection.fetchrow(sql, *params)
            if row is not None and audit is not None:
                await connection.fetchrow(_RECORD_AUDIT, audit.at or now, *audit_values(audit))
        return self._open(row) if row is not None else None

    async def claim_due(
        self, *, now: float, limit: int, owner: str, lease_seconds: float
    ) -> Sequence[Submission]:
        async with self._write("cannot claim due submissions") as connection:
            seqs, self._turn = await _lock_due_heads(
                connection, now=now, limit=limit, served_last=self._turn
            )
            if not seqs:
                return []
            rows = await connection.fetch(_LEASE, owner, now + lease_seconds, now, seqs)
        return [self._open(row) for row in rows]

    async def reclaim(self, *, now: float, everything: bool = False) -> int:
        async with self._write("cannot reclaim expired leases") as connection:
            return _affected(await connection.execute(_RECLAIM, now, everything))

    async def rebase(self, *, now: float) -> float:
        async with self._write("cannot rebase waiting submissions") as connection:
            latest = await connection.fetchval(_LATEST_WAITING)
            if latest is None or latest <= now + CLOCK_STEP_TOLERANCE_S:
                return 0.0
            shift = float(latest) - now
            await connection.execute(_REBASE, shift)
        return shift

    async def get(self, submission_id: str) -> Submission | None:
        async with self._connection("cannot read the submission") as connection:
            row = await connection.fetchrow(_BY_ID, submission_id)
        return self._open(row) if row is not None else None

    async def next_due(self) -> float | None:
        async with self._connection("cannot read when the next submission is due") as connection:
            due = await connection.fetchval(_NEXT_DUE)
        return float(due) if due is not None else None

    async def counts(self) -> OutboxCounts:
        async with self._connection("cannot count the outbox") as connection:
            states = await connection.fetch(_COUNT_STATES)
            oldest = await connection.fetchval(_OLDEST_WAITING)
            issuing = await connection.fetch(_COUNT_ISSUING)
        by_state = {state: 0 for state in SubmissionState}
        for state, count in states:
            by_state[SubmissionState(state)] = int(count)
        return OutboxCounts(
            by_state=by_state,
            oldest_queued_at=oldest,
            issuing={str(operation): int(count) for operation, count in issuing},
        )

    async def purge(self, *, finished_before: float) -> int:
        async with self._write("cannot purge finished submissions") as connection:
            return _affected(await connection.execute(_PURGE, finished_before))

    # -- issuance -------------------------------------------------------------------------

    async def issuance_due(
        self, *, operations: Sequence[str], now: float, limit: int
    ) -> Sequence[Submission]:
        if not operations:
            return []
        async with self._connection("cannot read the invoices being issued") as connection:
            rows = await connection.fetch(_ISSUANCE_DUE, list(operations), now, limit)
        return [self._open(row) for row in rows]

    async def record_issuance(
        self, checks: Sequence[IssuanceCheck], *, now: float
    ) -> Sequence[Submission]:
        recorded: list[Submission] = []
        async with self._write("cannot record invoice issuance") as connection:
            for check in checks:
                issuance = check.issuance
                row = await connection.fetchrow(
                    _RECORD_ISSUANCE,
                    seal_json(self._sealer, check.submission_id, "issuance", issuance.to_json()),
                    issuance.outcome.value,
                    check.next_check_at,
                    issuance.outcome.failed,
                    now,
                    f"issuance_{issuance.outcome.value}",
                    issuance_error(issuance),
                    check.submission_id,
                    check.fence,
                )
                if row is not None:
                    recorded.append(self._open(row))
        return recorded

    # -- on-call --------------------------------------------------------------------------

    async def query(self, query: SubmissionQuery, *, limit: int, cursor: str | None) -> Page:
        before = parse_cursor(cursor)
        where, p = _where(query)
        if before is not None:
            where += f" AND seq < {p(before)}"
        sql = f"SELECT seq, {COLUMNS} FROM submission WHERE {where} ORDER BY seq DESC"
        async with self._connection("cannot list submissions") as connection:
            found = list(await connection.fetch(f"{sql} LIMIT {p(limit + 1)}", *p.values))
        more = len(found) > limit
        found = found[:limit]
        return Page(
            items=tuple(self._open(row[1:]) for row in found),
            next_cursor=cursor_of(found[-1][0]) if more and found else None,
        )

    async def count(self, query: SubmissionQuery) -> int:
        where, p = _where(query)
        async with self._connection("cannot count submissions") as connection:
            found = await connection.fetchval(
                f"SELECT count(*) FROM submission WHERE {where}", *p.values
            )
        return int(found)

    async def stream(self, query: SubmissionQuery) -> AsyncIterator[Submission]:
        after = 0
        while True:
            where, p = _where(query)
            sql = (
                f"SELECT seq, {COLUMNS} FROM submission WHERE {where} AND seq > {p(after)} "
                f"ORDER BY seq LIMIT {STREAM_BATCH}"
            )
            async with self._connection("cannot read submissions") as connection:
                batch = await connection.fetch(sql, *p.values)
            if not batch:
                return
            for row in batch:
                yield self._open(row[1:])
            after = int(batch[-1][0])

    async def import_rows(self, rows: Sequence[Submission], *, audit: AuditEntry) -> int:
        async with self._write("cannot import submissions") as connection:
            # No other import or admission interleaves between the check and the inserts.
            await connection.execute(_LOCK_SUBMISSIONS)
            if await connection.fetchval(_HOLDS_SUBMISSIONS):
                raise StoreError(
                    "the store already holds submissions; import only into an empty store"
                )
            if rows:
                await connection.executemany(
                    _INSERT, [submission_values(row, self._sealer) for row in rows]
                )
            await connection.fetchrow(_RECORD_AUDIT, audit.at or None, *audit_values(audit))
        return len(rows)

    async def merge_rows(self, rows: Sequence[Submission]) -> int:
        stored = 0
        async with self._write("cannot merge submissions") as connection:
            for row in rows:
                if (
                    await connection.fetchval(_MERGE, *submission_values(row, self._sealer))
                    is not None
                ):
                    stored += 1
        return stored

    async def merge_audit(self, entries: Sequence[AuditEntry]) -> int:
        stored = 0
        async with self._write("cannot merge audit entries") as connection:
            # No entry is numbered meanwhile: the sequence moves above the merged ones first.
            await connection.execute(_LOCK_AUDIT)
            for entry in entries:
                merged = await connection.fetchval(
                    _MERGE_AUDIT, entry.seq, entry.at or None, *audit_values(entry)
                )
                stored += merged is not None
            if stored:
                await connection.execute(_NUMBER_AUDIT_ABOVE)
        return stored

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        async with self._write("cannot record the audit entry") as connection:
            row = await connection.fetchrow(_RECORD_AUDIT, entry.at or None, *audit_values(entry))
        return replace(entry, seq=int(row[0]), at=float(row[1]))

    async def audit_log(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        before = parse_cursor(cursor)
        async with self._connection("cannot read the audit log") as connection:
            rows = await connection.fetch(
                _AUDIT_LOG, before if before is not None else 2**62, limit + 1
            )
        found = [audit_entry(row) for row in rows]
        more = len(found) > limit
        found = found[:limit]
        return found, (cursor_of(found[-1].seq) if more and found else None)


def _transition(
    submission_id: str,
    fence: int,
    change: Transition,
    *,
    now: float,
    audit: AuditEntry | None,
    sealer: Sealer,
) -> tuple[str, list[Any]]:
    """The compare-and-set UPDATE applying `change` (see `OutboxStore.transition`)."""
    p = _Params()
    at = p(now)
    delta = p(change.attempts_delta)
    sets = [
        f"state = {p(change.state.value)}",
        f"attempts = {delta}" if change.reset_attempts else f"attempts = attempts + {delta}",
        f"updated_at = {at}",
        f"next_attempt_at = {p(change.next_attempt_at)}",
    ]
    if change.state is not SubmissionState.DELIVERING:
        sets += ["lease_owner = NULL", "lease_expires_at = NULL"]
    if change.maybe_sent is not None:
        sets.append(f"maybe_sent = {p(change.maybe_sent)}")
    if change.acknowledged is not None:
        sets.append(f"acknowledged = {p(change.acknowledged)}")
    if change.error_class is not None:
        sets += [f"last_error_class = {p(change.error_class)}", f"last_error = {p(change.error)}"]
    elif change.clear_error:
        sets += ["last_error_class = NULL", "last_error = NULL"]
    if change.response is not None:
        response = seal_json(sealer, submission_id, "response", change.response.to_json())
        sets.append(f"response = {p(response)}")
    if change.result is not None:
        sets.append(f"result = {p(seal_json(sealer, submission_id, 'result', change.result))}")
    if change.state is SubmissionState.DELIVERED:
        # Each delivery starts an issuance of its own, to be followed from now on.
        sets += [
            f"delivered_at = {at}",
            "issuance = NULL",
            "issuance_outcome = NULL",
            f"issuance_due_at = {at}",
        ]
    if change.restart_age:
        sets.append(f"age_from = {at}")
    if change.body is not None:
        sets.append(f"body = {p(seal_body(sealer, submission_id, change.body))}")
    if audit is not None:
        sets.append("fence = fence + 1")  # whoever held it before cannot write now
    sql = (
        f"UPDATE submission SET {', '.join(sets)} "
        f"WHERE id = {p(submission_id)} AND fence = {p(fence)} RETURNING {COLUMNS}"
    )
    return sql, p.values


def _where(query: SubmissionQuery) -> tuple[str, _Params]:
    """The WHERE clause of `query` (`TRUE` when it filters nothing), and its parameters."""
    p = _Params()
    clauses: list[str] = []
    if query.states:
        clauses.append(f"state = ANY({p([state.value for state in query.states])}::text[])")
    for column, value in (
        ("tenant", query.tenant),
        ("operation", query.operation),
        ("last_error_class", query.error_class),
    ):
        if value is not None:
            clauses.append(f"{column} = {p(value)}")
    if query.accepted_after is not None:
        clauses.append(f"created_at >= {p(query.accepted_after)}")
    if query.accepted_before is not None:
        clauses.append(f"created_at < {p(query.accepted_before)}")
    if query.text:
        clauses.append(f"strpos(business_key, {p(query.text)}) > 0")
    return " AND ".join(clauses) or "TRUE", p


async def _lock_due_heads(
    connection: Any, *, now: float, limit: int, served_last: str | None
) -> tuple[list[int], str | None]:
    """Lock up to `limit` due heads, tenants taking turns from the one after `served_last`;
    returns their `seq`s and the tenant served last.

    Locks only rows it takes (so racing claims together take every due row): while the budget
    covers a turn of every tenant still holding due heads, each is asked for its share at once;
    the last, partial turn asks one row each, in turn order. A tenant that gives fewer than
    asked has no more (or the rest are another claim's)."""
    tenants = sorted(str(row[0]) for row in await connection.fetch(_WAITING_TENANTS))
    active = sorted(
        tenants, key=lambda name: (served_last is not None and name <= served_last, name)
    )
    taken: dict[str, list[int]] = {tenant: [] for tenant in active}

    async def ask(asked: list[str], each: int) -> None:
        after = [taken[tenant][-1] if taken[tenant] else 0 for tenant in asked]
        got: dict[str, list[int]] = {tenant: [] for tenant in asked}
        for tenant, seq in await connection.fetch(_LOCK_DUE_HEADS, asked, after, now, each):
            got[tenant].append(int(seq))
        for tenant in asked:
            taken[tenant] += got[tenant]
            if len(got[tenant]) < each:
                active.remove(tenant)

    def budget() -> int:
        return limit - sum(len(seqs) for seqs in taken.values())

    while active and budget() > 0:
        if len(active) <= budget():
            await ask(list(active), budget() // len(active))
            continue
        turn = list(active)
        while turn and budget() > 0:
            asked, turn = turn[: budget()], turn[budget() :]
            await ask(asked, 1)
    order = {tenant: index for index, tenant in enumerate(taken)}
    served = [tenant for tenant, seqs in taken.items() if seqs]
    # The last row taken is the last turn's: its tenant took the most, latest in turn order.
    last = max(served, key=lambda t: (len(taken[t]), order[t]), default=served_last)
    return sorted(seq for seqs in taken.values() for seq in seqs), last


def _describe(exc: BaseException) -> str:
    """What went wrong, for a message: the error's text, or its kind when it has none (a
    timeout, a lost connection)."""
    return str(exc) or type(exc).__name__


def _affected(status: str) -> int:
    """How many rows a command's status (`UPDATE 3`, `DELETE 0`) says it touched."""
    return int(status.rsplit(" ", 1)[-1])


async def _close_quietly(connection: Any) -> None:
    """Close a connection of our own; a broken one is dropped."""
    try:
        await connection.close(timeout=RECONNECT_MAX_S)
    except _DATABASE_ERRORS:
        connection.terminate()
    except asyncio.CancelledError:
        connection.terminate()
        raise


async def _first_contact(pool: Any, wait_s: float) -> BaseException | None:
    """The error of a first round trip through `pool`, or None: a pool without a floor of
    connections connects nothing when it is made."""
    try:
        async with pool.acquire(timeout=wait_s) as connection:
            await connection.fetchval("SELECT 1")
    except _DATABASE_ERRORS as exc:
        return exc
    return None
