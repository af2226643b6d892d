"""The registry of scenarios (a name → an async function of `BenchOptions` → `Report`) and each
scenario.

A new scenario is one function decorated with `@scenario("name", "what it measures")`; it gets
`--scenario name` for free and reuses the children (`running_platform`), the generators and the
report.

    durable-accept  outage-mode acceptance with the circuit open, with and without group commit
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from gateway.tools.bench.platform import running_platform
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


def durable_accept_overrides(*, group_commit: bool) -> dict[str, Any]:
    """The default profile as measured: quiet logs, fsync on every commit, an open circuit that
    stays open (no half-open trial mid-run), and no background probe calling the platform."""
    return {
        "log.level": "warning",
        "outbox.synchronous": "FULL",
        "outbox.group_commit": group_commit,
        "resilience.breaker.reset_timeout": "1h",
        "resilience.probe": None,
    }


async def _durable_accept_run(
    options: BenchOptions, workdir: Path, generator: LoadGenerator, *, group_commit: bool
) -> tuple[Row, list[str]]:
    label = f"group commit {'on' if group_commit else 'off'}"
    overrides = durable_accept_overrides(group_commit=group_commit)
    problems: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        running_platform(workdir, session, overrides) as platform,
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
        cpu_before = process_cpu_seconds(platform.gateway.pid)
        load = await generator.run(
            target,
            duration_s=options.duration_s,
            connections=options.connections,
            workdir=workdir,
        )
        cpu_after = process_cpu_seconds(platform.gateway.pid)
        if platform.gateway.exit_code() is not None:
            problems.append(
                f"{label}: the gateway exited during the run; its log ends with:\n"
                f"{platform.gateway.stderr_tail()}"
            )
    durability = DurabilityCheck(
        count_submissions(platform.store_path), load.count(202) + circuit.warmup_accepted
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
        busy = (cpu_after - cpu_before) / load.elapsed_s
        notes["gateway CPU"] = f"{busy:.0%} of one core during the run"
    row = Row(
        label=label,
        settings={"group_commit": "on" if group_commit else "off", "synchronous": "FULL"},
        load=load,
        good_status=202,
        durability=durability,
        notes=notes,
    )
    say(f"{label}: {row.good_per_s:.1f} accepted/s; {durability.describe()}")
    return row, problems


@scenario(
    "durable-accept",
    "outage-mode acceptance: the circuit open, every 202 fsynced (synchronous=FULL), "
    "with and without group commit",
)
async def durable_accept(options: BenchOptions) -> Report:
    generator = choose_generator(builtin=options.builtin_generator)
    parent, environment = bench_environment(options, generator)
    report = Report("durable-accept", "accepted", environment)
    choices = {"on": (True,), "off": (False,), "both": (True, False)}[options.group_commit]
    for group_commit in choices:
        prefix = f"invoice-gateway-bench-{'on' if group_commit else 'off'}-"
        with scratch_dir("bench", prefix, keep=options.keep, parent=parent) as workdir:
            row, problems = await _durable_accept_run(
                options, workdir, generator, group_commit=group_commit
            )
        report.rows.append(row)
        report.problems += problems
    by_setting = {row.settings["group_commit"]: row for row in report.rows}
    if {"on", "off"} <= by_setting.keys() and by_setting["off"].good_per_s > 0:
        report.ratios["group commit on / off"] = (
            by_setting["on"].good_per_s / by_setting["off"].good_per_s
        )
    return report
