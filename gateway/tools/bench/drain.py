"""The `drain` scenario: how fast the dispatcher empties a backlog, with and without its rate
limit, and the pieces it shares with the `memory` scenario.

A backlog of queued submissions is written into a fresh SQLite store before the gateway starts
(`fill_backlog`: the store's own schema, from `SqliteStore.open`, and its own row mapping,
`gateway.outbox.store.rows`), so nothing but the dispatcher delivers them. The gateway then
starts against a simulator that issues at once (`--issue-delay 0`), and the harness samples the
store's row counts by state, and the CPU time of both children, until no submission waits.

    unthrottled  `outbox.dispatcher.rate` far above anything reachable: the dispatcher's own
                 pace (target >= 2,000 delivered/s)
    throttled    `--rate` (default 500/s): the measured rate must be within 5 % of it

The rate is taken between 10 % and 90 % of the backlog delivered, so start-up and the last
stragglers do not count. Every submission must end `delivered`, and the simulator's ledger
must list every order number issued exactly once (`DrainCheck`).

Also here, for both scenarios: `BacklogPlatform` (the simulator, then the gateway on a store
filled beforehand, readiness waited for with a timeout that suits a large store) and
`scenario_environment`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

from gateway.outbox.store import rows as row_mapping
from gateway.outbox.store.sealing import Sealer
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.submissions import NewSubmission, SubmissionState
from gateway.tools.bench.checks import DurabilityCheck
from gateway.tools.bench.environment import (
    choose_store_parent,
    machine_description,
    process_cpu_seconds,
)
from gateway.tools.bench.generators import BodyTemplate, LoadResult, body_templates
from gateway.tools.bench.options import BenchError, BenchOptions, say
from gateway.tools.bench.platform import Platform
from gateway.tools.bench.report import Report, Row, TargetCheck
from gateway.tools.bench.scenarios import scenario
from gateway.tools.children import (
    Child,
    ChildStartError,
    Credentials,
    Endpoints,
    gateway_child,
    scratch_dir,
    simulator_child,
    stop_children,
    wait_ready,
    write_gateway_config,
)
from gateway.tools.loadgen import SERVICES_PATH, SUBMIT_OPERATION

DEFAULT_BACKLOG: Final = 20_000
DEFAULT_RATE: Final = 500.0
#: The unthrottled run's `outbox.dispatcher.rate`: no bucket on this machine empties it.
UNTHROTTLED_RATE: Final = 1_000_000.0
#: Deliveries in flight at once, in both runs: the upstream pool's size (`upstream.pool_size`,
#: 100 in the default profile), so no delivery waits for a connection.
DISPATCH_CONCURRENCY: Final = 100
#: Rows claimed per look (the profile's 64 would need two claims to fill the slots).
DISPATCH_BATCH: Final = 100
#: The targets (docs/design.md#targets).
TARGET_DELIVERED_PER_S: Final = 2_000.0
RATE_TOLERANCE: Final = 0.05
#: The share of the backlog delivered where the measured window starts and ends.
WINDOW: Final = (0.1, 0.9)
SAMPLE_INTERVAL_S: Final = 0.05
#: No delivery for this long while submissions wait: the run failed.
STALL_TIMEOUT_S: Final = 30.0
#: A child using this share of one core or more sets the pace.
CPU_BOUND_SHARE: Final = 0.9
#: Rows written per transaction while filling a store.
FILL_BATCH: Final = 20_000
#: The file the scenarios' gateway keeps its store in, inside the run's directory.
STORE_FILE: Final = "backlog.db"

#: What every drain run sets: quiet logs, no background probe calls.
DRAIN_OVERRIDES: Final[Mapping[str, Any]] = {
    "log.level": "warning",
    "resilience.probe": None,
}


# -- the environment ----------------------------------------------------------------------------


def scenario_environment(options: BenchOptions) -> tuple[Path, dict[str, str]]:
    """Where the runs' directories go, and the machine the figures were measured on."""
    parent, fstype = choose_store_parent(options.store_parent)
    load_1, load_5, load_15 = os.getloadavg()
    say(f"stores under {parent} ({fstype})")
    return parent, {
        "store": f"{parent} ({fstype})",
        **machine_description(),
        "load average": f"{load_1:.2f} {load_5:.2f} {load_15:.2f} before the runs",
    }


