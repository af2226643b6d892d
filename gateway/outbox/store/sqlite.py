"""The embedded SQLite store: WAL, `synchronous=FULL`, `BEGIN IMMEDIATE`, group commit.

Writes go through one connection in a thread of its own and the `GroupCommitter`: each write is
a plain function of that connection, and a whole batch of them crosses to the thread at once.
Reads use a second, read-only connection (WAL lets it read while a write is in progress).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError
from gateway.outbox.store import rows as row_mapping
from gateway.outbox.store.callback_queue import SQLITE_MIGRATION, SqliteCallbackQueue
from gateway.outbox.store.group_commit import CommitStats, GroupCommitter, WriterThread
from gateway.outbox.store.protocol import Admission, OutboxCounts, Resealed
from gateway.outbox.store.sealing import Sealer
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

#: Each entry migrates the schema from version i to i + 1. Never edit one that has shipped.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE upstream_token (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        obtained_at REAL NOT NULL,
        expires_in REAL NOT NULL
    );
    """,
    """
    CREATE TABLE submission (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        operation TEXT NOT NULL,
        idempotency_key TEXT,
        fingerprint TEXT NOT NULL,
        business_key TEXT,
        ordering_key TEXT,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        query TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        request_id TEXT NOT NULL,
        state TEXT NOT NULL,
        acknowledged INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        maybe_sent INTEGER NOT NULL DEFAULT 0,
        last_error_class TEXT,
        last_error TEXT,
        response TEXT,
        result TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        next_attempt_at REAL,
        delivered_at REAL,
        lease_owner TEXT,
        lease_expires_at REAL,
        fence INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX submission_idempotency
        ON submission (tenant, operation, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX submission_due ON submission (state, next_attempt_at);
    CREATE INDEX submission_ordering
        ON submission (tenant, ordering_key, seq) WHERE ordering_key IS NOT NULL;
    CREATE INDEX submission_updated ON submission (state, updated_at);
    """,
    """
    CREATE INDEX submission_state_tenant ON submission (state, tenant);
    CREATE INDEX submission_tenant_due ON submission (tenant, state, seq);
    """,
    """
    ALTER TABLE submission ADD COLUMN age_from REAL;
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        submission_ids TEXT NOT NULL,
        reason TEXT,
        details TEXT
    );
    """,
    """
    ALTER TABLE submission ADD COLUMN issuance TEXT;
    ALTER TABLE submission ADD COLUMN issuance_outcome TEXT;
    ALTER TABLE submission ADD COLUMN issuance_due_at REAL;
    CREATE INDEX submission_issuance_due
        ON submission (operation, issuance_due_at) WHERE issuance_due_at IS NOT NULL;
    CREATE INDEX submission_issuing
        ON submission (operation) WHERE issuance_outcome = 'issuing';
    """,
    # The age of the oldest waiting submission (`counts`, sampled every few seconds) in an
    # index probe, not a pass over every queued row: 0.47 s → under 1 ms with 1,000,000 queued.
    """
    CREATE INDEX submission_waiting_age
        ON submission (state, created_at) WHERE next_attempt_at IS NOT NULL;
    """,
    # Callback events, written by triggers with the change they report (callback_queue.py).
    SQLITE_MIGRATION,
)

_UNRESOLVED = ", ".join(f"'{s.value}'" for s in UNRESOLVED_STATES)
#: Rows nothing will change any more: what retention purges.
_FINISHED = "(" + ", ".join(f"'{s.value}'" for s in FINAL_STATES) + ")"
#: Rows the dispatcher will still send, by itself.
_WAITING = "('queued', 'unknown')"
#: A stored time this far ahead of the clock means the clock stepped back (restarts alone, on
#: one host, never put it more than milliseconds ahead).
CLOCK_STEP_TOLERANCE_S = 5.0

_COLUMNS = (
    "id, tenant, operation, idempotency_key, fingerprint, business_key, ordering_key, method, "
    "path, query, headers, body, request_id, state, acknowledged, attempts, maybe_sent, "
    "last_error_class, last_error, response, result, created_at, updated_at, next_attempt_at, "
    "lease_owner, lease_expires_at, fence, delivered_at, age_from, issuance, issuance_outcome, "
    "issuance_due_at"
)
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(",")))


