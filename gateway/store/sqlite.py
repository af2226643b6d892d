"""The embedded SQLite store (WAL, synchronous=FULL) on aiosqlite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from gateway.errors import StoreError
from gateway.store import StoredToken

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
)


class SqliteStore:
    """One aiosqlite connection; writes use `BEGIN IMMEDIATE` so lock waits happen up front."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout_ms: int = 5000) -> SqliteStore:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from exc
        store = cls(connection, path)
        try:
            await connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = FULL")
            await connection.execute("PRAGMA foreign_keys = ON")
            await store._migrate()
        except sqlite3.Error as exc:
            await connection.close()
            raise StoreError(f"cannot prepare the store at {path}: {exc}") from exc
        return store

    async def _migrate(self) -> None:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            async with self._db.execute("SELECT version FROM schema_version") as cursor:
                row = await cursor.fetchone()
            version = row[0] if row else 0
            if row is None:
                await self._db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the store at {self.path} has schema version {version}, newer than this "
                    f"gateway knows ({len(MIGRATIONS)}); run a newer gateway"
                )
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await self._db.execute(statement)
                await self._db.execute("UPDATE schema_version SET version = ?", (target,))
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    async def load_token(self, key: str) -> StoredToken | None:
        try:
            async with self._db.execute(
                "SELECT value, obtained_at, expires_in FROM upstream_token WHERE key = ?", (key,)
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the upstream token: {exc}") from exc
        return StoredToken(row[0], row[1], row[2]) if row else None

    async def save_token(self, key: str, token: StoredToken) -> None:
        try:
            await self._db.execute(
                "INSERT INTO upstream_token (key, value, obtained_at, expires_in) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "obtained_at = excluded.obtained_at, expires_in = excluded.expires_in",
                (key, token.value, token.obtained_at, token.expires_in),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save the upstream token: {exc}") from exc

    async def check_writable(self) -> None:
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            await self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"the store at {self.path} is not writable: {exc}") from exc

    async def close(self) -> None:
        await self._db.close()
