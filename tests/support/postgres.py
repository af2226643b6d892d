"""The local PostgreSQL server the tests use, and throwaway databases on it.

The test machine runs PostgreSQL on 127.0.0.1:5432 (trust authentication); `server_url()` makes
sure it is up (starting the cluster if it is not) and never skips: a test that needs PostgreSQL
fails when there is none. `GATEWAY_TEST_POSTGRES` names another server (a URL of its
maintenance database).

Every database a run creates is named `gwtest_<run>_<n>`, `<run>` unique to the test run, and
dropped when its test ends; `drop_leftovers()` removes those of runs that were killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RUN = f"{os.getpid()}{secrets.token_hex(2)}"
_numbers = itertools.count(1)
_checked = False


def server_url() -> str:
    """The maintenance database's URL, once the server answers (started here if need be)."""
    global _checked
    url = os.environ.get("GATEWAY_TEST_POSTGRES", DEFAULT_URL)
    if not _checked:
        _ensure_running(url)
        _checked = True
    return url


def database_url(name: str) -> str:
    """The URL of database `name` on the test server."""
    parts = urlsplit(server_url())
    return urlunsplit(parts._replace(path=f"/{name}"))


def new_name(label: str = "db") -> str:
    return f"gwtest_{RUN}_{label}_{next(_numbers)}"


async def create_database(label: str = "db") -> str:
    """Create an empty database; returns its URL."""
    name = new_name(label)
    connection = await asyncpg.connect(server_url())
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return database_url(name)


async def drop_database(url: str) -> None:
    """Drop the database at `url`, ending any session still connected to it."""
    name = urlsplit(url).path.lstrip("/")
    connection = await asyncpg.connect(server_url())
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def scratch_database(label: str = "db") -> AsyncIterator[str]:
    """A new empty database for the block; dropped afterwards. Yields its URL."""
    url = await create_database(label)
    try:
        yield url
    finally:
        await drop_database(url)


@contextlib.contextmanager
def scratch_database_sync(label: str = "db") -> Iterator[str]:
    """`scratch_database` for synchronous tests (those driving gateway processes)."""
    url = asyncio.run(create_database(label))
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


async def drop_leftovers() -> int:
    """Drop databases left by earlier runs that did not finish; returns how many."""
    connection = await asyncpg.connect(server_url())
    try:
        names = [
            r["datname"]
            for r in await connection.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'gwtest\\_%'"
            )
            if not _run_alive(str(r["datname"]))
        ]
        for name in names:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
    return len(names)


def _run_alive(name: str) -> bool:
    """Whether the test run that made database `name` (`gwtest_<pid><4 hex>_…`) still runs."""
    run = name.removeprefix("gwtest_").partition("_")[0]
    pid = run[:-4]
    return run == RUN or (pid.isdigit() and Path(f"/proc/{pid}").exists())


def _answers(url: str) -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=3)
        await connection.close()

    # On a thread of its own: callers may be inside an event loop already.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        try:
            thread.submit(asyncio.run, probe()).result()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
    return True


def _ensure_running(url: str) -> None:
    if _answers(url):
        return
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError(
            f"PostgreSQL does not answer at {url} and there is no local cluster to start; "
            "start one, or set GATEWAY_TEST_POSTGRES to a server's maintenance database URL"
        )
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"],
        check=False,
        capture_output=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _answers(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"started the local PostgreSQL cluster, but {url} does not answer")
