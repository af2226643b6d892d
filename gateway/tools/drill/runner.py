"""Runs a drill: simulator (or a staging upstream behind the fault relay), a real gateway
process, the integrator's traffic, the scenario's steps, then the settle and the ledger check.

    start children → traffic + steps (timeline) → traffic stops → the client retries what is
    unsettled → the outbox drains → the platform finishes issuing → export + ledger → check

Chaos tests run the same engine with steps of their own (store locks, clock jumps, random
kills): `DrillOptions.extra_steps`, `gateway_env`, `store_dir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from gateway.tools.children import (
    PROFILE,
    Child,
    Credentials,
    Endpoints,
    SimulatorControl,
    ToolError,
    gateway_child,
    simulator_child,
    stop_children,
    wait_ready,
    write_gateway_config,
)
from gateway.tools.drill.checks import Check, Issued, check
from gateway.tools.drill.integrator import Book, Integrator
from gateway.tools.drill.relay import FaultRelay
from gateway.tools.drill.scenarios import DrillScenario, Step
from gateway.tools.loadgen import QUERY_OPERATION, SERVICES_PATH, InvoiceFactory, send_operation

#: Gateway settings for drills on top of the default profile: quick probes and back-off, a
#: fast drain, so a drill takes a minute (production keeps the profile's values).
DRILL_OVERRIDES: Final[Mapping[str, Any]] = {
    "resilience.probe.interval": "1s",
    "resilience.probe.timeout": "1s",
    "resilience.probe.healthy_threshold": 2,
    "resilience.breaker.reset_timeout": "3s",
    "outbox.lease": "10s",
    "outbox.backoff": {"base": "200ms", "cap": "2s"},
    "outbox.dispatcher.rate": 200,
    "outbox.dispatcher.burst": 50,
    "outbox.dispatcher.poll_interval": "100ms",
    # A delivery whose result could not be recorded (store full or locked) is reconciled after
    # the next sweep: seconds, not the profile's minute.
    "outbox.sweep_interval": "2s",
}
#: Outbox states still waiting for the dispatcher.
WAITING_STATES: Final = "queued,delivering,unknown"
#: The simulator's time from accepting an invoice to issuing it.
ISSUE_DELAY_S: Final = 0.5
STATUS_EVERY_S: Final = 5.0
ISSUING_TIMEOUT_S: Final = 15.0
#: Order numbers per lookup against a staging upstream, and the statuses that mean issued (2)
#: or being issued (20).
LOOKUP_BATCH: Final = 10
LIVE_STATUSES: Final = frozenset({"2", "20"})
#: The drill's own tenant on a staging run (its key is made up per run).
DRILL_TENANT: Final = "drill"
TENANT_KEY_ENV: Final = "GATEWAY_DRILL_API_KEY"
STAGING_ENV: Final = ("NUONUO_APP_KEY", "NUONUO_APP_SECRET", "NUONUO_USER_TAX")


class DrillError(ToolError):
    """The drill could not run (a child did not start, an API did not answer): the message
    says what to do."""


class Platform(Protocol):
    """The platform side of a drill: where faults go (the simulator's control API or the fault
    relay) and where the check learns what was issued (the simulator's ledger or lookups)."""

    async def add_fault(self, rule: Mapping[str, Any]) -> str: ...

    async def settled(self) -> bool:
        """Nothing is still being issued."""
        ...

    async def issued(self, book: Book) -> Issued:
        """Live invoices per order number of `book`, once the drill is over."""
        ...


@dataclass
class DrillOptions:
    scenario: DrillScenario
    rate: float = 40.0
    seed: int | None = None
    workdir: Path | None = None
    #: Chaos additions: more steps, environment for the gateway (e.g. libfaketime), where the
    #: store lives (e.g. a small filesystem), more gateway settings.
    extra_steps: Sequence[Step] = ()
    gateway_env: Mapping[str, str] = field(default_factory=dict)
    store_dir: Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    #: How long the client keeps retrying unsettled orders, and the outbox may take to drain,
    #: after the traffic stopped.
    settle_timeout_s: float = 90.0
    #: A staging upstream to drill against instead of the simulator (behind the fault relay),
    #: and the gateway config to use there (the default profile otherwise).
    upstream: str | None = None
    config: Path | None = None
    #: The staging platform's token endpoint, when not the config's `upstream.auth.token_url`.
    token_url: str | None = None
    #: Whether the simulator answers a reused order number E9106 (on) or issues it again (off,
    #: the default: only the gateway stands between a resend and a second invoice).
    dedup: bool = False


@dataclass
class Event:
    at_s: float
    text: str


@dataclass
class DrillResult:
    scenario: DrillScenario
    options: DrillOptions
    started_wall: float
    book: Book
    check: Check
    events: list[Event]
    #: Seconds from the platform's recovery until the last queued submission was delivered
    #: (None: nothing was queued).
    drain_s: float | None
    queued_peak: int
    crashes: int
    #: Exits of the gateway nobody asked for (each fails the drill).
    unexpected_exits: list[str]
    duration_s: float
    #: "the simulator" or "staging upstream URL (through the fault relay)".
    against: str
    #: Platform fault rules that fired, by kind.
    faults_hit: Mapping[str, int]
    #: Seconds from the platform's recovery until nothing was waiting in the outbox (None: it
    #: never was empty while the drill watched).
    backlog_cleared_s: float | None = None

    @property
    def passed(self) -> bool:
        return self.check.passed and not self.unexpected_exits


class DrillStage:
    """What steps act on: the platform, the gateway process, the timeline."""

    def __init__(
        self,
        workdir: Path,
        platform: Platform,
        gateway_config: Path,
        gateway_env: dict[str, str],
        endpoints: Endpoints,
        session: aiohttp.ClientSession,
        note: Callable[[str], None],
        rng: random.Random,
    ) -> None:
        self.workdir = workdir
        self.platform = platform
        self.endpoints = endpoints
        self.rng = rng
        self.note = note
        self._config = gateway_config
        self._env = gateway_env
        self._session = session
        self._starts = 0
        self.crashes = 0
        self.unexpected_exits: list[str] = []
        self.gateway = self._new_gateway()
        self._restarting = False
        #: Set once the traffic starts: the client's book (steps with clients of their own add
        #: their orders to it, so the ledger check covers them) and its credentials.
        self.book = Book()
        self.credentials: Credentials | None = None

    def _new_gateway(self) -> Child:
        self._starts += 1
        name = "gateway" if self._starts == 1 else f"gateway-{self._starts}"
        return gateway_child(self._config, self._env, self.workdir, name)

    async def start_gateway(self) -> None:
        self.gateway.start()
        await wait_ready(self.gateway, self._session, f"{self.endpoints.gateway_url}/healthz")

    async def crash_gateway(self) -> None:
        """kill -9, then start again on the same config and store, and wait until it is ready."""
        self._restarting = True
        try:
            self.gateway.kill()
            self.gateway.wait(5.0)
            self.crashes += 1
            self.gateway = self._new_gateway()
            await self.start_gateway()
        finally:
            self._restarting = False

    async def watch(self) -> None:
        """A gateway exit nobody asked for fails the drill; restart it so the check can run."""
        while True:
            await asyncio.sleep(0.2)
            code = self.gateway.exit_code()
            if code is None or self._restarting:
                continue
            tail = self.gateway.stderr_tail(5)
            self.unexpected_exits.append(f"exit code {code}: {tail}")
            self.note(f"the gateway exited by itself (exit code {code}); restarting it")
            self._restarting = True
            try:
                self.gateway = self._new_gateway()
                await self.start_gateway()
            finally:
                self._restarting = False

    async def _admin_get(self, path: str, timeout_s: float) -> str:
        """A `GET /admin/v1{path}` as the drill's operator; the body."""
        url = f"http://127.0.0.1:{self.endpoints.admin_port}/admin/v1{path}"
        headers = {"Authorization": f"Bearer {self._env['GATEWAY_ADMIN_TOKEN']}"}
        async with self._session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            response.raise_for_status()
            return await response.text()

    async def waiting(self) -> int | None:
        """Submissions the dispatcher still has to deliver; None when the gateway is down."""
        try:
            text = await self._admin_get(f"/submissions/count?state={WAITING_STATES}", 10)
            return int(json.loads(text)["count"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            return None

    async def export(self) -> list[dict[str, Any]]:
        # Unmasked: the check compares whole bodies (the drill's own, made-up invoices).
        text = await self._admin_get("/export?unmasked=1&reason=drill%20check", 120)
        return [json.loads(line) for line in text.splitlines() if line.strip()]


class SimulatorPlatform:
    """The simulator's control API."""

    def __init__(self, session: aiohttp.ClientSession, control_url: str) -> None:
        self._session = session
        self._url = control_url.rstrip("/") + "/_sim"
        self._control = SimulatorControl(session, control_url)

    async def add_fault(self, rule: Mapping[str, Any]) -> str:
        return await self._control.add_fault(rule)

    async def ledger(self, *, invoices: bool) -> dict[str, Any]:
        params = {} if invoices else {"invoices": "0"}
        async with self._session.get(f"{self._url}/ledger", params=params) as response:
            response.raise_for_status()
            return dict(await response.json())

    async def settled(self) -> bool:
        ledger = await self.ledger(invoices=False)
        return int(ledger.get("totals", {}).get("issuing", 0)) == 0

    async def issued(self, book: Book) -> Issued:
        del book  # the ledger knows every order
        return Issued.from_ledger(await self.ledger(invoices=True))


class StagingPlatform:
    """A staging upstream behind the fault relay; what was issued is looked up, order by
    order, through the gateway (`queryInvoiceResult`), as an integrator would."""

    def __init__(
        self, relay: FaultRelay, session: aiohttp.ClientSession, gateway_url: str, api_key: str
    ) -> None:
        self._relay = relay
        self._session = session
        self._url = gateway_url.rstrip("/") + SERVICES_PATH
        self._api_key = api_key

    async def add_fault(self, rule: Mapping[str, Any]) -> str:
        return await self._relay.add_fault(rule)

    async def settled(self) -> bool:
        return True  # lookups count invoices still issuing as issued

    async def issued(self, book: Book) -> Issued:
        await self._relay.clear_faults()
        by_order: dict[str, int] = {}
        order_nos = list(book.orders)
        for start in range(0, len(order_nos), LOOKUP_BATCH):
            batch = order_nos[start : start + LOOKUP_BATCH]
            result = await send_operation(
                self._session,
                self._url,
                self._api_key,
                QUERY_OPERATION,
                {"serialNos": [], "orderNos": batch, "isOfferInvoiceDetail": "0"},
                kind="read",
                limit=aiohttp.ClientTimeout(total=30),
            )
            found = result.document.get("result") if isinstance(result.document, dict) else None
            if result.status != 200 or not isinstance(found, list):
                raise DrillError(
                    f"looking up issued invoices failed ({result.status} {result.detail}); the "
                    "ledger check needs queryInvoiceResult to work on the staging upstream"
                )
            for invoice in found:
                if isinstance(invoice, dict) and str(invoice.get("status")) in LIVE_STATUSES:
                    key = str(invoice.get("orderNo"))
                    by_order[key] = by_order.get(key, 0) + 1
        return Issued(
            by_order=by_order,
            doubles=sum(1 for n in by_order.values() if n > 1),
            duplicates_rejected=0,
            faults_hit=self._relay.faults_hit,
        )


def staging_env(generated: Credentials) -> tuple[dict[str, str], Credentials]:
    """For a staging run: the platform credentials from our environment (the business's own),
    and a tenant key made up for the drill's tenant."""
    missing = [name for name in STAGING_ENV if not os.environ.get(name)]
    if missing:
        raise DrillError(
            f"a drill against a staging upstream signs with your staging credentials; set "
            f"{', '.join(missing)} (see config/gateway.yaml)"
        )
    credentials = Credentials(
        app_key=os.environ["NUONUO_APP_KEY"],
        app_secret=os.environ["NUONUO_APP_SECRET"],
        user_tax=os.environ["NUONUO_USER_TAX"],
        tenant_key=generated.tenant_key,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env[TENANT_KEY_ENV] = credentials.tenant_key
    env["PYTHONUNBUFFERED"] = "1"
    return env, credentials


def clock(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"


class Drill:
    def __init__(self, options: DrillOptions, out: Callable[[str], None]) -> None:
        self.options = options
        self.scenario = options.scenario.with_steps(*options.extra_steps)
        self._out = out
        self._started = time.monotonic()
        self.started_wall = time.time()
        self.events: list[Event] = []
        self.queued_peak = 0
        self.backlog_cleared_s: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def note(self, text: str) -> None:
        event = Event(self.elapsed(), text)
        self.events.append(event)
        self._out(f"{clock(event.at_s)}  {text}")

    async def run(self, workdir: Path) -> DrillResult:
        options = self.options
        credentials = Credentials.generate()
        endpoints = Endpoints.allocate()
        env = credentials.child_env()
        overrides: dict[str, Any] = {
            **DRILL_OVERRIDES,
            **self.scenario.overrides,
            **options.overrides,
            "store_url": f"sqlite:///{(options.store_dir or workdir) / 'gateway.db'}",
        }
        relay: FaultRelay | None = None
        if options.upstream is not None:
            env, credentials = staging_env(credentials)
            relay = FaultRelay(options.upstream)
            overrides["upstream.url"] = await relay.start()
            if options.token_url is not None:
                overrides["upstream.auth.token_url"] = options.token_url
            overrides["tenants"] = [{"id": DRILL_TENANT, "api_key": {"env": TENANT_KEY_ENV}}]
        env["GATEWAY_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
        try:
            config = write_gateway_config(
                workdir,
                endpoints,
                overrides,
                profile=options.config or PROFILE,
                simulator=relay is None,
            )
        except ToolError:
            if relay is not None:
                await relay.close()
            raise
        children: list[Child] = []
        if relay is None:
            seed = ["--seed", str(options.seed)] if options.seed is not None else []
            children.append(
                simulator_child(
                    endpoints,
                    env,
                    workdir,
                    "--issue-delay",
                    str(ISSUE_DELAY_S),
                    *seed,
                    dedup=options.dedup,
                )
            )
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            platform: Platform = (
                SimulatorPlatform(session, endpoints.control_url)
                if relay is None
                else StagingPlatform(relay, session, endpoints.gateway_url, credentials.tenant_key)
            )
            stage = DrillStage(
                workdir,
                platform,
                config,
                {**env, **options.gateway_env},
                endpoints,
                session,
                self.note,
                random.Random(options.seed),
            )
            try:
                for child in children:
                    child.start()
                    await wait_ready(child, session, f"{endpoints.control_url}/_sim/health")
                await stage.start_gateway()
                against = (
                    "the simulator"
                    if relay is None
                    else f"the staging upstream {options.upstream} (through the fault relay)"
                )
                return await self._run(stage, platform, session, credentials, against)
            finally:
                stop_children([stage.gateway, *children])
                if relay is not None:
                    await relay.close()

    async def _run(
        self,
        stage: DrillStage,
        platform: Platform,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        against: str,
    ) -> DrillResult:
        options, scenario = self.options, self.scenario
        integrator = Integrator(
            session,
            stage.endpoints.gateway_url,
            credentials.tenant_key,
            InvoiceFactory(credentials.user_tax, seed=options.seed),
            rate=options.rate,
            seed=options.seed,
        )
        self._integrator = integrator
        stage.book, stage.credentials = integrator.book, credentials
        # The timeline counts from the first invoice: scenario times are traffic times.
        self._started, self.started_wall = time.monotonic(), time.time()
        self.note(
            f"{'simulator and ' if 'simulator' in against else ''}gateway up; the client sends "
            f"{options.rate:g} invoices/s for {scenario.traffic_s:g} s"
        )
        stop = asyncio.Event()
        background = [
            asyncio.create_task(stage.watch()),
            asyncio.create_task(self._status(stage)),
        ]
        traffic = asyncio.create_task(integrator.run(stop))
        try:
            for step in scenario.steps:
                await self._until(step.at_s)
                self.note(step.what)
                await step.act(stage)
            await self._until(scenario.traffic_s)
            stop.set()
            await traffic
            book = integrator.book
            self.note(f"traffic stopped: {len(book.orders)} invoices submitted")
            unsettled = await integrator.finish(options.settle_timeout_s)
            if unsettled:
                self.note(f"{unsettled} invoices never got a settling answer")
            await self._drained(stage)
            await self._issued(platform)
            rows = await stage.export()
            issued = await platform.issued(integrator.book)
        finally:
            stop.set()
            for task in [traffic, *background]:
                task.cancel()
            await asyncio.gather(traffic, *background, return_exceptions=True)
        outcome = check(integrator.book, rows, issued)
        self.note(outcome.summary())
        return DrillResult(
            scenario,
            options,
            self.started_wall,
            integrator.book,
            outcome,
            self.events,
            self._drain_s(rows),
            self.queued_peak,
            stage.crashes,
            stage.unexpected_exits,
            self.elapsed(),
            against,
            issued.faults_hit,
            self.backlog_cleared_s,
        )

    async def _until(self, at_s: float) -> None:
        delay = at_s - self.elapsed()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _status(self, stage: DrillStage) -> None:
        last_told = 0.0
        while True:
            waiting = await stage.waiting()
            now = self.elapsed()
            if waiting is not None:
                self.queued_peak = max(self.queued_peak, waiting)
                healthy = self.scenario.healthy_from_s
                if waiting == 0 and self.backlog_cleared_s is None and now >= healthy:
                    self.backlog_cleared_s = now - healthy
            if now - last_told >= STATUS_EVERY_S:
                last_told = now
                book = self._integrator.book
                self._out(
                    f"{clock(now)}  … {len(book.orders)} submitted, "
                    f"{book.outcomes['forwarded']} forwarded, {book.outcomes['queued']} queued, "
                    f"outbox waiting: {'gateway down' if waiting is None else waiting}"
                )
            await asyncio.sleep(0.25)

    async def _drained(self, stage: DrillStage) -> None:
        deadline = time.monotonic() + self.options.settle_timeout_s
        told = 0.0
        while time.monotonic() < deadline:
            waiting = await stage.waiting()
            if waiting == 0:
                self.note("the outbox is empty: every queued submission is final")
                return
            if time.monotonic() - told >= STATUS_EVERY_S:
                told = time.monotonic()
                self.note(f"waiting for the outbox to drain: {waiting} still to deliver")
            await asyncio.sleep(0.25)
        self.note(f"the outbox did not drain within {self.options.settle_timeout_s:g} s")

    async def _issued(self, platform: Platform) -> None:
        deadline = time.monotonic() + ISSUING_TIMEOUT_S
        while time.monotonic() < deadline:
            if await platform.settled():
                return
            await asyncio.sleep(0.2)

    def _drain_s(self, rows: list[dict[str, Any]]) -> float | None:
        delivered = [
            float(row["delivered_at"])
            for row in rows
            if row.get("acknowledged") and row.get("delivered_at") is not None
        ]
        if not delivered:
            return None
        healthy_at = self.started_wall + self.scenario.healthy_from_s
        return max(0.0, max(delivered) - healthy_at)


async def run_drill(
    options: DrillOptions, out: Callable[[str], None] = print, workdir: Path | None = None
) -> DrillResult:
    """Run one drill in `workdir` (a fresh temporary directory otherwise, removed after)."""
    import shutil
    import tempfile

    own = workdir is None
    path = workdir or Path(tempfile.mkdtemp(prefix="invoice-gateway-drill-"))
    try:
        return await Drill(options, out).run(path)
    finally:
        if own:
            with contextlib.suppress(OSError):
                shutil.rmtree(path)
