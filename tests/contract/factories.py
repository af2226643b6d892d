"""How the contract suite opens stores: one factory per implementation, in `FACTORIES`.

A `StoreFactory` stands for one database of one implementation. `open` may be called many
times: the first store finds the database empty; later ones open the same database again, as
a restarted gateway (after `close`) or a second gateway process sharing it (while the first is
open) would. `drop` removes the database after the test, once every store on it is closed.

Adding an implementation is one entry, e.g. for PostgreSQL a factory that makes sure the
local server is up (the test machine provides one), creates a scratch database on it, returns
`await open_store("postgresql://…/<scratch>")` from `open`, and drops the scratch database in
`drop`. Every implementation runs every contract test; none is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import asyncpg

from gateway.outbox.store import Store, open_store
from tests.support.postgres import create_database, drop_database, server_url

#: The environment stores open with unless a test gives another: no encryption keys.
PLAIN: Mapping[str, str] = {}


class StoreFactory(Protocol):
    async def open(self, environ: Mapping[str, str] = PLAIN) -> Store:
        """A new store on this factory's database (empty until something is written), with the
        encryption keys `environ` names (`GATEWAY_ENCRYPTION_KEY`, …)."""
        ...

    async def raw(self) -> bytes:
        """Every byte the database keeps of its submissions, as an attacker with the disk (or
        a dump) would see them."""
        ...

    async def raw_execute(self, sql: str, *params: str) -> None:
        """Run `sql` on the database directly, past the store (`{0}`, `{1}`: the parameters)."""
        ...

    async def drop(self) -> None:
        """Remove the database; every store opened on it is closed by then."""
        ...


class SqliteFactory:
    """A real SQLite file in the test's scratch directory, opened as the gateway opens it."""

    def __init__(self, scratch: Path) -> None:
        self._path = scratch / "outbox.db"
        self._url = f"sqlite:///{self._path}"

    async def open(self, environ: Mapping[str, str] = PLAIN) -> Store:
        return await open_store(self._url, environ=environ)

    async def raw(self) -> bytes:
        """The database file and its write-ahead log."""
        files = [self._path, self._path.with_name(self._path.name + "-wal")]
        return b"".join(path.read_bytes() for path in files if path.exists())

    async def raw_execute(self, sql: str, *params: str) -> None:
        marks = ["?"] * len(params)
        with contextlib.closing(sqlite3.connect(self._path)) as connection, connection:
            connection.execute(sql.format(*marks), params)

    async def drop(self) -> None:
        """Nothing to do: pytest removes the scratch directory."""


class PostgresFactory:
    """A scratch database on the local PostgreSQL server (created by the first `open`), opened
    as the gateway opens it; never skipped: without a server the test fails."""

    def __init__(self, scratch: Path) -> None:
        self._url: str | None = None

    async def open(self, environ: Mapping[str, str] = PLAIN) -> Store:
        if self._url is None:
            # Makes sure the server is up (starting it if need be): blocking, so not on the loop.
            await asyncio.to_thread(server_url)
            self._url = await create_database("contract")
        return await open_store(self._url, environ=environ)

    async def raw(self) -> bytes:
        """`COPY submission TO STDOUT`, as a dump holds the table."""
        assert self._url is not None
        out = io.BytesIO()
        connection = await asyncpg.connect(self._url)
        try:
            await connection.copy_from_table("submission", output=out)
        finally:
            await connection.close()
        return out.getvalue()

    async def raw_execute(self, sql: str, *params: str) -> None:
        assert self._url is not None
        connection = await asyncpg.connect(self._url)
        try:
            await connection.execute(
                sql.format(*(f"${n}" for n in range(1, len(params) + 1))), *params
            )
        finally:
            await connection.close()

    async def drop(self) -> None:
        if self._url is not None:
            await drop_database(self._url)
            self._url = None


#: Every store implementation, by name (the test id), as a factory of a scratch directory
#: (not created yet; one per database, removed after the test).
FACTORIES: dict[str, Callable[[Path], StoreFactory]] = {
    "postgres": PostgresFactory,
    "sqlite": SqliteFactory,
}


class Database:
    """One test's database: opens stores on it and closes whichever are still open at the end."""

    def __init__(self, factory: StoreFactory) -> None:
        self._factory = factory
        self._open: list[Store] = []

    async def open(self, environ: Mapping[str, str] = PLAIN) -> Store:
        store = await self._factory.open(environ)
        self._open.append(store)
        return store

    async def raw(self) -> bytes:
        """Every byte the database keeps of its submissions (see `StoreFactory.raw`)."""
        return await self._factory.raw()

    async def raw_execute(self, sql: str, *params: str) -> None:
        """Run `sql` past the store (see `StoreFactory.raw_execute`)."""
        await self._factory.raw_execute(sql, *params)

    async def close(self, store: Store) -> None:
        self._open.remove(store)
        await store.close()

    async def reopen(self, store: Store, environ: Mapping[str, str] = PLAIN) -> Store:
        """Close `store` and open the database again, as a gateway restart does."""
        await self.close(store)
        return await self.open(environ)

    async def drop(self) -> None:
        while self._open:
            await self._open.pop().close()
        await self._factory.drop()