def _translate(exc: sqlite3.Error, what: str) -> StoreError:
    return StoreError(f"{what}: {exc}")


class SqliteStore:
    """The embedded store; one gateway process per database file."""

    single_node = True

    def __init__(
        self,
        writer: WriterThread,
        reader: aiosqlite.Connection,
        path: Path,
        committer: GroupCommitter,
        sealer: Sealer | None = None,
    ) -> None:
        self._sealer = sealer or Sealer()
        self._db = writer
        self._reader = reader
        self.path = path
        self._committer = committer
        #: The tenant served last by `claim_due`: the next claim's turns start after it.
        self._turn: str | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    # -- rows -----------------------------------------------------------------------------

    def _row(self, s: Submission) -> tuple[Any, ...]:
        return row_mapping.submission_values(s, self._sealer)

    def _submission(self, row: Sequence[Any]) -> Submission:
        return row_mapping.submission(row, self._sealer)

    async def _fetch_one(
        self, db: aiosqlite.Connection, sql: str, params: Sequence[Any]
    ) -> Submission | None:
        async with db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return self._submission(row) if row else None

    def _fetch_written(self, db: sqlite3.Connection, submission_id: str) -> Submission | None:
        """A row as a write left it (in the writer's thread, inside its transaction)."""
        row = db.execute(f"SELECT {_COLUMNS} FROM submission WHERE id = ?", (submission_id,))
        found = row.fetchone()
        return self._submission(found) if found else None

    @property
    def callbacks(self) -> SqliteCallbackQueue:
        """The callback event queue (`gateway.outbox.callbacks`)."""
        return SqliteCallbackQueue(self._committer, self._reader)

    @property
    def commit_stats(self) -> CommitStats:
        return self._committer.stats

    def observe_commits(self, callback: Callable[[int, float], None]) -> None:
        self._committer.on_commit = callback

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        synchronous: str = "FULL",
        group_commit: bool = True,
        commit_window: float = 0.001,
        batch_cap: int = 256,
        migrate: bool = True,
        sealer: Sealer | None = None,
    ) -> SqliteStore:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = await WriterThread.connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from exc
        reader: aiosqlite.Connection | None = None

        def prepare(db: sqlite3.Connection) -> None:
            db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {synchronous}")
            db.execute("PRAGMA foreign_keys = ON")
            _migrate(db, path, apply=migrate)

        try:
            await writer.run(prepare)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await reader.execute("PRAGMA query_only = 1")
        except (sqlite3.Error, StoreError) as exc:
            await writer.close()
            if reader is not None:
                await reader.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot prepare the store at {path}: {exc}") from exc
        committer = GroupCommitter(
            writer, enabled=group_commit, window=commit_window, batch_cap=batch_cap
        )
        committer.start()
        return cls(writer, reader, path, committer, sealer)

    async def close(self) -> None:
        await self._committer.close()
        await self._reader.close()
        await self._db.close()

    async def check_writable(self) -> None:
        def probe(db: sqlite3.Connection) -> None:
            # A real (harmless) write through the group commit: proves the disk takes writes.
            db.execute(
                "INSERT INTO upstream_token (key, value, obtained_at, expires_in) "
                "VALUES ('readyz', '', 0, 1) ON CONFLICT (key) DO UPDATE SET obtained_at = 0"
            )

        await self._committer.submit(probe)

    async def database_time(self) -> float | None:
        return None  # one process: its host's clock serves

    async def announce(self) -> None:
        """Nobody else to tell: the one process wakes its own dispatcher."""

    def on_announcement(self, callback: Callable[[], None]) -> None:
        """Never called back: no other process shares the file."""

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        # One process per file: a lock of this process is everyone's.
        return self._locks.setdefault(name, asyncio.Lock())

    # -- encryption at rest ---------------------------------------------------------------

    async def key_usage(self) -> dict[str, int]:
        try:
            async with self._reader.execute(_KEY_USAGE) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot read which keys seal the store") from exc
        usage: dict[str, int] = {}
        for kid, count in rows:
            usage[str(kid).lower()] = usage.get(str(kid).lower(), 0) + int(count)
        return usage

    async def reseal(self, *, after: str | None, limit: int) -> Resealed:
        start = row_mapping.parse_cursor(after) or 0

        def write(db: sqlite3.Connection) -> Resealed:
            found = db.execute(
                "SELECT seq, id, body, response, result, issuance FROM submission "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, limit),
            ).fetchall()
            done = changed = 0
            for row in found:
                new = row_mapping.resealed(self._sealer, row[1:])
                if new is None:
                    continue
                cursor = db.execute(
                    "UPDATE submission SET body = ?, response = ?, result = ?, issuance = ? "
                    "WHERE id = ? AND body = ? AND response IS ? AND result IS ? "
                    "AND issuance IS ?",
                    (*new, *row[1:]),
                )
                if cursor.rowcount:
                    done += 1
                else:
                    changed += 1
            more = len(found) == limit
            return Resealed(
                checked=len(found),
                resealed=done,
                changed=changed,
                cursor=f"s{found[-1][0]}" if more and found else None,
            )

        return await self._committer.submit(write)

    # -- tokens ---------------------------------------------------------------------------

    async def load_token(self, key: str) -> StoredToken | None:
        try:
            async with self._reader.execute(
                "SELECT value, obtained_at, expires_in FROM upstream_token WHERE key = ?", (key,)
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot read the upstream token") from exc
        return StoredToken(row[0], row[1], row[2]) if row else None

    async def save_token(self, key: str, token: StoredToken) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO upstream_token (key, value, obtained_at, expires_in) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "obtained_at = excluded.obtained_at, expires_in = excluded.expires_in",
                (key, token.value, token.obtained_at, token.expires_in),
            )

        await self._committer.submit(write)

    async def token_rows(self) -> Sequence[tuple[str, StoredToken]]:
        try:
            async with self._reader.execute(
                "SELECT key, value, obtained_at, expires_in FROM upstream_token "
                "WHERE key != 'readyz' ORDER BY key"
            ) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot read the upstream tokens") from exc
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
        def write(db: sqlite3.Connection) -> Admission:
            if new.idempotency_key is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM submission "
                    "WHERE tenant = ? AND operation = ? AND idempotency_key = ?",
                    (new.tenant, new.operation, new.idempotency_key),
                ).fetchone()
                if row is not None:
                    return Admission(self._submission(row), created=False)
            blocked = False
            if new.ordering_key is not None:
                blocked = (
                    db.execute(
                        "SELECT 1 FROM submission WHERE tenant = ? AND ordering_key = ? "
                        f"AND state IN ({_UNRESOLVED}) LIMIT 1",
                        (new.tenant, new.ordering_key),
                    ).fetchone()
                    is not None
                )
            submission = row_mapping.admitted(
                new,
                queue=queue,
                blocked=blocked,
                owner=owner,
                lease_seconds=lease_seconds,
                now=now,
            )
            db.execute(
                f"INSERT INTO submission ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                self._row(submission),
            )
            return Admission(submission, created=True)

        return await self._committer.submit(write)

    async def transition(
        self,
        submission_id: str,
        fence: int,
        change: Transition,
        *,
        now: float,
        audit: AuditEntry | None = None,
    ) -> Submission | None:
        def write(db: sqlite3.Connection) -> Submission | None:
            sets = [
                "state = :state",
                "attempts = :attempts"
                if change.reset_attempts
                else "attempts = attempts + :attempts",
                "updated_at = :now",
                "next_attempt_at = :next",
            ]
            params: dict[str, Any] = {
                "id": submission_id,
                "fence": fence,
                "state": change.state.value,
                "attempts": change.attempts_delta,
                "now": now,
                "next": change.next_attempt_at,
            }
            if change.state is not SubmissionState.DELIVERING:
                sets += ["lease_owner = NULL", "lease_expires_at = NULL"]
            if change.maybe_sent is not None:
                sets.append("maybe_sent = :maybe_sent")
                params["maybe_sent"] = int(change.maybe_sent)
            if change.acknowledged is not None:
                sets.append("acknowledged = :ack")
                params["ack"] = int(change.acknowledged)
            if change.clear_error:
                sets += ["last_error_class = NULL", "last_error = NULL"]
            if change.error_class is not None:
                sets += ["last_error_class = :error_class", "last_error = :error"]
                params["error_class"] = change.error_class
                params["error"] = change.error
            if change.response is not None:
                sets.append("response = :response")
                params["response"] = row_mapping.seal_json(
                    self._sealer, submission_id, "response", change.response.to_json()
                )
            if change.result is not None:
                sets.append("result = :result")
                params["result"] = row_mapping.seal_json(
                    self._sealer, submission_id, "result", change.result
                )
            if change.state is SubmissionState.DELIVERED:
                # Each delivery starts an issuance of its own, to be followed from now on.
                sets += [
                    "delivered_at = :now",
                    "issuance = NULL",
                    "issuance_outcome = NULL",
                    "issuance_due_at = :now",
                ]
            if change.restart_age:
                sets.append("age_from = :now")
            if change.body is not None:
                sets.append("body = :body")
                params["body"] = row_mapping.seal_body(self._sealer, submission_id, change.body)
            if audit is not None:
                sets.append("fence = fence + 1")  # whoever held it before cannot write now
            cursor = db.execute(
                f"UPDATE submission SET {', '.join(sets)} WHERE id = :id AND fence = :fence",
                params,
            )
            if cursor.rowcount == 0:
                return None
            if audit is not None:
                _insert_audit(db, audit, now)
            return self._fetch_written(db, submission_id)

        return await self._committer.submit(write)

    async def claim_due(
        self, *, now: float, limit: int, owner: str, lease_seconds: float
    ) -> Sequence[Submission]:
        def write(db: sqlite3.Connection) -> list[Submission]:
            seqs, self._turn = _due_heads(db, now=now, limit=limit, served_last=self._turn)
            if not seqs:
                return []
            marks = ", ".join("?" * len(seqs))
            db.execute(
                f"UPDATE submission SET state = 'delivering', lease_owner = ?, "
                f"lease_expires_at = ?, fence = fence + 1, updated_at = ? WHERE seq IN ({marks})",
                (owner, now + lease_seconds, now, *seqs),
            )
            found = db.execute(
                f"SELECT {_COLUMNS} FROM submission WHERE seq IN ({marks}) ORDER BY seq", seqs
            ).fetchall()
            return [self._submission(row) for row in found]

        return await self._committer.submit(write)

    async def reclaim(self, *, now: float, everything: bool = False) -> int:
        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE submission SET state = 'unknown', maybe_sent = 1, acknowledged = 1, "
                "lease_owner = NULL, lease_expires_at = NULL, fence = fence + 1, "
                "next_attempt_at = :now, updated_at = :now, "
                "last_error_class = 'lease_expired', "
                "last_error = 'the gateway stopped while delivering it; it may have been sent' "
                "WHERE state = 'delivering' AND (:everything OR lease_expires_at <= :now)",
                {"now": now, "everything": int(everything)},
            )
            return int(cursor.rowcount)

        return await self._committer.submit(write)

    async def rebase(self, *, now: float) -> float:
        def write(db: sqlite3.Connection) -> float:
            row = db.execute(
                f"SELECT MAX(updated_at) FROM submission WHERE state IN {_WAITING}"
            ).fetchone()
            latest = row[0] if row is not None else None
            if latest is None or latest <= now + CLOCK_STEP_TOLERANCE_S:
                return 0.0
            shift = float(latest) - now
            db.execute(
                "UPDATE submission SET next_attempt_at = next_attempt_at - :shift, "
                "updated_at = updated_at - :shift, age_from = age_from - :shift "
                f"WHERE state IN {_WAITING}",
                {"shift": shift},
            )
            return shift

        return await self._committer.submit(write)

    async def get(self, submission_id: str) -> Submission | None:
        try:
            return await self._fetch_one(
                self._reader, f"SELECT {_COLUMNS} FROM submission WHERE id = ?", (submission_id,)
            )
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot read the submission") from exc

    async def next_due(self) -> float | None:
        try:
            async with self._reader.execute(
                "SELECT MIN(next_attempt_at) FROM submission WHERE state IN ('queued', 'unknown')"
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot read when the next submission is due") from exc
        return float(row[0]) if row and row[0] is not None else None

    async def counts(self) -> OutboxCounts:
        try:
            async with self._reader.execute(
                "SELECT state, COUNT(*) FROM submission GROUP BY state"
            ) as cursor:
                rows = await cursor.fetchall()
            async with self._reader.execute(
                # Waiting = queued, or unknown and due for reconciliation (parked rows wait for
                # on-call and show up as such, not as a growing queue).
                "SELECT MIN(created_at) FROM submission WHERE state IN ('queued', 'unknown') "
                "AND next_attempt_at IS NOT NULL"
            ) as cursor:
                oldest = await cursor.fetchone()
            async with self._reader.execute(
                "SELECT operation, COUNT(*) FROM submission WHERE issuance_outcome = 'issuing' "
                "GROUP BY operation"
            ) as cursor:
                issuing = {str(op): int(count) for op, count in await cursor.fetchall()}
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot count the outbox") from exc
        by_state = {state: 0 for state in SubmissionState}
        for state, count in rows:
            by_state[SubmissionState(state)] = int(count)
        return OutboxCounts(
            by_state=by_state, oldest_queued_at=oldest[0] if oldest else None, issuing=issuing
        )

    async def purge(self, *, finished_before: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                f"DELETE FROM submission WHERE state IN {_FINISHED} AND updated_at < ?",
                (finished_before,),
            )
            return int(cursor.rowcount)

        return await self._committer.submit(write)

    # -- issuance -----------------------------------------------------------------------------

    async def issuance_due(
        self, *, operations: Sequence[str], now: float, limit: int
    ) -> Sequence[Submission]:
        if not operations:
            return []
        marks = ", ".join("?" * len(operations))
        try:
            async with self._reader.execute(
                f"SELECT {_COLUMNS} FROM submission WHERE operation IN ({marks}) "
                "AND issuance_due_at <= ? AND state = 'delivered' "
                "ORDER BY issuance_due_at, seq LIMIT ?",
                (*operations, now, limit),
            ) as cursor:
                return [self._submission(row) for row in await cursor.fetchall()]
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot read the invoices being issued") from exc

    async def record_issuance(
        self, checks: Sequence[IssuanceCheck], *, now: float
    ) -> Sequence[Submission]:
        def write(db: sqlite3.Connection) -> list[Submission]:
            recorded: list[Submission] = []
            for check in checks:
                issuance = check.issuance
                failed = issuance.outcome.failed
                cursor = db.execute(
                    "UPDATE submission SET issuance = :issuance, issuance_outcome = :outcome, "
                    "issuance_due_at = :due, "
                    "state = CASE WHEN :failed THEN 'issue_failed' ELSE state END, "
                    # An issuance ending (failed, or done: its callback event's time) is a
                    # change of the row.
                    "updated_at = CASE WHEN :failed OR :outcome = 'done' THEN :now "
                    "ELSE updated_at END, "
                    "last_error_class = CASE WHEN :failed THEN :error_class "
                    "ELSE last_error_class END, "
                    "last_error = CASE WHEN :failed THEN :error ELSE last_error END "
                    "WHERE id = :id AND fence = :fence AND state = 'delivered'",
                    {
                        "issuance": row_mapping.seal_json(
                            self._sealer, check.submission_id, "issuance", issuance.to_json()
                        ),
                        "outcome": issuance.outcome.value,
                        "due": check.next_check_at,
                        "failed": int(failed),
                        "now": now,
                        "error_class": f"issuance_{issuance.outcome.value}",
                        "error": row_mapping.issuance_error(issuance),
                        "id": check.submission_id,
                        "fence": check.fence,
                    },
                )
                if cursor.rowcount:
                    row = self._fetch_written(db, check.submission_id)
                    if row is not None:
                        recorded.append(row)
            return recorded

        return await self._committer.submit(write)

    # -- on-call ----------------------------------------------------------------------------

    async def query(self, query: SubmissionQuery, *, limit: int, cursor: str | None) -> Page:
        where, params = _where(query)
        before = row_mapping.parse_cursor(cursor)
        if before is not None:
            where += " AND seq < ?"
            params.append(before)
        try:
            async with self._reader.execute(
                f"SELECT seq, {_COLUMNS} FROM submission WHERE {where} ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            ) as rows:
                found = list(await rows.fetchall())
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot list submissions") from exc
        more = len(found) > limit
        found = found[:limit]
        items = tuple(self._submission(row[1:]) for row in found)
        return Page(items=items, next_cursor=f"s{found[-1][0]}" if more and found else None)

    async def count(self, query: SubmissionQuery) -> int:
        where, params = _where(query)
        try:
            async with self._reader.execute(
                f"SELECT COUNT(*) FROM submission WHERE {where}", params
            ) as rows:
                row = await rows.fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot count submissions") from exc
        return int(row[0]) if row else 0

    async def stream(self, query: SubmissionQuery) -> AsyncIterator[Submission]:
        where, params = _where(query)
        after = 0
        while True:
            try:
                async with self._reader.execute(
                    f"SELECT seq, {_COLUMNS} FROM submission WHERE {where} AND seq > ? "
                    "ORDER BY seq LIMIT 500",
                    (*params, after),
                ) as rows:
                    batch = list(await rows.fetchall())
            except sqlite3.Error as exc:
                raise _translate(exc, "cannot read submissions") from exc
            if not batch:
                return
            for row in batch:
                yield self._submission(row[1:])
            after = int(batch[-1][0])

    async def import_rows(self, rows: Sequence[Submission], *, audit: AuditEntry) -> int:
        def write(db: sqlite3.Connection) -> int:
            if db.execute("SELECT 1 FROM submission LIMIT 1").fetchone() is not None:
                raise StoreError(
                    "the store already holds submissions; import only into an empty store"
                )
            db.executemany(
                f"INSERT INTO submission ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                [self._row(submission) for submission in rows],
            )
            _insert_audit(db, audit, time.time())
            return len(rows)

        return await self._committer.submit(write)

    async def merge_rows(self, rows: Sequence[Submission]) -> int:
        def write(db: sqlite3.Connection) -> int:
            stored = 0
            for submission in rows:
                if db.execute("SELECT 1 FROM submission WHERE id = ?", (submission.id,)).fetchone():
                    continue
                db.execute(
                    f"INSERT INTO submission ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                    self._row(submission),
                )
                stored += 1
            return stored

        return await self._committer.submit(write)

    async def merge_audit(self, entries: Sequence[AuditEntry]) -> int:
        def write(db: sqlite3.Connection) -> int:
            stored = 0
            for entry in entries:
                cursor = db.execute(
                    "INSERT INTO audit_log (seq, at, actor, role, action, submission_ids, "
                    "reason, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (seq) DO NOTHING",
                    (entry.seq, entry.at or time.time(), *row_mapping.audit_values(entry)),
                )
                stored += cursor.rowcount
            return stored

        return await self._committer.submit(write)

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        def write(db: sqlite3.Connection) -> AuditEntry:
            return _insert_audit(db, entry, time.time())

        return await self._committer.submit(write)

    async def audit_log(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        before = row_mapping.parse_cursor(cursor)
        try:
            async with self._reader.execute(
                "SELECT seq, at, actor, role, action, submission_ids, reason, details "
                "FROM audit_log WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (before if before is not None else 2**62, limit + 1),
            ) as rows:
                found = [row_mapping.audit_entry(row) for row in await rows.fetchall()]
        except sqlite3.Error as exc:
            raise _translate(exc, "cannot read the audit log") from exc
        more = len(found) > limit
        found = found[:limit]
        return found, (f"s{found[-1].seq}" if more and found else None)


#: Stored values sealed under each key id (`gateway.outbox.store.sealing` formats).
_KEY_USAGE = """
    SELECT lower(hex(substr(body, 5, 8))), count(*) FROM submission
        WHERE substr(body, 1, 4) = x'00677731' GROUP BY 1
    UNION ALL SELECT substr(response, 11, 16), count(*) FROM submission
        WHERE substr(response, 1, 10) = 'gwsealed1:' GROUP BY 1
    UNION ALL SELECT substr(result, 11, 16), count(*) FROM submission
        WHERE substr(result, 1, 10) = 'gwsealed1:' GROUP BY 1
    UNION ALL SELECT substr(issuance, 11, 16), count(*) FROM submission
        WHERE substr(issuance, 1, 10) = 'gwsealed1:' GROUP BY 1
"""


def _where(query: SubmissionQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if query.states:
        clauses.append(f"state IN ({', '.join('?' * len(query.states))})")
        params += [s.value for s in query.states]
    for column, value in (
        ("tenant", query.tenant),
        ("operation", query.operation),
        ("last_error_class", query.error_class),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.accepted_after is not None:
        clauses.append("created_at >= ?")
        params.append(query.accepted_after)
    if query.accepted_before is not None:
        clauses.append("created_at < ?")
        params.append(query.accepted_before)
    if query.text:
        clauses.append("instr(business_key, ?) > 0")
        params.append(query.text)
    return (" AND ".join(clauses) or "1"), params


def _insert_audit(db: sqlite3.Connection, entry: AuditEntry, now: float) -> AuditEntry:
    at = entry.at or now
    cursor = db.execute(
        "INSERT INTO audit_log (at, actor, role, action, submission_ids, reason, details) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at, *row_mapping.audit_values(entry)),
    )
    return replace(entry, at=at, seq=int(cursor.lastrowid or 0))


def _due_heads(
    db: sqlite3.Connection, *, now: float, limit: int, served_last: str | None
) -> tuple[list[int], str | None]:
    """Up to `limit` due submissions, tenants taking turns, each the head of its ordering key;
    and the tenant served last.

    Turns go on from the tenant after `served_last` (whom the previous claim served last), so
    claims of one row at a time (one free delivery slot each) still go round every tenant.
    Works per tenant on indexed ranges (a few index probes per row considered), so a claim
    costs the same with 100 or 100,000 rows waiting.
    """
    tenants: list[str] = []
    for state in ("queued", "unknown"):
        after = ""
        while True:
            row = db.execute(
                "SELECT MIN(tenant) FROM submission WHERE state = ? AND tenant > ?", (state, after)
            ).fetchone()
            if row is None or row[0] is None:
                break
            after = row[0]
            if after not in tenants:
                tenants.append(after)
    queues: list[tuple[str, list[int]]] = []
    # Tenants after `served_last` first, then from the start again.
    rotation = sorted(
        tenants, key=lambda name: (served_last is not None and name <= served_last, name)
    )
    for tenant in rotation:
        heads: list[int] = []
        for state in ("queued", "unknown"):
            # In acceptance order, skipping rows whose ordering key has an earlier unresolved
            # submission; SQLite stops at `limit` matches.
            found = db.execute(
                "SELECT s.seq FROM submission s INDEXED BY submission_tenant_due "
                "WHERE s.tenant = ? AND s.state = ? AND s.next_attempt_at <= ? "
                "AND (s.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM submission p "
                "WHERE p.tenant = s.tenant AND p.ordering_key = s.ordering_key "
                f"AND p.seq < s.seq AND p.state IN ({_UNRESOLVED}))) ORDER BY s.seq LIMIT ?",
                (tenant, state, now, limit),
            ).fetchall()
            heads += [int(r[0]) for r in found]
        if heads:
            queues.append((tenant, sorted(heads)[:limit]))
    chosen: list[tuple[str, int]] = []
    turn = 0
    while len(chosen) < limit and any(turn < len(q) for _, q in queues):
        chosen += [(t, q[turn]) for t, q in queues if turn < len(q)][: limit - len(chosen)]
        turn += 1
    return [seq for _, seq in chosen], (chosen[-1][0] if chosen else served_last)


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script, one at a time; a trigger's body (`;` inside
    BEGIN … END) stays whole."""
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                yield buffer
            buffer = ""


def _migrate(db: sqlite3.Connection, path: Path, *, apply: bool) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if row is None:
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the store at {path} has schema version {version}, newer than this gateway "
                f"knows ({len(MIGRATIONS)}); run a newer gateway"
            )
        if version < len(MIGRATIONS) and not apply:
            raise StoreError(
                f"the store at {path} has schema version {version}; this gateway needs "
                f"{len(MIGRATIONS)}: run `invoice-gateway migrate` first (store.migrate is manual)"
            )
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(script):
                db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (target,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
