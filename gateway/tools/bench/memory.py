"""The `memory` scenario: the gateway's resident memory with a large outbox and many idle client
connections (target: RSS <= 100 MB with 1,000,000 queued submissions and 10,000 connections).

    1. `--queued` submissions are written into a fresh SQLite store before the gateway starts
       (`drain.fill_backlog`: the store's schema and row mapping). The harness then opens that
       store as the gateway will (`open_store`) and counts it as the gateway's outbox sampler
       does every 2 s (`counts`), timing both: with many rows these are what start-up and an
       idle gateway spend their time on.
    2. The simulator starts with its API refusing connections (`--scenario outage`), and the
       gateway on that store (no probe; a circuit that opens stays open for an hour): nothing
       can be delivered, so the queue stays as it is, which the store shows once the gateway has
       stopped. The start-up time is from starting the process until `/healthz` answers.
    3. `--open-connections` keep-alive connections each send one `GET /healthz` and stay open,
       idle. `limits.max_connections` is raised to let them in and `limits.read_timeout` (the
       idle timeout, 30 s by default) to 10 minutes, so none closes before the reading; the
       harness raises its soft limit of open files to the hard limit (the gateway inherits it).
    4. `VmRSS` and `VmHWM` (peak) of the gateway process are read from `/proc/PID/status`:
       before the connections, once every one was answered, and after `--duration` seconds with
       them idle (the gateway's CPU over that window is reported too); every connection must
       still be open then.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from gateway.errors import StoreError
from gateway.outbox.store import open_store
from gateway.tools.bench.checks import DurabilityCheck
from gateway.tools.bench.drain import (
    Backlog,
    BacklogPlatform,
    count_by_state,
    reading,
    scenario_environment,
    waiting,
)
from gateway.tools.bench.environment import process_cpu_seconds
from gateway.tools.bench.generators import LoadResult
from gateway.tools.bench.options import BenchError, BenchOptions, say
from gateway.tools.bench.report import Report, Row, TargetCheck
from gateway.tools.bench.scenarios import scenario
from gateway.tools.children import scratch_dir
from gateway.tools.loadgen import percentile

TARGET_RSS_MB: Final = 100.0
TARGET_QUEUED: Final = 1_000_000
TARGET_CONNECTIONS: Final = 10_000
#: Connections beyond `--open-connections` the gateway admits (readiness polls, scrapes).
CONNECTION_MARGIN: Final = 100
#: File descriptors the harness needs besides the connections (children's logs, the store).
SPARE_FILES: Final = 200
#: Connections being opened at once (the listener's accept backlog is 128).
OPENING_AT_ONCE: Final = 100
IDLE_TIMEOUT: Final = "10m"
#: Start-up may read the whole store: allow a second per 20,000 rows, at least a minute.
STARTUP_ROWS_PER_S: Final = 20_000
STARTUP_TIMEOUT_MIN_S: Final = 60.0
CONNECTION_TIMEOUT_S: Final = 30.0

#: What every memory run sets: quiet logs, no probe, and a circuit that stays open if it opens.
MEMORY_OVERRIDES: Final[Mapping[str, Any]] = {
    "log.level": "warning",
    "resilience.probe": None,
    "resilience.breaker.reset_timeout": "1h",
}
#: The simulator's API refuses connections from its start, for a day.
PLATFORM_DOWN: Final = ("--scenario", "outage:after=0,down=86400")


def memory_overrides(open_connections: int) -> dict[str, Any]:
    return {
        **MEMORY_OVERRIDES,
        "limits.max_connections": open_connections + CONNECTION_MARGIN,
        "limits.read_timeout": IDLE_TIMEOUT,
    }


# -- /proc --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """A process's resident set now (`VmRSS`) and at its peak (`VmHWM`), in MB (10^6 bytes)."""

    rss_mb: float
    peak_mb: float


def parse_status_memory(status: str) -> Memory:
    """`VmRSS` and `VmHWM` from `/proc/PID/status` text (given in kB, that is KiB)."""
    values: dict[str, float] = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = float(rest.split()[0]) * 1024 / 1e6
    if set(values) != {"VmRSS", "VmHWM"}:
        raise BenchError("no VmRSS and VmHWM in the process's status (not Linux?)")
    return Memory(values["VmRSS"], values["VmHWM"])


def process_memory(pid: int | None) -> Memory:
    if pid is None:
        raise BenchError("the gateway has no process to measure")
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise BenchError(f"cannot read the memory of process {pid}: {exc}") from None
    return parse_status_memory(status)


