"""What only the PostgreSQL store does: opening (unreachable servers, racing replicas, schema
versions), refusing calls once closed, and keeping its LISTEN connection alive. What every
store must do is in the contract suite (`tests/contract/`). Real server, scratch databases."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.outbox.store import Store, StoredToken, masked_url, open_store
from gateway.outbox.store.postgres import LISTENER_NAME
from gateway.outbox.store.postgres_schema import MIGRATIONS
from tests.support.postgres import scratch_database, server_url
from tests.support.submissions import admit, new_submission

BOUND_S = 15.0


@pytest.fixture(scope="module")
def server() -> str:
    """The local server, up (checked outside any event loop: the check blocks)."""
    return server_url()


@pytest.fixture
async def url(server: str) -> AsyncIterator[str]:
    """An empty scratch database."""
    async with scratch_database("unit") as created:
        yield created


@contextlib.asynccontextmanager
async def opened(url: str, settings: StoreConfig | None = None) -> AsyncIterator[Store]:
    store = await open_store(url, settings=settings)
    try:
        yield store
    finally:
        await store.close()


async def sql(url: str, statement: str) -> object:
    """One statement on a connection of the test's own; its first value."""
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_server_names_the_url_but_not_the_password() -> None:
    """Nothing listening: `StoreError` naming the URL with its password masked."""
    url = f"postgresql://gw:s3cret-pw@127.0.0.1:{closed_port()}/gateway"
    with pytest.raises(StoreError) as raised:
        await open_store(url, settings=StoreConfig(connect_timeout=2))
    message = str(raised.value)
    assert masked_url(url) in message
    assert "s3cret-pw" not in message
    assert "check that PostgreSQL is up" in message


async def test_replicas_starting_at_once_migrate_once(url: str) -> None:
    """Four stores opening an empty database together all open; the schema is the latest,
    recorded once."""
    stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
    try:
        assert (1, len(MIGRATIONS)) == (
            await sql(url, "SELECT count(*) FROM schema_version"),
            await sql(url, "SELECT version FROM schema_version"),
        )
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_newer_schema_is_refused(url: str) -> None:
    """A database a newer gateway migrated: `StoreError` saying to run a newer gateway."""
    async with opened(url):
        pass
    await sql(url, "UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match=r"schema version 99, newer than this gateway knows"):
        await open_store(url)


async def test_manual_migration_refuses_an_older_schema(url: str) -> None:
    """`migrate=False` on an empty database: `StoreError` naming `invoice-gateway migrate`,
    and nothing created."""
    with pytest.raises(StoreError, match="invoice-gateway migrate"):
        await open_store(url, migrate=False)
    assert await sql(url, "SELECT to_regclass('submission')") is None


async def test_manual_migration_opens_a_current_schema(url: str) -> None:
    """Once migrated, `migrate=False` opens the store."""
    async with opened(url):
        pass
    store = await open_store(url, migrate=False)
    await store.close()


async def test_without_prepared_statements_the_store_works(url: str) -> None:
    """`prepared_statements: false` (PgBouncer in transaction mode) changes nothing visible."""
    async with opened(url, StoreConfig(prepared_statements=False)) as store:
        row = (await admit(store, new_submission("A-1"))).submission
        assert row == await store.get(row.id)


async def test_a_read_only_database_is_not_writable(url: str) -> None:
    """`check_writable` fails when the database refuses writes (as a standby does), while the
    store still opens and reads."""
    async with opened(url):
        pass  # migrated
    name = url.rsplit("/", 1)[-1]
    await sql(url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    async with opened(url) as store:
        assert await store.get("sub_1") is None
        with pytest.raises(StoreError, match="read-only"):
            await store.check_writable()


async def test_every_call_after_close_raises_store_error(url: str) -> None:
    """Once closed, reads, writes and locks raise `StoreError`; announcing stays quiet."""
    store = await open_store(url)
    await store.close()
    calls = [
        store.get("sub_1"),
        admit(store, new_submission("A-1")),
        store.save_token("scheme:key", StoredToken("tok", 0.0, 60.0)),
        store.check_writable(),
        store.database_time(),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="closed"):
            await call
    with pytest.raises(StoreError, match="closed"):
        async with store.exclusive("token:app"):
            pass
    await store.announce()


async def listener_pids(url: str) -> list[int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()",
            LISTENER_NAME,
        )
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows]


async def heard_after_announcing(store: Store, heard: asyncio.Event) -> None:
    """Announce until `heard` (the listener may be connecting still), within `BOUND_S`."""

    async def until_heard() -> None:
        while not heard.is_set():
            await store.announce()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.wait(), 0.2)

    await asyncio.wait_for(until_heard(), BOUND_S)


async def test_the_listener_comes_back_after_its_connection_is_killed(url: str) -> None:
    """The LISTEN connection terminated by the server: a new one listens, and announcements
    arrive again. Reconnected, it calls back once without anyone announcing: what was announced
    while nothing listened is lost, so the dispatcher should look now, not at its next poll."""
    async with opened(url) as store:
        heard = asyncio.Event()
        store.on_announcement(heard.set)
        await heard_after_announcing(store, heard)
        [before] = await listener_pids(url)
        await asyncio.sleep(0.5)  # an announcement still on its way is heard before the kill
        heard.clear()
        assert await sql(url, f"SELECT pg_terminate_backend({before})")
        await asyncio.wait_for(heard.wait(), BOUND_S)
        assert before not in await listener_pids(url)
        assert 1 == len(await listener_pids(url))
        heard.clear()
        await heard_after_announcing(store, heard)


async def test_close_ends_the_listener(url: str) -> None:
    """After close, no LISTEN connection of the store is left on the server (its backend
    exits a moment after the connection closes: watched for, within `BOUND_S`)."""
    store = await open_store(url)
    heard = asyncio.Event()
    store.on_announcement(heard.set)
    await heard_after_announcing(store, heard)
    await store.close()

    for _ in range(int(BOUND_S / 0.05)):
        if not await listener_pids(url):
            break
        await asyncio.sleep(0.05)
    assert [] == await listener_pids(url)
