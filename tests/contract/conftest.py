"""Fixtures of the store contract suite: every test here runs once per implementation in
`tests.contract.factories.FACTORIES`, on a real database of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.outbox.store import Store
from tests.contract.factories import FACTORIES, Database, StoreFactory


@pytest.fixture(params=sorted(FACTORIES))
def implementation(request: pytest.FixtureRequest) -> Callable[[Path], StoreFactory]:
    """The factory of the implementation under test."""
    factory: Callable[[Path], StoreFactory] = FACTORIES[request.param]
    return factory


@contextlib.asynccontextmanager
async def _database(
    implementation: Callable[[Path], StoreFactory], scratch: Path
) -> AsyncIterator[Database]:
    database = Database(implementation(scratch))
    try:
        yield database
    finally:
        await database.drop()


@pytest.fixture
async def database(
    implementation: Callable[[Path], StoreFactory], tmp_path: Path
) -> AsyncIterator[Database]:
    """The test's database."""
    async with _database(implementation, tmp_path / "main") as opened:
        yield opened


@pytest.fixture
async def store(database: Database) -> Store:
    """A store on the test's database."""
    return await database.open()


@pytest.fixture
async def peer(database: Database, store: Store) -> Store:
    """A second store on the same database, as a second gateway process would open it."""
    return await database.open()


@pytest.fixture
async def empty_store(
    implementation: Callable[[Path], StoreFactory], tmp_path: Path
) -> AsyncIterator[Store]:
    """A store of the same implementation on a second database, empty (to import into)."""
    async with _database(implementation, tmp_path / "second") as database:
        yield await database.open()