def raise_open_files(needed: int) -> int:
    """Raise this process's soft limit of open files to its hard limit (children inherit it);
    the new soft limit. `BenchError` when even the hard limit is below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"{needed} open files are needed and the hard limit is {hard}; raise it "
            "(ulimit -Hn, or LimitNOFILE for a service) or ask for fewer --open-connections"
        )
    # An unlimited hard limit cannot be the soft one (the kernel caps open files): ask for what
    # is needed then.
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


# -- the store's costs with many rows -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreCosts:
    """Seconds the harness took to open the filled store as the gateway does, and to count it
    as the gateway's outbox sampler does (every 2 s)."""

    open_s: float
    counts_s: float


async def store_costs(path: Path) -> StoreCosts:
    started = time.perf_counter()
    try:
        store = await open_store(f"sqlite:///{path}", environ={})
    except StoreError as exc:
        raise BenchError(f"cannot open the filled store: {exc}") from None
    opened = time.perf_counter()
    try:
        await store.counts()
    finally:
        await store.close()
    return StoreCosts(opened - started, time.perf_counter() - opened)


# -- idle connections ---------------------------------------------------------------------------


@dataclass
class IdleConnections:
    """Client connections that each asked `GET /healthz` once and stay open."""

    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def still_open(self) -> int:
        """Connections neither side has closed."""
        return sum(
            not writer.is_closing() and not reader.at_eof() for reader, writer in self.streams
        )

    def result(self) -> LoadResult:
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return LoadResult(
            generator="idle keep-alive connections (asyncio streams), one GET /healthz each",
            elapsed_s=self.elapsed_s,
            statuses=dict(self.statuses),
            socket_errors=dict(self.errors),
            outcomes={},
            latency_p50_ms=None if p50 is None else p50 * 1000,
            latency_p99_ms=None if p99 is None else p99 * 1000,
        )


_REQUEST: Final = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"


async def _open_one(port: int, connections: IdleConnections, gate: asyncio.Semaphore) -> None:
    async with gate:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), CONNECTION_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            connections.errors["connect"] += 1
            return
        connections.streams.append((reader, writer))
        try:
            writer.write(_REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECTION_TIMEOUT_S)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await asyncio.wait_for(reader.readexactly(length), CONNECTION_TIMEOUT_S)
        except TimeoutError:
            connections.errors["timeout"] += 1
            return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            connections.errors["read"] += 1
            return
        connections.statuses[status] += 1
        connections.latencies.append(time.perf_counter() - started)


@contextlib.asynccontextmanager
async def idle_connections(port: int, count: int) -> AsyncIterator[IdleConnections]:
    """`count` connections to 127.0.0.1:`port`, each answered once and kept open; closed on
    exit."""
    connections = IdleConnections()
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    started = time.perf_counter()
    try:
        await asyncio.gather(*(_open_one(port, connections, gate) for _ in range(count)))
        connections.elapsed_s = time.perf_counter() - started
        yield connections
    finally:
        for _, writer in connections.streams:
            writer.close()
        await asyncio.gather(
            *(writer.wait_closed() for _, writer in connections.streams), return_exceptions=True
        )


# -- the run ------------------------------------------------------------------------------------


def memory_target(rss_mb: float, queued: int, open_connections: int) -> TargetCheck | None:
    """The target as this run measured it; None for a smaller run within it (it cannot say)."""
    full = queued >= TARGET_QUEUED and open_connections >= TARGET_CONNECTIONS
    if not full and rss_mb <= TARGET_RSS_MB:
        return None
    return TargetCheck(
        f"RSS with {queued:,} queued and {open_connections:,} connections"
        + (
            "" if full else f" (the target is set for {TARGET_QUEUED:,} and {TARGET_CONNECTIONS:,})"
        ),
        f"{rss_mb:.1f} MB",
        f"≤ {TARGET_RSS_MB:g} MB",
        rss_mb <= TARGET_RSS_MB,
    )


@dataclass(frozen=True, slots=True)
class Holding:
    """The gateway's memory and CPU while it held the idle connections."""

    connections: IdleConnections
    #: Before the connections, right after they were all answered, and after `idle_s` idle.
    before: Memory
    opened: Memory
    idle: Memory
    idle_s: float
    #: CPU seconds the gateway used over the idle window (None: unknown).
    idle_cpu_s: float | None
    #: Connections still open after the idle window.
    still_open: int


async def hold_connections(pid: int | None, port: int, count: int, idle_s: float) -> Holding:
    """Open `count` idle connections to the gateway, read its memory, keep them idle for
    `idle_s` (the measured window: its CPU then is what holding them and its own background
    work cost), read its memory again, and close them."""
    before = process_memory(pid)
    async with idle_connections(port, count) as connections:
        opened = process_memory(pid)
        cpu_before = process_cpu_seconds(pid)
        await asyncio.sleep(idle_s)
        cpu_after = process_cpu_seconds(pid)
        idle = process_memory(pid)
        still_open = connections.still_open()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Holding(connections, before, opened, idle, idle_s, cpu, still_open)