# -- filling a store ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backlog:
    """What `fill_backlog` wrote: `count` queued submissions, order numbers `order_no(i)`."""

    count: int
    prefix: str
    seconds: float

    def order_no(self, index: int) -> str:
        return f"{self.prefix}{index:07d}"

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FastFingerprint:
    """`submissions.fingerprint` of a template's bodies without parsing each one: the SHA-256
    of the template's canonical JSON (sorted keys, no whitespace) with the order number put
    in, which is what `fingerprint` computes for an order number JSON writes as it is."""

    head: bytes
    tail: bytes

    @classmethod
    def of(cls, template: BodyTemplate) -> FastFingerprint:
        marker = "@@order-number@@"  # written by JSON as it is, like an order number
        canonical = json.dumps(
            json.loads(template.render(marker)),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        head, tail = canonical.split(marker)
        return cls(head.encode(), tail.encode())

    def __call__(self, order_no: str) -> str:
        return hashlib.sha256(self.head + order_no.encode() + self.tail).hexdigest()


def _queued_rows(
    *,
    count: int,
    prefix: str,
    tenant: str,
    templates: Sequence[BodyTemplate],
    now: float,
    sealer: Sealer,
) -> Iterator[tuple[Any, ...]]:
    """`count` rows as the store writes a submission accepted while the platform was down: a
    `requestBillingNew` from the client, queued and acknowledged, due at `now`."""
    fingerprints = [FastFingerprint.of(template) for template in templates]
    for index in range(count):
        order_no = f"{prefix}{index:07d}"
        body = templates[index % len(templates)].render(order_no)
        request_id = f"bench-{prefix}-{index}"
        new = NewSubmission(
            tenant=tenant,
            operation=SUBMIT_OPERATION,
            idempotency_key=order_no,
            fingerprint=fingerprints[index % len(templates)](order_no),
            business_key=order_no,
            ordering_key=order_no,
            method="POST",
            path=SERVICES_PATH,
            query=(),
            headers=(
                ("method", SUBMIT_OPERATION),
                ("Content-Type", "application/json"),
                ("X-Request-Id", request_id),
            ),
            body=body,
            request_id=request_id,
        )
        row = row_mapping.admitted(
            new, queue=True, blocked=False, owner="bench", lease_seconds=0.0, now=now
        )
        yield row_mapping.submission_values(row, sealer)


def _batches(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    while batch := list(itertools.islice(rows, FILL_BATCH)):
        yield batch


def _insert_rows(path: Path, rows: Iterator[tuple[Any, ...]]) -> None:
    """Insert `rows` in transactions of `FILL_BATCH`, the next batch made in a second thread
    while SQLite writes this one (it lets go of the GIL while it works)."""
    marks = ", ".join("?" * len(row_mapping.COLUMNS.split(",")))
    # The column list is the row mapping's constant; every value is a bound parameter.
    insert = f"INSERT INTO submission ({row_mapping.COLUMNS}) VALUES ({marks})"  # noqa: S608
    batches = _batches(rows)
    with (
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db,
        ThreadPoolExecutor(1, thread_name_prefix="bench-rows") as maker,
    ):
        # A scratch store nobody has open: no fsync per batch (the file is checkpointed and
        # closed before the gateway opens it).
        db.execute("PRAGMA synchronous = OFF")
        upcoming = maker.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = maker.submit(next, batches, None)
            db.execute("BEGIN IMMEDIATE")
            db.executemany(insert, batch)
            db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def fill_backlog(path: Path, *, count: int, tenant: str, seller_tax: str) -> Backlog:
    """Write `count` queued submissions of `tenant` into a new SQLite store at `path`, before
    any gateway opens it: the schema from `SqliteStore.open`, each row from the store's row
    mapping (`rows.admitted`, `rows.submission_values`, not sealed), in batches."""
    if await asyncio.to_thread(path.exists):
        raise BenchError(f"{path} exists already; a backlog goes into a new store")
    store = await SqliteStore.open(path)  # creates the schema, as the gateway would
    await store.close()
    prefix = f"D{secrets.token_hex(3)}-"
    rows = _queued_rows(
        count=count,
        prefix=prefix,
        tenant=tenant,
        templates=body_templates(seller_tax),
        now=time.time(),
        sealer=Sealer(),
    )
    started = time.perf_counter()
    try:
        await asyncio.to_thread(_insert_rows, path, rows)
    except sqlite3.Error as exc:
        raise BenchError(f"cannot fill the store at {path}: {exc}") from None
    return Backlog(count, prefix, time.perf_counter() - started)


def count_by_state(db: sqlite3.Connection) -> dict[str, int]:
    """Rows of the `submission` table by state."""
    found = db.execute("SELECT state, count(*) FROM submission GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in found}


def waiting(by_state: Mapping[str, int]) -> int:
    """Rows the dispatcher still has to deliver (or is delivering)."""
    return sum(
        by_state.get(state.value, 0)
        for state in (SubmissionState.QUEUED, SubmissionState.DELIVERING, SubmissionState.UNKNOWN)
    )


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a store a gateway may be writing (WAL lets both go on)."""
    try:
        # Used from worker threads (`asyncio.to_thread`), one query at a time.
        db = sqlite3.connect(path, timeout=10, check_same_thread=False)
        db.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        raise BenchError(f"cannot read the store at {path}: {exc}") from None
    with contextlib.closing(db):
        yield db


# -- the children -------------------------------------------------------------------------------


async def wait_answering(
    child: Child, session: aiohttp.ClientSession, url: str, *, started: float, timeout_s: float
) -> float:
    """`wait_ready` for up to `timeout_s` since `started` (monotonic), however long its own
    timeout is; the seconds since `started` when `url` answered 200."""
    while True:
        try:
            await wait_ready(child, session, url)
        except ChildStartError as exc:
            if child.exit_code() is not None:
                raise
            if time.monotonic() - started >= timeout_s:
                raise ChildStartError(
                    f"the {child.name} did not answer {url} within {timeout_s:g} s",
                    exc.stderr_tail,
                ) from None
        else:
            return time.monotonic() - started


class BacklogPlatform:
    """The simulator and a gateway whose store is filled before it starts.

    Made, it has written the config (default profile, the store in `workdir/STORE_FILE`,
    `overrides`); `fill` fills the store; `start_simulator` starts the simulator (with
    `simulator_args`) and waits for it; `start_gateway` starts the gateway without waiting, so
    the caller can watch it drain from its first moment; `gateway_ready` waits for its
    `/healthz` (start-up time). `aclose` stops both children: use it under
    `contextlib.aclosing`.
    """

    def __init__(
        self,
        workdir: Path,
        overrides: Mapping[str, Any],
        *,
        simulator_args: Sequence[str] = (),
    ) -> None:
        self.credentials = Credentials.generate()
        self.endpoints = Endpoints.allocate()
        self.store_path = workdir / STORE_FILE
        config_path = write_gateway_config(
            workdir,
            self.endpoints,
            {**overrides, "store_url": f"sqlite:///{self.store_path}"},
        )
        self.config: dict[str, Any] = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        env = self.credentials.child_env()
        self.simulator = simulator_child(self.endpoints, env, workdir, *simulator_args)
        self.gateway = gateway_child(config_path, env, workdir)
        self.platform = Platform(
            self.credentials,
            self.endpoints,
            self.config,
            self.store_path,
            self.simulator,
            self.gateway,
        )
        self.gateway_started: float | None = None

    async def aclose(self) -> None:
        """Stop both children (SIGTERM, then SIGKILL)."""
        await asyncio.to_thread(stop_children, [self.gateway, self.simulator])

    @property
    def tenant(self) -> str:
        return str(self.config["tenants"][0]["id"])

    async def fill(self, count: int) -> Backlog:
        backlog = await fill_backlog(
            self.store_path, count=count, tenant=self.tenant, seller_tax=self.credentials.user_tax
        )
        say(f"{count} queued submissions written in {backlog.seconds:.1f} s")
        return backlog

    async def start_simulator(self, session: aiohttp.ClientSession) -> None:
        self.simulator.start()
        await wait_ready(self.simulator, session, f"{self.endpoints.control_url}/_sim/health")

    def start_gateway(self) -> float:
        """Start the gateway; the monotonic time it was started."""
        self.gateway.start()
        self.gateway_started = time.monotonic()
        return self.gateway_started

    async def gateway_ready(self, session: aiohttp.ClientSession, timeout_s: float) -> float:
        """Seconds from `start_gateway` until its `/healthz` answered."""
        if self.gateway_started is None:
            raise BenchError("the gateway was never started")
        return await wait_answering(
            self.gateway,
            session,
            f"{self.endpoints.gateway_url}/healthz",
            started=self.gateway_started,
            timeout_s=timeout_s,
        )


# -- measuring the drain ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """The store and both children's CPU time at one moment of a drain."""

    at: float
    delivered: int
    waiting: int
    gateway_cpu: float | None
    simulator_cpu: float | None


@dataclass(frozen=True, slots=True)
class DrainWindow:
    """Two samples a measured rate is taken between."""

    first: Sample
    last: Sample

    @property
    def elapsed_s(self) -> float:
        return self.last.at - self.first.at

    @property
    def delivered(self) -> int:
        return self.last.delivered - self.first.delivered

    @property
    def per_s(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def cpu_s(self, which: str) -> float | None:
        before = getattr(self.first, f"{which}_cpu")
        after = getattr(self.last, f"{which}_cpu")
        return None if before is None or after is None else float(after - before)

    def cpu_per_thousand(self, which: str) -> float | None:
        """CPU seconds the child `which` (gateway, simulator) spent per 1,000 deliveries."""
        cpu = self.cpu_s(which)
        return None if cpu is None or self.delivered <= 0 else cpu / self.delivered * 1000

    def core_share(self, which: str) -> float | None:
        cpu = self.cpu_s(which)
        return None if cpu is None or self.elapsed_s <= 0 else cpu / self.elapsed_s


def steady_window(
    samples: Sequence[Sample], total: int, window: tuple[float, float] = WINDOW
) -> DrainWindow | None:
    """The first samples at or past `window[0]` and `window[1]` of `total` delivered; when the
    drain was too quick for that (a tiny backlog), the first and last samples with progress
    between them. None when no two samples saw deliveries happen."""
    low, high = (
        next((s for s in samples if s.delivered >= share * total), None) for share in window
    )
    if low is not None and high is not None and high.at > low.at:
        return DrainWindow(low, high)
    moving = [s for s in samples if s.delivered > 0]
    before = [s for s in samples if s.delivered == 0]
    first = before[-1] if before else (moving[0] if moving else None)
    if first is None or not moving or moving[-1].at <= first.at:
        return None
    return DrainWindow(first, moving[-1])


@dataclass(frozen=True, slots=True)
class DrainCheck:
    """Every queued submission delivered once: the store's rows against the platform's ledger."""

    queued: int
    #: Rows in state `delivered` once the gateway stopped.
    delivered_rows: int
    #: Of the backlog's order numbers: issued once, issued more than once, never issued.
    issued_once: int
    issued_twice: int
    missing: int
    #: The ledger's own count of order numbers with more than one live invoice.
    doubles: int

    @property
    def ok(self) -> bool:
        return (
            self.delivered_rows == self.queued
            and self.issued_once == self.queued
            and self.issued_twice == 0
            and self.missing == 0
            and self.doubles == 0
        )

    def describe(self) -> str:
        figures = (
            f"{self.delivered_rows} of {self.queued} delivered in the store; "
            f"{self.issued_once} issued once, {self.issued_twice} more than once, "
            f"{self.missing} never (ledger doubles: {self.doubles})"
        )
        return f"{figures}: {'ok' if self.ok else 'NOT EVERY SUBMISSION DELIVERED ONCE'}"


def drain_check(
    backlog: Backlog, delivered_rows: int, orders: Mapping[str, Mapping[str, Any]], doubles: int
) -> DrainCheck:
    """`DrainCheck` from the stopped store's delivered rows and the ledger's `orders`."""
    once = twice = missing = 0
    for index in range(backlog.count):
        issued = int(orders.get(backlog.order_no(index), {}).get("issued", 0))
        once += issued == 1
        twice += issued > 1
        missing += issued == 0
    return DrainCheck(backlog.count, delivered_rows, once, twice, missing, doubles)


async def read_ledger(session: aiohttp.ClientSession, control_url: str) -> Mapping[str, Any]:
    """The simulator's whole ledger (`GET /_sim/ledger`, orders included)."""
    try:
        async with session.get(
            f"{control_url}/_sim/ledger", timeout=aiohttp.ClientTimeout(total=60)
        ) as response:
            if response.status != 200:
                raise BenchError(f"the simulator's ledger answered {response.status}")
            document: Mapping[str, Any] = await response.json()
            return document
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BenchError(f"cannot read the simulator's ledger: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class DrainRun:
    """One drain run: its label and the dispatcher's rate (None: unthrottled)."""

    key: str
    rate: float | None
    backlog: int

    @property
    def label(self) -> str:
        return "unthrottled" if self.rate is None else f"throttled at {self.rate:g}/s"

    def overrides(self) -> dict[str, Any]:
        rate = UNTHROTTLED_RATE if self.rate is None else self.rate
        return {
            **DRAIN_OVERRIDES,
            "outbox.dispatcher.rate": rate,
            # A bucket as deep as a tenth of a second: no burst to speak of when throttled.
            "outbox.dispatcher.burst": max(1, round(rate / 10)) if self.rate else 1_000_000,
            "outbox.dispatcher.concurrency": DISPATCH_CONCURRENCY,
            "outbox.dispatcher.batch": DISPATCH_BATCH,
        }


def drain_runs(options: BenchOptions) -> list[DrainRun]:
    """Unthrottled on `--backlog`; throttled on as many as `--rate` delivers in `--duration`
    (at most `--backlog`), so it lasts about `--duration`."""
    throttled = max(1, min(options.backlog, round(options.rate * options.duration_s)))
    return [
        DrainRun("unthrottled", None, options.backlog),
        DrainRun("throttled", options.rate, throttled),
    ]


@dataclass
class _Watch:
    samples: list[Sample] = field(default_factory=list)
    problem: str | None = None


async def _watch_drain(
    db: sqlite3.Connection, platform: BacklogPlatform, total: int, started: float
) -> _Watch:
    """Sample the store and the children's CPU until nothing waits, the gateway exits, or
    nothing is delivered for `STALL_TIMEOUT_S`."""
    watch = _Watch()
    last_progress = started
    while True:
        by_state = await asyncio.to_thread(count_by_state, db)
        sample = Sample(
            at=time.monotonic(),
            delivered=by_state.get(SubmissionState.DELIVERED.value, 0),
            waiting=waiting(by_state),
            gateway_cpu=process_cpu_seconds(platform.gateway.pid),
            simulator_cpu=process_cpu_seconds(platform.simulator.pid),
        )
        if watch.samples and sample.delivered > watch.samples[-1].delivered:
            last_progress = sample.at
        watch.samples.append(sample)
        if sample.waiting == 0:
            return watch
        if platform.gateway.exit_code() is not None:
            watch.problem = (
                f"the gateway exited with {sample.waiting} of {total} submissions waiting; its "
                f"log ends with:\n{platform.gateway.stderr_tail()}"
            )
            return watch
        if sample.at - last_progress > STALL_TIMEOUT_S:
            watch.problem = (
                f"nothing was delivered for {STALL_TIMEOUT_S:g} s with {sample.waiting} of "
                f"{total} submissions waiting ({by_state})"
            )
            return watch
        await asyncio.sleep(SAMPLE_INTERVAL_S)


def _figure(value: float | None, unit: str, digits: int = 2) -> str:
    return "unknown" if value is None else f"{value:.{digits}f} {unit}"


def drain_target(run: DrainRun, per_s: float) -> TargetCheck:
    """The run's target: unthrottled, a delivery rate; throttled, the configured one kept."""
    if run.rate is None:
        return TargetCheck(
            "drain rate, unthrottled",
            f"{per_s:.0f} delivered/s",
            f"≥ {TARGET_DELIVERED_PER_S:,.0f}/s",
            per_s >= TARGET_DELIVERED_PER_S,
        )
    deviation = per_s / run.rate - 1
    return TargetCheck(
        f"drain rate at {run.rate:g}/s",
        f"{per_s:.1f} delivered/s ({deviation:+.1%})",
        f"within ±{RATE_TOLERANCE:.0%} of {run.rate:g}/s",
        abs(deviation) <= RATE_TOLERANCE,
    )


def _drain_notes(run: DrainRun, window: DrainWindow, backlog: Backlog) -> dict[str, str]:
    notes = {
        "backlog": f"{backlog.count} queued submissions written before the gateway started "
        f"({backlog.per_s:,.0f} rows/s)",
        "window": f"{window.delivered} deliveries in {window.elapsed_s:.2f} s, between "
        f"{window.first.delivered} and {window.last.delivered} delivered",
    }
    if run.rate is not None:
        notes["configured rate"] = f"{run.rate:g}/s"
        notes["deviation"] = f"{window.per_s / run.rate - 1:+.1%}"
    for which in ("gateway", "simulator"):
        share = window.core_share(which)
        text = (
            f"{_figure(window.cpu_per_thousand(which), 'CPU s')} per 1,000 deliveries, "
            f"{'unknown' if share is None else f'{share:.0%}'} of one core"
        )
        if share is not None and share >= CPU_BOUND_SHARE:
            text += f"; the {which} is CPU-bound here and bounds this rate"
        notes[f"{which} CPU"] = text
    return notes


async def _drain_run(
    options: BenchOptions, parent: Path, run: DrainRun
) -> tuple[Row, TargetCheck | None, list[str]]:
    problems: list[str] = []
    with scratch_dir(
        "bench", f"invoice-gateway-bench-drain-{run.key}-", keep=options.keep, parent=parent
    ) as workdir:
        async with (
            aiohttp.ClientSession() as session,
            contextlib.aclosing(
                BacklogPlatform(workdir, run.overrides(), simulator_args=("--issue-delay", "0"))
            ) as platform,
        ):
            backlog = await platform.fill(run.backlog)
            await platform.start_simulator(session)
            with reading(platform.store_path) as db:
                started = platform.start_gateway()
                watcher = asyncio.create_task(_watch_drain(db, platform, run.backlog, started))
                try:
                    startup_s = await platform.gateway_ready(session, STALL_TIMEOUT_S)
                    watch = await watcher
                finally:
                    if not watcher.done():
                        watcher.cancel()
                        await asyncio.gather(watcher, return_exceptions=True)
            if watch.problem is not None:
                problems.append(f"{run.label}: {watch.problem}")
            ledger = await read_ledger(session, platform.endpoints.control_url)
        with reading(platform.store_path) as db:
            by_state = count_by_state(db)
    check = drain_check(
        backlog,
        by_state.get(SubmissionState.DELIVERED.value, 0),
        ledger.get("orders", {}),
        int(ledger.get("totals", {}).get("doubles", 0)),
    )
    if not check.ok:
        problems.append(f"{run.label}: {check.describe()}")
    window = steady_window(watch.samples, run.backlog)
    if window is None:
        problems.append(f"{run.label}: no two samples saw the backlog drain; no rate measured")
        window = DrainWindow(watch.samples[0], watch.samples[0])
    notes = _drain_notes(run, window, backlog)
    notes["start-up"] = f"{startup_s:.2f} s until /healthz answered"
    notes["delivery check"] = check.describe()
    calls = ledger.get("counters", {}).get("calls", {})
    notes["platform calls"] = ", ".join(f"{name}: {n}" for name, n in sorted(calls.items()))
    load = LoadResult(
        generator="the gateway's dispatcher",
        elapsed_s=window.elapsed_s,
        statuses={200: window.delivered},
        socket_errors={},
        outcomes={},
        latency_p50_ms=None,
        latency_p99_ms=None,
    )
    row = Row(
        label=run.label,
        settings={
            "rate": "unlimited" if run.rate is None else f"{run.rate:g}/s",
            "concurrency": str(DISPATCH_CONCURRENCY),
            "backlog": str(run.backlog),
        },
        load=load,
        good_status=200,
        durability=DurabilityCheck(check.delivered_rows, run.backlog),
        notes=notes,
    )
    say(f"{run.label}: {window.per_s:.1f} delivered/s; {check.describe()}")
    return row, None if window.delivered <= 0 else drain_target(run, window.per_s), problems


@scenario(
    "drain",
    "backlog drain rate: queued submissions written before the gateway starts, delivered by "
    "the dispatcher unthrottled (target >= 2,000/s) and at --rate (target within 5 %)",
)
async def drain(options: BenchOptions) -> Report:
    parent, environment = scenario_environment(options)
    environment["dispatcher"] = (
        f"concurrency {DISPATCH_CONCURRENCY}, batch {DISPATCH_BATCH}; simulator --issue-delay 0"
    )
    environment["measured"] = (
        f"store rows by state every {SAMPLE_INTERVAL_S:g} s; the rate between "
        f"{WINDOW[0]:.0%} and {WINDOW[1]:.0%} of the backlog delivered"
    )
    report = Report("drain", "delivered", environment)
    for run in drain_runs(options):
        row, target, problems = await _drain_run(options, parent, run)
        report.rows.append(row)
        if target is not None:
            report.targets.append(target)
        report.problems += problems
    return report
