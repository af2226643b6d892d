"""The registry of scenarios (a name → an async function of `BenchOptions` → `Report`) and each
scenario.

A new scenario is one function decorated with `@scenario("name", "what it measures")`; it gets
`--scenario name` for free and reuses the children (`running_platform`), the generators and the
report.

    durable-accept  outage-mode acceptance with the circuit open: SQLite with and without group
                    commit, and PostgreSQL (`--postgres`) in a scratch database
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from gateway.tools.bench.checks import DurabilityCheck, count_submissions, open_circuit
from gateway.tools.bench.environment import bench_environment, process_cpu_seconds
from gateway.tools.bench.generators import (
    LoadGenerator,
    LoadTarget,
    body_templates,
    choose_generator,
    submit_headers,
)
from gateway.tools.bench.options import BenchOptions, say
from gateway.tools.bench.platform import Platform, running_platform
from gateway.tools.bench.postgres import (
    ScratchDatabase,
    ServerFacts,
    count_postgres_submissions,
    cpu_used,
    scratch_database,
    server_cpu,
    server_facts,
)
from gateway.tools.bench.report import Report, Row
from gateway.tools.children import scratch_dir

#: A scenario: runs what it measures, returns the report.
ScenarioRun = Callable[[BenchOptions], Coroutine[Any, Any, Report]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    run: ScenarioRun


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, summary: str) -> Callable[[ScenarioRun], ScenarioRun]:
    """Register a scenario under `name` (the value of `--scenario`)."""

    def register(run: ScenarioRun) -> ScenarioRun:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, summary, run)
        return run

    return register


# -- scenario: durable acceptance with the circuit open -----------------------------------------

#: What every durable-accept run sets, whatever the store: quiet logs, an open circuit that stays
#: open (no half-open trial mid-run), and no background probe calling the platform.
OUTAGE_OVERRIDES: Final[Mapping[str, Any]] = {
    "log.level": "warning",
    "resilience.breaker.reset_timeout": "1h",
    "resilience.probe": None,
}


def durable_accept_overrides(*, group_commit: bool) -> dict[str, Any]:
    """The default profile as measured on SQLite: `OUTAGE_OVERRIDES` and fsync on every
    commit, with or without group commit."""
    return {**OUTAGE_OVERRIDES, "outbox.synchronous": "FULL", "outbox.group_commit": group_commit}


def postgres_accept_overrides(store_url: str) -> dict[str, Any]:
    """The default profile as measured on PostgreSQL: `OUTAGE_OVERRIDES`, the store at
    `store_url` (every write its own transaction, committed as the server's settings say)."""
    return {**OUTAGE_OVERRIDES, "store_url": store_url}


@dataclass(frozen=True, slots=True)
class StoreUnderTest:
    """What one durable-accept run keeps the gateway's store on, and how it reads it back."""

    #: Names the run's directory and its row among the ratios.
    key: str
    label: str
    settings: Mapping[str, str]
    overrides: Mapping[str, Any]
    #: Rows in the stopped gateway's store.
    count_rows: Callable[[Platform], Awaitable[int]]
    #: CPU seconds so far of each of the store server's processes (None: not on this machine);
    #: None for a store inside the gateway.
    server_cpu: Callable[[], Awaitable[Mapping[int, float] | None]] | None = None


def sqlite_store(*, group_commit: bool) -> StoreUnderTest:
    setting = "on" if group_commit else "off"

    async def count_rows(platform: Platform) -> int:
        return await asyncio.to_thread(count_submissions, platform.store_path)

    return StoreUnderTest(
        key=f"sqlite-{setting}",
        label=f"sqlite, group commit {setting}",
        settings={"store": "sqlite", "group_commit": setting, "synchronous": "FULL"},
        overrides=durable_accept_overrides(group_commit=group_commit),
        count_rows=count_rows,
    )


def postgres_store(
    server_url: str, database: ScratchDatabase, facts: ServerFacts
) -> StoreUnderTest:
    async def count_rows(_: Platform) -> int:
        return await count_postgres_submissions(database.url)

    async def cpu() -> Mapping[int, float] | None:
        return await server_cpu(server_url, database.name)

    return StoreUnderTest(
        key="postgresql",
        label="postgresql",
        settings={
            "store": "postgresql",
            "synchronous_commit": facts.settings.get("synchronous_commit", "unknown"),
            "fsync": facts.settings.get("fsync", "unknown"),
        },
        overrides=postgres_accept_overrides(database.url),
        count_rows=count_rows,
        server_cpu=cpu,
    )


def _core_share(seconds: float, elapsed_s: float) -> str:
    return f"{seconds / elapsed_s:.0%} of one core during the run"


async def _durable_accept_run(
    options: BenchOptions, workdir: Path, generator: LoadGenerator, store: StoreUnderTest
) -> tuple[Row, list[str]]:
    label = store.label
    problems: list[str] = []
    server_before: Mapping[int, float] | None = None
    server_after: Mapping[int, float] | None = None
    async with (
        aiohttp.ClientSession() as session,
        running_platform(workdir, session, store.overrides) as platform,
    ):
        target = LoadTarget(
            base_url=platform.endpoints.gateway_url,
            headers=submit_headers(platform.credentials.tenant_key),
            templates=body_templates(platform.credentials.user_tax),
            order_prefix=f"B{secrets.token_hex(3)}",
        )
        circuit = await open_circuit(session, platform, target)
        say(
            f"{label}: circuit open ({circuit.queued_without_upstream} submits queued at once "
            f"without calling the platform, {circuit.latency_ms:.1f} ms); "
            f"{options.connections} connections for {options.duration_s:g} s"
        )
        if store.server_cpu is not None:
            server_before = await store.server_cpu()
        cpu_before = process_cpu_seconds(platform.gateway.pid)
        load = await generator.run(
            target,
            duration_s=options.duration_s,
            connections=options.connections,
            workdir=workdir,
        )
        cpu_after = process_cpu_seconds(platform.gateway.pid)
        if store.server_cpu is not None:
            server_after = await store.server_cpu()
        if platform.gateway.exit_code() is not None:
            problems.append(
                f"{label}: the gateway exited during the run; its log ends with:\n"
                f"{platform.gateway.stderr_tail()}"
            )
    durability = DurabilityCheck(
        await store.count_rows(platform), load.count(202) + circuit.warmup_accepted
    )
    if not durability.ok:
        problems.append(f"{label}: durability check failed: {durability.describe()}")
    if load.count(202) == 0:
        problems.append(f"{label}: no submission was accepted (202)")
    notes = {
        "circuit": f"open; {circuit.queued_without_upstream} submits in a row queued without "
        f"calling the platform (after {circuit.warmup_submits} warm-up submits)",
        "durability": durability.describe(),
    }
    if cpu_before is not None and cpu_after is not None and load.elapsed_s > 0:
        # Near 100 % means the gateway's one event loop, not the disk, sets the pace.
        notes["gateway CPU"] = _core_share(cpu_after - cpu_before, load.elapsed_s)
    if store.server_cpu is not None:
        if server_before is None or server_after is None or load.elapsed_s <= 0:
            notes["PostgreSQL CPU"] = "unknown: the server does not run on this machine"
        else:
            notes["PostgreSQL CPU"] = (
                f"{_core_share(cpu_used(server_before, server_after), load.elapsed_s)} "
                "(the scratch database's backends and the server's background processes)"
            )
    row = Row(
        label=label,
        settings=store.settings,
        load=load,
        good_status=202,
        durability=durability,
        notes=notes,
    )
    say(f"{label}: {row.good_per_s:.1f} accepted/s; {durability.describe()}")
    return row, problems


async def _postgres_store(
    stack: contextlib.AsyncExitStack, server_url: str, environment: dict[str, str]
) -> StoreUnderTest:
    """A scratch database on the server (dropped when `stack` closes), its facts in the
    report's environment, and a loud warning when its commits are not durable."""
    database = await stack.enter_async_context(scratch_database(server_url))
    facts = await server_facts(database.url)
    address = urlsplit(server_url).netloc.rpartition("@")[2]
    environment["postgresql"] = f"{address}, database {database.name}: {facts.describe()}"
    for warning in facts.warnings():
        say(f"WARNING: PostgreSQL is not durable here ({warning}); its figure is overstated")
    return postgres_store(server_url, database, facts)


@scenario(
    "durable-accept",
    "outage-mode acceptance: the circuit open, every 202 fsynced (SQLite synchronous=FULL), "
    "with and without group commit, and on PostgreSQL with --postgres",
)
async def durable_accept(options: BenchOptions) -> Report:
    generator = choose_generator(builtin=options.builtin_generator)
    parent, environment = bench_environment(options, generator)
    report = Report("durable-accept", "accepted", environment)
    choices = {"on": (True,), "off": (False,), "both": (True, False)}[options.group_commit]
    async with contextlib.AsyncExitStack() as stack:
        stores = [sqlite_store(group_commit=group_commit) for group_commit in choices]
        if options.postgres is not None:
            # Before the SQLite runs: a server that cannot be used fails the command at once.
            stores.append(await _postgres_store(stack, options.postgres, environment))
        for store in stores:
            prefix = f"invoice-gateway-bench-{store.key}-"
            with scratch_dir("bench", prefix, keep=options.keep, parent=parent) as workdir:
                row, problems = await _durable_accept_run(options, workdir, generator, store)
            report.rows.append(row)
            report.problems += problems
    by_key = {store.key: row for store, row in zip(stores, report.rows, strict=True)}
    for name, (top, bottom) in DURABLE_ACCEPT_RATIOS.items():
        if top in by_key and bottom in by_key and by_key[bottom].good_per_s > 0:
            report.ratios[name] = by_key[top].good_per_s / by_key[bottom].good_per_s
    return report


#: The ratios durable-accept reports when it measured both runs: name → (run key, run key).
DURABLE_ACCEPT_RATIOS: Final[Mapping[str, tuple[str, str]]] = {
    "group commit on / off": ("sqlite-on", "sqlite-off"),
    "postgresql / sqlite group commit on": ("postgresql", "sqlite-on"),
}
