"""Scenario `pass-through`: what the gateway's features cost a read, against a fast platform.

In one run, on one machine, the same signed-read load (`queryInvoiceResult`, a new order number
each request) goes to four targets in turn, each in front of the same fast platform (nginx with
canned answers, `nginx.py`):

    direct           the platform itself
    nginx            nginx as a plain reverse proxy
    reference proxy  a minimal aiohttp reverse proxy, no features (`reference_proxy.py`)
    gateway          the gateway, default profile, every feature on, access log at info

Each target gets a short warm-up, then `--duration` seconds with `--connections` connections.
Rows give answers per second, latency, and CPU seconds per 1,000 requests of the target's
process and of the platform's. Then the added latency at half load: the gateway and the platform
each offered half the gateway's saturated rate (paced connections), and the difference of their
p99s. The ratios and targets close the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from gateway.tools.bench.environment import bench_environment, process_cpu_seconds
from gateway.tools.bench.generators import (
    BodyTemplate,
    LoadGenerator,
    LoadResult,
    LoadTarget,
    choose_generator,
)
from gateway.tools.bench.nginx import (
    PLATFORM,
    PROXY,
    QUERY_OPERATION,
    TOKEN_PATH,
    fast_platform_config,
    nginx_child,
    proxy_config,
)
from gateway.tools.bench.options import BenchOptions, say
from gateway.tools.bench.report import Report, Row, TargetCheck
from gateway.tools.bench.scenarios import scenario
from gateway.tools.children import (
    Child,
    Credentials,
    Endpoints,
    free_port,
    gateway_child,
    scratch_dir,
    stop_children,
    wait_ready,
    write_gateway_config,
)

#: Seconds of load before each measured run (connections opened, caches and token warm).
WARM_UP_S: Final = 1.0
#: At half load, each connection waits about this long between requests: long enough that
#: wrk's whole milliseconds set the rate within a few per cent.
HALF_LOAD_PACE_MS: Final = 20
#: Targets (issue #15): the gateway at least as fast as the reference proxy; at most this much
#: p99 latency added at half load.
PASS_THROUGH_GOAL: Final = 1.0
ADDED_P99_GOAL_MS: Final = 2.0

GATEWAY: Final = "gateway"
REFERENCE: Final = "reference proxy"
NGINX: Final = "nginx"
DIRECT: Final = "direct"


@dataclass(frozen=True, slots=True)
class Target:
    """One thing the load is sent to: its URL and the processes whose CPU is counted."""

    label: str
    url: str
    process: Child
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Stack:
    platform: Child
    targets: list[Target]


def read_headers(tenant_key: str) -> dict[str, str]:
    return {"method": QUERY_OPERATION, "X-Api-Key": tenant_key, "Content-Type": "application/json"}


#: A query for one order number: `{"orderNos":["<order number>"]}`.
READ_BODY: Final = BodyTemplate(head='{"orderNos":["', tail='"]}')


def reference_proxy_child(port: int, upstream: str, env: Mapping[str, str], workdir: Path) -> Child:
    return Child(
        "reference-proxy",
        [sys.executable, "-m", "gateway.tools.bench.reference_proxy", str(port), upstream],
        env,
        workdir,
    )


@contextlib.asynccontextmanager
async def running_stack(workdir: Path, session: aiohttp.ClientSession) -> AsyncIterator[Stack]:
    """The fast platform and the three proxies in front of it, stopped on exit."""
    credentials = Credentials.generate()
    env = credentials.child_env()
    platform_port, nginx_port, reference_port = free_port(), free_port(), free_port()
    platform_url = f"http://127.0.0.1:{platform_port}"
    endpoints = Endpoints(platform_port, free_port(), free_port(), free_port())
    platform = nginx_child(PLATFORM, fast_platform_config(workdir, platform_port), workdir, env)
    nginx = nginx_child(PROXY, proxy_config(workdir, nginx_port, platform_port), workdir, env)
    reference = reference_proxy_child(reference_port, platform_url, env, workdir)
    # Every feature on: the default profile pointed at the fast platform, access log at info.
    gateway = gateway_child(write_gateway_config(workdir, endpoints), env, workdir)
    children = [platform, nginx, reference, gateway]
    headers = read_headers(credentials.tenant_key)
    try:
        for child in children:
            child.start()
        await asyncio.gather(
            wait_ready(platform, session, f"{platform_url}{TOKEN_PATH}"),
            wait_ready(nginx, session, f"http://127.0.0.1:{nginx_port}{TOKEN_PATH}"),
            wait_ready(reference, session, f"http://127.0.0.1:{reference_port}{TOKEN_PATH}"),
            wait_ready(gateway, session, f"{endpoints.gateway_url}/healthz"),
        )
        yield Stack(
            platform,
            [
                Target(DIRECT, platform_url, platform, headers),
                Target(NGINX, f"http://127.0.0.1:{nginx_port}", nginx, headers),
                Target(REFERENCE, f"http://127.0.0.1:{reference_port}", reference, headers),
                Target(GATEWAY, endpoints.gateway_url, gateway, headers),
            ],
        )
    finally:
        await asyncio.to_thread(stop_children, children)


@dataclass(frozen=True, slots=True)
class Measured:
    load: LoadResult
    #: Process label → CPU seconds per 1,000 answered requests (absent when unknown).
    cpu_per_1000: Mapping[str, float]


async def measure(
    generator: LoadGenerator,
    load: LoadTarget,
    processes: Mapping[str, Child],
    *,
    duration_s: float,
    connections: int,
    workdir: Path,
) -> Measured:
    """One load run, with the CPU each of `processes` spent on it."""
    before = {name: process_cpu_seconds(child.pid) for name, child in processes.items()}
    result = await generator.run(
        load, duration_s=duration_s, connections=connections, workdir=workdir
    )
    after = {name: process_cpu_seconds(child.pid) for name, child in processes.items()}
    cpu: dict[str, float] = {}
    for name in processes:
        start, end = before[name], after[name]
        if start is not None and end is not None and result.answers:
            cpu[name] = (end - start) / result.answers * 1000
    return Measured(result, cpu)


def _load(target: Target, pace_ms: int = 0) -> LoadTarget:
    return LoadTarget(
        base_url=target.url,
        headers=target.headers,
        templates=[READ_BODY],
        order_prefix=f"R{secrets.token_hex(3)}",
        pace_ms=pace_ms,
    )


def _processes(stack: Stack, target: Target) -> dict[str, Child]:
    processes = {target.label: target.process}
    if target.process is not stack.platform:
        processes["platform"] = stack.platform
    return processes


def _row(label: str, measured: Measured, settings: Mapping[str, str]) -> Row:
    notes = {
        "CPU s per 1,000 requests": ", ".join(
            f"{name} {seconds:.3f}" for name, seconds in measured.cpu_per_1000.items()
        )
        or "unknown"
    }
    return Row(label=label, settings=settings, load=measured.load, good_status=200, notes=notes)


async def _saturate(
    options: BenchOptions, generator: LoadGenerator, stack: Stack, workdir: Path, report: Report
) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for target in stack.targets:
        processes = _processes(stack, target)
        warm_up = min(WARM_UP_S, options.duration_s)
        await generator.run(
            _load(target), duration_s=warm_up, connections=options.connections, workdir=workdir
        )
        measured = await measure(
            generator,
            _load(target),
            processes,
            duration_s=options.duration_s,
            connections=options.connections,
            workdir=workdir,
        )
        row = _row(target.label, measured, {"connections": str(options.connections)})
        say(
            f"{target.label}: {row.good_per_s:.0f} answers/s, p99 "
            f"{measured.load.latency_p99_ms or 0:.1f} ms"
        )
        rows[target.label] = row
        report.rows.append(row)
        if target.process.exit_code() is not None:
            report.problems.append(
                f"{target.label} exited during the run; its log ends with:\n"
                f"{target.process.stderr_tail()}"
            )
        errors = measured.load.errors(200)
        if errors or not row.good:
            report.problems.append(f"{target.label}: answers other than 200: {errors or 'none'}")
    return rows


async def _half_load(
    options: BenchOptions,
    generator: LoadGenerator,
    stack: Stack,
    workdir: Path,
    report: Report,
    gateway_rate: float,
) -> None:
    """The gateway and the platform each offered half the gateway's saturated rate."""
    offered = gateway_rate / 2
    connections = max(1, round(offered * HALF_LOAD_PACE_MS / 1000))
    by_label = {target.label: target for target in stack.targets}
    p99: dict[str, float] = {}
    for label in (DIRECT, GATEWAY):
        target = by_label[label]
        measured = await measure(
            generator,
            _load(target, HALF_LOAD_PACE_MS),
            _processes(stack, target),
            duration_s=options.duration_s,
            connections=connections,
            workdir=workdir,
        )
        row = _row(
            f"{label} at half load",
            measured,
            {
                "offered": f"{offered:.0f}/s",
                "connections": str(connections),
                "pace": f"{HALF_LOAD_PACE_MS} ms",
            },
        )
        report.rows.append(row)
        if measured.load.latency_p99_ms is not None:
            p99[label] = measured.load.latency_p99_ms
    if len(p99) == 2:
        added = p99[GATEWAY] - p99[DIRECT]
        report.targets.append(
            TargetCheck(
                "added p99 latency at half load",
                f"{added:.2f} ms (gateway {p99[GATEWAY]:.2f}, direct {p99[DIRECT]:.2f})",
                f"≤ {ADDED_P99_GOAL_MS:g} ms",
                added <= ADDED_P99_GOAL_MS,
            )
        )