def _memory_notes(
    holding: Holding, startup_s: float, backlog: Backlog, costs: StoreCosts, count: int
) -> dict[str, str]:
    rss = max(holding.opened.rss_mb, holding.idle.rss_mb)
    notes = {
        "RSS": f"{rss:.1f} MB with the connections open ({holding.before.rss_mb:.1f} MB before "
        f"them; {holding.opened.rss_mb:.1f} MB once all were answered, "
        f"{holding.idle.rss_mb:.1f} MB after {holding.idle_s:g} s idle)",
        "peak RSS": f"{holding.idle.peak_mb:.1f} MB (VmHWM since the process started)",
        "start-up": f"{startup_s:.2f} s from starting the process until /healthz answered",
        "store": f"{backlog.count:,} queued rows written in {backlog.seconds:.1f} s; opening it "
        f"(open_store) took {costs.open_s:.2f} s and counting it (counts(), which the gateway's "
        f"outbox sampler runs every 2 s) {costs.counts_s:.2f} s in the harness",
        "idle timeout": f"limits.read_timeout raised to {IDLE_TIMEOUT} (default 30 s) so no "
        f"connection closes before the reading; limits.max_connections {count + CONNECTION_MARGIN}",
    }
    if holding.idle_cpu_s is not None and holding.idle_s > 0:
        notes["gateway CPU"] = (
            f"{holding.idle_cpu_s:.2f} s over {holding.idle_s:g} s idle with the connections "
            f"open ({holding.idle_cpu_s / holding.idle_s:.0%} of one core)"
        )
    return notes


@scenario(
    "memory",
    "the gateway's RSS with --queued submissions in its store (platform down) and "
    "--open-connections idle keep-alive connections (target <= 100 MB at 1,000,000 / 10,000)",
)
async def memory(options: BenchOptions) -> Report:
    queued, count = options.queued, options.open_connections
    open_files = raise_open_files(count + SPARE_FILES)
    parent, environment = scenario_environment(options)
    environment["open files"] = f"soft limit raised to {open_files} (the gateway inherits it)"
    environment["platform"] = "down: the simulator's API refuses connections from its start"
    environment["idle window"] = f"{options.duration_s:g} s (--duration) with the connections open"
    report = Report("memory", "answered", environment)
    label = f"{queued:,} queued, {count:,} connections"
    with scratch_dir(
        "bench", "invoice-gateway-bench-memory-", keep=options.keep, parent=parent
    ) as workdir:
        async with (
            aiohttp.ClientSession() as session,
            contextlib.aclosing(
                BacklogPlatform(workdir, memory_overrides(count), simulator_args=PLATFORM_DOWN)
            ) as platform,
        ):
            backlog = await platform.fill(queued)
            costs = await store_costs(platform.store_path)
            say(f"opening the store took {costs.open_s:.2f} s, counting it {costs.counts_s:.2f} s")
            await platform.start_simulator(session)
            platform.start_gateway()
            startup_s = await platform.gateway_ready(
                session, max(STARTUP_TIMEOUT_MIN_S, queued / STARTUP_ROWS_PER_S)
            )
            say(f"the gateway answered /healthz {startup_s:.2f} s after it started")
            holding = await hold_connections(
                platform.gateway.pid, platform.endpoints.gateway_port, count, options.duration_s
            )
            say(
                f"{holding.still_open} of {count} connections open after {options.duration_s:g} s "
                f"idle; gateway RSS {holding.idle.rss_mb:.1f} MB (peak {holding.idle.peak_mb:.1f})"
            )
            if platform.gateway.exit_code() is not None:
                report.problems.append(
                    f"{label}: the gateway exited; its log ends with:\n"
                    f"{platform.gateway.stderr_tail()}"
                )
        with reading(platform.store_path) as db:
            by_state = count_by_state(db)
    load = holding.connections.result()
    if holding.still_open < count or load.count(200) < count:
        report.problems.append(
            f"{label}: {load.count(200)} of {count} connections answered 200 and "
            f"{holding.still_open} were still open at the reading (errors: "
            f"{dict(holding.connections.errors) or 'none'})"
        )
    durability = DurabilityCheck(waiting(by_state), queued)
    if not durability.ok:
        report.problems.append(
            f"{label}: the queue did not stay: {durability.describe()} ({by_state})"
        )
    notes = _memory_notes(holding, startup_s, backlog, costs, count)
    notes["rows by state"] = ", ".join(f"{state}: {n}" for state, n in sorted(by_state.items()))
    target = memory_target(max(holding.opened.rss_mb, holding.idle.rss_mb), queued, count)
    if target is not None:
        report.targets.append(target)
    report.rows.append(
        Row(
            label=label,
            settings={
                "queued": str(queued),
                "open_connections": str(count),
                "read_timeout": IDLE_TIMEOUT,
            },
            load=load,
            good_status=200,
            durability=durability,
            notes=notes,
        )
    )
    return report
