"""The PostgreSQL side of a run: a scratch database the gateway's store lives in for one run
(`scratch_database`, `gwbench_<pid>_<n>`, dropped at the end whatever happens), what the server
is and whether its commits are durable (`server_facts`), the rows the stopped gateway left there
(`count_postgres_submissions`), and the server's CPU time over the run (`server_cpu`, read from
`/proc` when the server runs on this machine)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.outbox.store.urls import masked_url
from gateway.tools.bench.environment import MEMORY_FILESYSTEMS, filesystem_of, process_cpu_seconds
from gateway.tools.bench.options import BenchError, say

#: The local server's maintenance database (`--postgres` without a URL).
DEFAULT_POSTGRES_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Every scratch database is `gwbench_<pid of the bench>_<n>`.
SCRATCH_PREFIX: Final = "gwbench_"
CONNECT_TIMEOUT_S: Final = 10.0
#: What a failing call to the server raises, from the server, the driver or the network.
_DATABASE_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_numbers = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ScratchDatabase:
    name: str
    #: The database's URL (that of the maintenance database with another path).
    url: str


@contextlib.asynccontextmanager
async def _connected(url: str, doing: str) -> AsyncIterator[Any]:
    """A connection to `url`; a failure to connect, or in the block, is a `BenchError` saying
    what was being done (the URL shown without its password)."""
    try:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (*_DATABASE_ERRORS, ValueError) as exc:
        raise BenchError(f"cannot {doing}: cannot connect to {masked_url(url)}: {exc}") from None
    try:
        yield connection
    except _DATABASE_ERRORS as exc:
        raise BenchError(f"cannot {doing} ({masked_url(url)}): {exc}") from None
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[ScratchDatabase]:
    """A new empty database on the server whose maintenance database `server_url` names,
    dropped when the block ends: normally, on an error, or cancelled (Ctrl-C)."""
    name = f"{SCRATCH_PREFIX}{os.getpid()}_{next(_numbers)}"
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    async with _connected(server_url, "create a scratch database") as connection:
        await _say_leftovers(connection)
        await connection.execute(f'CREATE DATABASE "{name}"')
    say(f"PostgreSQL: created the scratch database {name}")
    try:
        yield ScratchDatabase(name, url)
    finally:
        # FORCE: a gateway killed mid-run may leave its sessions behind.
        async with _connected(server_url, f"drop the scratch database {name}") as connection:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        say(f"PostgreSQL: dropped the scratch database {name}")


async def _say_leftovers(connection: Any) -> None:
    """Name the scratch databases of bench runs that were killed (kill -9 drops nothing)."""
    names = [
        str(row["datname"])
        for row in await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'gwbench\\_%' ORDER BY datname"
        )
    ]
    dead = [name for name in names if not _bench_alive(name)]
    if dead:
        say(
            f"PostgreSQL: scratch databases of earlier bench runs are left on the server: "
            f"{', '.join(dead)} (drop them with DROP DATABASE … WITH (FORCE))"
        )


def _bench_alive(name: str) -> bool:
    """Whether the bench run that made `gwbench_<pid>_<n>` still runs on this machine."""
    pid = name.removeprefix(SCRATCH_PREFIX).partition("_")[0]
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


async def count_postgres_submissions(url: str) -> int:
    """Rows in the `submission` table of the database at `url`."""
    async with _connected(url, "count the submissions") as connection:
        return int(await connection.fetchval("SELECT count(*) FROM submission"))


#: Settings that decide whether a commit is on disk when the client hears of it.
DURABILITY_SETTINGS: Final = ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the figures were measured on, as a session of the scratch database sees it."""

    version: str
    settings: Mapping[str, str]
    #: The data directory, when this role may read it.
    data_directory: str | None = None
    #: Its filesystem's type, when the server runs on this machine.
    filesystem: str | None = None

    def warnings(self) -> list[str]:
        """Why a 'durable' figure from this server would not be one."""
        found = []
        if self.settings.get("fsync") == "off":
            found.append("fsync=off: commits never wait for the disk")
        if self.settings.get("synchronous_commit") == "off":
            found.append("synchronous_commit=off: commits are acknowledged before the WAL flush")
        if self.filesystem in MEMORY_FILESYSTEMS:
            found.append(f"the data directory is on {self.filesystem}: fsync costs nothing")
        return found

    def describe(self) -> str:
        text = f"PostgreSQL {self.version}; " + ", ".join(
            f"{name}={value}" for name, value in self.settings.items()
        )
        if self.data_directory is not None:
            text += f"; data in {self.data_directory} ({self.filesystem or 'not on this machine'})"
        for warning in self.warnings():
            text += f" - NOT DURABLE, {warning}; the PostgreSQL figure is overstated"
        return text


async def server_facts(url: str) -> ServerFacts:
    """The server's version and durability settings, as a session of the database at `url`
    (with its role's and database's settings) sees them."""
    async with _connected(url, "read the server's settings") as connection:
        version = str(await connection.fetchval("SHOW server_version"))
        settings = {
            name: str(await connection.fetchval(f"SHOW {name}")) for name in DURABILITY_SETTINGS
        }
        try:
            data_directory: str | None = str(await connection.fetchval("SHOW data_directory"))
        except asyncpg.InsufficientPrivilegeError:
            data_directory = None
        local = await _server_is_local(connection)
    filesystem = None
    if data_directory is not None and local:
        filesystem = filesystem_of(Path(data_directory))
    return ServerFacts(version, settings, data_directory, filesystem)


async def _server_is_local(connection: Any) -> bool:
    """Whether this session's server process is one of this machine's processes: its process
    title names the client port the server sees (`… 127.0.0.1(40512) idle`, or `[local]`)."""
    row = await connection.fetchrow("SELECT pg_backend_pid() AS pid, inet_client_port() AS port")
    client = "[local]" if row["port"] is None else f"({row['port']})"
    title = _process_title(int(row["pid"]))
    return title.startswith("postgres") and client in title


def _process_title(pid: int) -> str:
    """Process `pid`'s command line as `ps` shows it, "" when there is no such process here."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


async def server_cpu(server_url: str, database: str) -> dict[int, float] | None:
    """CPU seconds so far of each server process working for `database`: its backends, and the
    server's own background processes (WAL writer, checkpointer, ...) that all databases share.
    None when the server does not run on this machine (its processes are not in `/proc`)."""
    async with _connected(server_url, "list the server's processes") as connection:
        if not await _server_is_local(connection):
            return None
        pids = [
            int(row["pid"])
            for row in await connection.fetch(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = $1 OR (datname IS NULL AND backend_type <> 'client backend')",
                database,
            )
        ]
    seconds = {pid: process_cpu_seconds(pid) for pid in pids}
    return {pid: used for pid, used in seconds.items() if used is not None}


def cpu_used(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds the processes alive at the end used since `before` (those started since from
    nothing; those that ended in between are not counted)."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())
