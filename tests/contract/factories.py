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
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gateway.outbox.store import Store, open_store
from tests.support.postgres import create_database, drop_database, server_url


class StoreFactory(Protocol):
    async def open(self) -> Store:
        """A new store on this factory's database (empty until something is written)."""
        ...

    async def drop(self) -> None:
        """Remove the database; every store opened on it is closed by then."""
        ...


class SqliteFactory:
    """A real SQLite file in the test's scratch directory, opened as the gateway opens it."""

    def __init__(self, scratch: Path) -> None:
        self._url = f"sqlite:///{scratch / 'outbox.db'}"

    async def open(self) -> Store:
        return await open_store(self._url)

    async def drop(self) -> None:
        """Nothing to do: pytest removes the scratch directory."""


class PostgresFactory:
    """A scratch database on the local PostgreSQL server (created by the first `open`), opened
    as the gateway opens it; never skipped: without a server the test fails."""

    def __init__(self, scratch: Path) -> None:
        self._url: str | None = None

    async def open(self) -> Store:
        if self._url is None:
            # Makes sure the server is up (starting it if need be): blocking, so not on the loop.
            await asyncio.to_thread(server_url)
            self._url = await create_database("contract")
        return await open_store(self._url)

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

    async def open(self) -> Store:
        store = await self._factory.open()
        self._open.append(store)
        return store

    async def close(self, store: Store) -> None:
        self._open.remove(store)
        await store.close()

    async def reopen(self, store: Store) -> Store:
        """Close `store` and open the database again, as a gateway restart does."""
        await self.close(store)
        return await self.open()

    async def drop(self) -> None:
        while self._open:
            await self._open.pop().close()
        await self._factory.drop()
