"""The callback event queue in both stores (`gateway.outbox.callbacks.CallbackQueue`).

Events are written by a trigger on `submission`, in the transaction of the change they report:
a state becoming final (for a submission its client was answered `202`), or an invoice's
issuance ending (for every submission, since no client answer could have told it). Claims lease
events with a fence, like submissions; PostgreSQL skips rows another claim has locked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import aiosqlite

from gateway.outbox.callbacks import CallbackEvent, CallbackState
from gateway.outbox.store.group_commit import GroupCommitter

__all__ = ["POSTGRES_MIGRATION", "SQLITE_MIGRATION", "PostgresCallbackQueue", "SqliteCallbackQueue"]

#: States whose arrival is an event, for a submission answered `202`.
_FINAL_STATES: Final = (
    "'delivered', 'failed', 'dead', 'discarded', 'issue_failed', 'issued_manually'"
)
_COLUMNS: Final = (
    "seq, submission_id, tenant, type, state, attempts, created_at, next_attempt_at, fence, "
    "last_error, delivered_at"
)
_SETTLED: Final = "('delivered', 'skipped', 'dead')"
_INSERT: Final = (
    "INSERT INTO callback_event (submission_id, tenant, type, created_at, next_attempt_at) "
    "VALUES (NEW.id, NEW.tenant, {type}, NEW.updated_at, NEW.updated_at)"
)

SQLITE_MIGRATION: Final = f"""
    CREATE TABLE callback_event (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        submission_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_expires_at REAL,
        fence INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered_at REAL
    );
    CREATE INDEX callback_event_due ON callback_event (state, next_attempt_at);
    CREATE INDEX callback_event_submission ON callback_event (submission_id);
    CREATE TRIGGER callback_event_on_final AFTER UPDATE OF state ON submission
    WHEN NEW.acknowledged AND NEW.state IS NOT OLD.state AND NEW.state IN ({_FINAL_STATES})
    BEGIN
        {_INSERT.format(type="'submission.' || NEW.state")};
    END;
    CREATE TRIGGER callback_event_on_issued AFTER UPDATE OF issuance_outcome ON submission
    WHEN NEW.issuance_outcome IS NOT OLD.issuance_outcome AND NEW.issuance_outcome = 'done'
    BEGIN
        {_INSERT.format(type="'submission.issued'")};
    END;
    """

POSTGRES_MIGRATION: Final = f"""
    CREATE TABLE callback_event (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        submission_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        fence BIGINT NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered_at DOUBLE PRECISION
    );
    CREATE INDEX callback_event_due ON callback_event (state, next_attempt_at);
    CREATE INDEX callback_event_submission ON callback_event (submission_id);
    CREATE FUNCTION callback_event_on_submission() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.acknowledged AND NEW.state IS DISTINCT FROM OLD.state
                AND NEW.state IN ({_FINAL_STATES}) THEN
            {_INSERT.format(type="'submission.' || NEW.state")};
        END IF;
        IF NEW.issuance_outcome IS DISTINCT FROM OLD.issuance_outcome
                AND NEW.issuance_outcome = 'done' THEN
            {_INSERT.format(type="'submission.issued'")};
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER callback_event_on_submission AFTER UPDATE ON submission
        FOR EACH ROW EXECUTE FUNCTION callback_event_on_submission();
    """


def _event(row: Sequence[Any]) -> CallbackEvent:
    (seq, submission_id, tenant, kind, state, attempts, created, due, fence, error, done) = row
    return CallbackEvent(
        seq=int(seq),
        submission_id=str(submission_id),
        tenant=str(tenant),
        type=str(kind),
        state=CallbackState(state),
        attempts=int(attempts),
        created_at=float(created),
        next_attempt_at=float(due),
        fence=int(fence),
        last_error=error,
        delivered_at=float(done) if done is not None else None,
    )


def _settled_values(
    state: CallbackState, now: float, next_attempt_at: float | None
) -> tuple[str, float, float | None]:
    """state, next_attempt_at, delivered_at of a settled event."""
    due = next_attempt_at if next_attempt_at is not None else now
    return state.value, due, now if state is CallbackState.DELIVERED else None


def _filters(
    states: Sequence[CallbackState],
    tenant: str | None,
    submission_id: str | None,
    seq: int | None,
    mark: Any,
) -> tuple[str, list[Any]]:
    """A WHERE clause (or nothing) and its values; `mark(i)` is the i-th placeholder."""
    clauses: list[str] = []
    values: list[Any] = []

    def add(clause: str, value: Any) -> None:
        values.append(value)
        clauses.append(clause.format(mark(len(values))))

    if states:
        for_states = []
        for state in states:
            values.append(state.value)
            for_states.append(mark(len(values)))
        clauses.append(f"state IN ({', '.join(for_states)})")
    if tenant is not None:
        add("tenant = {}", tenant)
    if submission_id is not None:
        add("submission_id = {}", submission_id)
    if seq is not None:
        add("seq = {}", seq)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), values


class SqliteCallbackQueue:
    """The queue in the embedded store: writes through its group commit, reads on its reader."""

    def __init__(self, committer: GroupCommitter, reader: aiosqlite.Connection) -> None:
        self._committer = committer
        self._reader = reader

    async def claim_callbacks(
        self, *, now: float, limit: int, owner: str, lease_seconds: float, tenants: Sequence[str]
    ) -> Sequence[CallbackEvent]:
        marks = ", ".join("?" * len(tenants))

        def write(db: sqlite3.Connection) -> list[CallbackEvent]:
            db.execute(
                "UPDATE callback_event SET state = 'skipped', last_error = 'no callback URL' "
                f"WHERE state = 'pending' AND tenant NOT IN ({marks})",
                tuple(tenants),
            )
            if not tenants:
                return []
            seqs = [
                row[0]
                for row in db.execute(
                    "SELECT seq FROM callback_event WHERE tenant IN "
                    f"({marks}) AND ((state = 'pending' AND next_attempt_at <= ?) OR "
                    "(state = 'sending' AND lease_expires_at <= ?)) ORDER BY seq LIMIT ?",
                    (*tenants, now, now, limit),
                )
            ]
            if not seqs:
                return []
            chosen = ", ".join("?" * len(seqs))
            db.execute(
                "UPDATE callback_event SET state = 'sending', lease_owner = ?, "
                f"lease_expires_at = ?, fence = fence + 1 WHERE seq IN ({chosen})",
                (owner, now + lease_seconds, *seqs),
            )
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM callback_event WHERE seq IN ({chosen}) ORDER BY seq",
                seqs,
            )
            return [_event(row) for row in rows]

        return await self._committer.submit(write)

    async def settle_callback(
        self,
        seq: int,
        fence: int,
        *,
        state: CallbackState,
        now: float,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> bool:
        values = _settled_values(state, now, next_attempt_at)

        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE callback_event SET state = ?, next_attempt_at = ?, delivered_at = ?, "
                "attempts = attempts + 1, last_error = ?, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE seq = ? AND fence = ? AND state = 'sending'",
                (*values, error, seq, fence),
            )
            return cursor.rowcount == 1

        return await self._committer.submit(write)

    async def callback_events(
        self,
        *,
        states: Sequence[CallbackState] = (),
        tenant: str | None = None,
        submission_id: str | None = None,
        seq: int | None = None,
        limit: int = 100,
    ) -> Sequence[CallbackEvent]:
        where, values = _filters(states, tenant, submission_id, seq, lambda _i: "?")
        sql = f"SELECT {_COLUMNS} FROM callback_event {where} ORDER BY seq DESC LIMIT ?"
        async with self._reader.execute(sql, (*values, limit)) as cursor:
            return [_event(row) for row in await cursor.fetchall()]

    async def replay_callback(self, seq: int, *, now: float) -> CallbackEvent | None:
        def write(db: sqlite3.Connection) -> CallbackEvent | None:
            db.execute(
                "UPDATE callback_event SET state = 'pending', next_attempt_at = ?, "
                "fence = fence + 1 WHERE seq = ? AND state <> 'sending'",
                (now, seq),
            )
            row = db.execute(
                f"SELECT {_COLUMNS} FROM callback_event WHERE seq = ? AND state = 'pending'",
                (seq,),
            ).fetchone()
            return _event(row) if row else None

        return await self._committer.submit(write)

    async def purge_callbacks(self, *, settled_before: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                f"DELETE FROM callback_event WHERE state IN {_SETTLED} AND created_at < ?",
                (settled_before,),
            )
            return int(cursor.rowcount)

        return await self._committer.submit(write)


Transaction = Callable[[str], AbstractAsyncContextManager[Any]]


class PostgresCallbackQueue:
    """The queue replicas share: `write(what)` gives a connection in a transaction,
    `read(what)` a plain one (the store's own)."""

    def __init__(self, write: Transaction, read: Transaction) -> None:
        self._write = write
        self._read = read

    async def claim_callbacks(
        self, *, now: float, limit: int, owner: str, lease_seconds: float, tenants: Sequence[str]
    ) -> Sequence[CallbackEvent]:
        async with self._write("cannot claim callback events") as connection:
            await connection.execute(
                "UPDATE callback_event SET state = 'skipped', last_error = 'no callback URL' "
                "WHERE state = 'pending' AND NOT (tenant = ANY($1::text[]))",
                list(tenants),
            )
            rows = await connection.fetch(
                "WITH due AS (SELECT seq FROM callback_event WHERE tenant = ANY($1::text[]) "
                "AND ((state = 'pending' AND next_attempt_at <= $2) OR "
                "(state = 'sending' AND lease_expires_at <= $2)) ORDER BY seq LIMIT $3 "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE callback_event SET state = 'sending', lease_owner = $4, "
                "lease_expires_at = $5, fence = fence + 1 FROM due "
                f"WHERE callback_event.seq = due.seq RETURNING {_qualified()}",
                list(tenants),
                now,
                limit,
                owner,
                now + lease_seconds,
            )
        return sorted((_event(row) for row in rows), key=lambda event: event.seq)

    async def settle_callback(
        self,
        seq: int,
        fence: int,
        *,
        state: CallbackState,
        now: float,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> bool:
        values = _settled_values(state, now, next_attempt_at)
        async with self._write("cannot record a callback") as connection:
            found = await connection.fetchval(
                "UPDATE callback_event SET state = $1, next_attempt_at = $2, delivered_at = $3, "
                "attempts = attempts + 1, last_error = $4, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE seq = $5 AND fence = $6 AND state = 'sending' "
                "RETURNING seq",
                *values,
                error,
                seq,
                fence,
            )
        return found is not None

    async def callback_events(
        self,
        *,
        states: Sequence[CallbackState] = (),
        tenant: str | None = None,
        submission_id: str | None = None,
        seq: int | None = None,
        limit: int = 100,
    ) -> Sequence[CallbackEvent]:
        where, values = _filters(states, tenant, submission_id, seq, lambda i: f"${i}")
        sql = (
            f"SELECT {_COLUMNS} FROM callback_event {where} "
            f"ORDER BY seq DESC LIMIT ${len(values) + 1}"
        )
        async with self._read("cannot read callback events") as connection:
            return [_event(row) for row in await connection.fetch(sql, *values, limit)]

    async def replay_callback(self, seq: int, *, now: float) -> CallbackEvent | None:
        async with self._write("cannot replay a callback") as connection:
            row = await connection.fetchrow(
                "UPDATE callback_event SET state = 'pending', next_attempt_at = $1, "
                f"fence = fence + 1 WHERE seq = $2 AND state <> 'sending' RETURNING {_COLUMNS}",
                now,
                seq,
            )
        return _event(row) if row is not None else None

    async def purge_callbacks(self, *, settled_before: float) -> int:
        async with self._write("cannot purge callback events") as connection:
            deleted = await connection.fetchval(
                "WITH gone AS (DELETE FROM callback_event "
                f"WHERE state IN {_SETTLED} AND created_at < $1 RETURNING 1) "
                "SELECT count(*) FROM gone",
                settled_before,
            )
        return int(deleted)


def _qualified() -> str:
    return ", ".join(f"callback_event.{column.strip()}" for column in _COLUMNS.split(","))