def pass_through_ratios(rows: Mapping[str, Row], report: Report) -> None:
    """The ratios between the saturated runs, and the pass-through target."""
    rates = {label: row.good_per_s for label, row in rows.items()}
    for top, bottom in (
        (GATEWAY, REFERENCE),
        (NGINX, REFERENCE),
        (GATEWAY, NGINX),
        (GATEWAY, DIRECT),
    ):
        if rates.get(top) and rates.get(bottom):
            report.ratios[f"{top} / {bottom}"] = rates[top] / rates[bottom]
    ratio = report.ratios.get(f"{GATEWAY} / {REFERENCE}")
    if ratio is not None:
        report.targets.append(
            TargetCheck(
                "pass-through, gateway / reference proxy",
                f"{ratio:.2f}x",
                f"≥ {PASS_THROUGH_GOAL:.2f}x",
                ratio >= PASS_THROUGH_GOAL,
            )
        )


@scenario(
    "pass-through",
    "signed reads through the gateway (every feature on) vs a minimal aiohttp proxy, nginx and "
    "the fast platform called directly, and the latency the gateway adds at half load",
)
async def pass_through(options: BenchOptions) -> Report:
    generator = choose_generator(builtin=options.builtin_generator)
    parent, environment = bench_environment(options, generator)
    environment["platform"] = "nginx with canned answers (one process)"
    report = Report("pass-through", "answered", environment)
    with scratch_dir(
        "bench", "invoice-gateway-bench-pass-through-", keep=options.keep, parent=parent
    ) as workdir:
        async with (
            aiohttp.ClientSession() as session,
            running_stack(workdir, session) as stack,
        ):
            rows = await _saturate(options, generator, stack, workdir, report)
            pass_through_ratios(rows, report)
            gateway = rows.get(GATEWAY)
            if gateway is not None and gateway.good_per_s > 0:
                await _half_load(options, generator, stack, workdir, report, gateway.good_per_s)
    return report
