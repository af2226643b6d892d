"""The PostgreSQL side of durable-accept, against the local server: the scratch database (made,
then dropped whatever happens), the durability count, the server's settings and CPU time."""

from __future__ import annotations

import contextlib
import io
import os
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gateway.tools.bench import (
    BenchError,
    ServerFacts,
    count_postgres_submissions,
    cpu_used,
    scratch_database,
    server_cpu,
    server_facts,
)
from tests.support import postgres as test_server


@pytest.fixture(scope="module")
def server() -> str:
    """The local server's maintenance database, up (checked outside any event loop)."""
    return test_server.server_url()


@pytest.fixture
async def database(server: str) -> AsyncIterator[str]:
    """An empty database of the test run's own (tests/support/postgres.py)."""
    async with test_server.scratch_database("bench") as url:
        yield url


async def fetch(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


async def exists(server: str, name: str) -> bool:
    return bool(await fetch(server, "SELECT 1 FROM pg_database WHERE datname = $1", name))


def closed_port_url(server: str) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return urlunsplit(urlsplit(server)._replace(netloc=f"postgres@127.0.0.1:{port}"))


# -- the scratch database -----------------------------------------------------------------------


async def test_scratch_database_is_named_for_the_run_and_dropped_afterwards(server: str) -> None:
    """`gwbench_<pid>_<n>` on the server, its URL that of the maintenance database renamed;
    gone after the block, though a session was still connected to it."""
    with contextlib.redirect_stderr(io.StringIO()) as said:
        async with scratch_database(server) as scratch:
            assert scratch.name.startswith(f"gwbench_{os.getpid()}_")
            assert urlsplit(scratch.url).path == f"/{scratch.name}"
            assert await exists(server, scratch.name)
            lingering = await asyncpg.connect(scratch.url)
        assert not await exists(server, scratch.name)
    lingering.terminate()
    assert f"dropped the scratch database {scratch.name}" in said.getvalue()


async def test_scratch_database_is_dropped_when_the_run_fails(server: str) -> None:
    """An error (or a cancellation, Ctrl-C) in the block still drops the database."""
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(RuntimeError, match="boom"):
        async with scratch_database(server) as scratch:
            raise RuntimeError("boom")
    assert not await exists(server, scratch.name)


async def test_scratch_databases_of_killed_runs_are_named(server: str) -> None:
    """A database whose bench process is gone (kill -9) is pointed out, not dropped."""
    leftover = "gwbench_999999999_1"
    await fetch(server, f'CREATE DATABASE "{leftover}"')
    try:
        with contextlib.redirect_stderr(io.StringIO()) as said:
            async with scratch_database(server):
                pass
        assert await exists(server, leftover)
    finally:
        await fetch(server, f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)')
    assert f"left on the server: {leftover}" in said.getvalue()


async def test_an_unreachable_server_is_a_bench_error(server: str) -> None:
    """Nothing listening: the command fails at once, naming what it tried."""
    with pytest.raises(BenchError, match="cannot create a scratch database: cannot connect"):
        async with scratch_database(closed_port_url(server)):
            pass


# -- the durability count -----------------------------------------------------------------------


async def test_count_postgres_submissions_reads_the_submission_table(database: str) -> None:
    """The rows of the stopped gateway's `submission` table."""
    await fetch(database, "CREATE TABLE submission (seq bigserial PRIMARY KEY, id text)")
    await fetch(database, "INSERT INTO submission (id) SELECT g::text FROM generate_series(1, 7) g")
    assert 7 == await count_postgres_submissions(database)


async def test_count_postgres_submissions_without_a_table_is_an_error(database: str) -> None:
    """No submission table (the gateway never started) is a failed check, not zero rows."""
    with pytest.raises(BenchError, match="cannot count the submissions"):
        await count_postgres_submissions(database)


# -- the server's settings and CPU time ---------------------------------------------------------


async def test_server_facts_name_the_version_and_the_durability_settings(database: str) -> None:
    """Version, fsync, synchronous_commit, …; the data directory's filesystem (a local server)."""
    facts = await server_facts(database)
    assert facts.version[0].isdigit()
    assert {"fsync", "synchronous_commit", "wal_sync_method", "full_page_writes"} == set(
        facts.settings
    )
    assert facts.filesystem not in (None, "unknown")
    assert facts.describe().startswith(f"PostgreSQL {facts.version}; fsync=")


def test_a_server_that_does_not_flush_is_called_not_durable() -> None:
    """fsync=off, synchronous_commit=off or a tmpfs data directory: a loud warning each."""
    durable = ServerFacts("15.20", {"fsync": "on", "synchronous_commit": "on"}, "/d", "ext4")
    assert [] == durable.warnings()
    assert "NOT DURABLE" not in durable.describe()
    lying = ServerFacts("15.20", {"fsync": "off", "synchronous_commit": "off"}, "/d", "tmpfs")
    assert 3 == len(lying.warnings())
    assert 3 == lying.describe().count("NOT DURABLE")
    assert "fsync=off: commits never wait for the disk" in lying.describe()


async def test_server_cpu_covers_the_databases_backends(server: str, database: str) -> None:
    """A session on the database is among the processes counted, with its CPU seconds."""
    connection = await asyncpg.connect(database)
    try:
        backend = connection.get_server_pid()
        seconds = await server_cpu(server, urlsplit(database).path.lstrip("/"))
    finally:
        await connection.close()
    assert seconds is not None
    assert backend in seconds
    assert all(value >= 0 for value in seconds.values())


def test_cpu_used_counts_processes_started_during_the_run_from_nothing() -> None:
    """After minus before per process; a new process's whole time; an ended one not at all."""
    assert 4.5 == cpu_used({1: 1.0, 2: 2.0, 3: 9.0}, {1: 3.0, 2: 2.5, 4: 2.0})
