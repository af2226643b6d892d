"""The PostgreSQL store stopping and starting under load, and missing when the gateway starts.

The gateway's store is a database on a private server (tests/support/pg_server.py), so the
shared one stays up for every other test. While PostgreSQL is down the gateway must refuse
submissions with 503 `store-unavailable` (never a 202 it cannot keep), fail `/readyz`, keep
answering `/healthz` and reads (they need no store), and show `gateway_store_up 0`; once
PostgreSQL is back it recovers by itself, no restart. The simulator does not deduplicate order
numbers, so the ledger check proves every acknowledged submission was issued exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from gateway.tools.drill.integrator import Order
from gateway.tools.drill.runner import DrillStage
from gateway.tools.drill.scenarios import DrillScenario, Step, fault
from gateway.tools.loadgen import (
    QUERY_OPERATION,
    SERVICES_PATH,
    SUBMIT_OPERATION,
    InvoiceFactory,
    RequestKind,
    Result,
    read_answer,
)
from tests.chaos.drills import ChaosMode, ChaosRun, assert_passed, seed_for, step
from tests.support.pg_server import PrivateServer
from tests.support.processes import (
    ManagedProcess,
    base_env,
    free_port,
    gateway_command,
    managed,
    wait_until,
    write_gateway_config,
)

STORE_UNAVAILABLE: Final = "store-unavailable"
#: Submissions of the test's own client while PostgreSQL is down (answered 503, then retried
#: with the same idempotency key once it is back).
PROBES: Final = 6
#: A read of the test's own client every so often, all through the run.
READ_EVERY_S: Final = 0.2
#: Answers to requests already admitted when PostgreSQL stopped may still arrive (a forwarded
#: submission is answered truthfully though its result cannot be recorded); after this, none.
IN_FLIGHT_GRACE_S: Final = 1.0
#: Bounds of the waits on the gateway (the metrics are sampled every 2 s).
GATEWAY_WAIT_S: Final = 10.0
RECOVERY_WAIT_S: Final = 30.0
RETRY_ROUNDS: Final = 40
#: A 503 must come at once, not after the store's statement timeout (10 s by default).
PROMPT_S: Final = 5.0
#: How long a gateway that cannot reach its store may take to give up at start.
START_FAILURE_S: Final = 20.0
#: Deliveries per second of the backlog, as a share of the client's rate (the drills' 200 a
#: second would empty it before PostgreSQL stops).
DRAIN_SHARE: Final = 0.4


def _is_2xx(status: int) -> bool:
    return 200 <= status < 300


@dataclass
class Outage:
    """Stops and starts the private PostgreSQL server as drill steps, and records what the
    gateway did meanwhile."""

    run: ChaosRun
    server: PrivateServer
    phase: str = "up"
    #: Reads of the test's own client by phase, and their statuses.
    reads: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: Answers to the probe submissions sent while PostgreSQL was down.
    probe_answers: list[Result] = field(default_factory=list)
    probe_orders: list[Order] = field(default_factory=list)
    #: The drill client's answers by status while PostgreSQL was down (after the grace).
    traffic_while_down: Counter[int] = field(default_factory=Counter)
    #: Submissions waiting in the outbox (queued, delivering, unknown) as PostgreSQL stopped.
    waiting_at_stop: int | None = None
    readyz_down: tuple[int, Any] | None = None
    healthz_down: int = 0
    store_up_down: float | None = None
    #: Seconds from PostgreSQL accepting connections again to `/readyz` ready, to the first
    #: new submission acknowledged, to `gateway_store_up 1`.
    ready_after_s: float | None = None
    first_2xx_after_s: float | None = None
    store_up_after_s: float | None = None
    #: Answers to the probes' retries once PostgreSQL was back (the settling one of each).
    retried: list[Result] = field(default_factory=list)
    _snapshot: Counter[int] = field(default_factory=Counter)
    _factory: InvoiceFactory | None = None

    # -- steps ----------------------------------------------------------------------------

    def reader(self, at_s: float) -> Step:
        async def act(stage: DrillStage) -> None:
            self.run.background(self._read_all_along(stage))

        return step(at_s, f"a client reads invoices every {READ_EVERY_S:g} s, all along", act)

    def stop(self, at_s: float) -> Step:
        async def act(stage: DrillStage) -> None:
            self.waiting_at_stop = await stage.waiting()
            self.phase = "stopping"
            await asyncio.to_thread(self.server.stop, "fast")
            self.phase = "down"
            stage.note(
                f"PostgreSQL is down (fast shutdown finished); {self.waiting_at_stop} "
                "acknowledged submissions were waiting in the outbox"
            )
            await asyncio.sleep(IN_FLIGHT_GRACE_S)  # answers to requests admitted before it
            self._snapshot = Counter(stage.book.statuses)
            async with aiohttp.ClientSession() as session:
                await self._while_down(stage, session)

        return step(at_s, "PostgreSQL stops (fast shutdown) under load", act)

    def start(self, at_s: float) -> Step:
        async def act(stage: DrillStage) -> None:
            self.traffic_while_down = Counter(stage.book.statuses)
            self.traffic_while_down.subtract(self._snapshot)
            self.phase = "starting"
            await asyncio.to_thread(self.server.start)
            self.phase = "back"
            started = time.monotonic()
            stage.note("PostgreSQL accepts connections again")
            async with aiohttp.ClientSession() as session:
                await self._after(stage, session, started)

        return step(at_s, "PostgreSQL starts again; the gateway is not restarted", act)

    # -- what is checked ------------------------------------------------------------------

    async def _while_down(self, stage: DrillStage, session: aiohttp.ClientSession) -> None:
        gateway = stage.endpoints.gateway_url
        for _ in range(PROBES):
            order_no, body = self._new_order(stage)
            order = Order(order_no, body)
            stage.book.orders[order_no] = order  # the ledger check covers it
            self.probe_orders.append(order)
            result = await self._submit(stage, session, order)
            self.probe_answers.append(result)
        self.readyz_down = await _poll(
            lambda: _get(session, f"{gateway}/readyz"),
            lambda answer: answer[0] == 503,
            GATEWAY_WAIT_S,
        )
        self.healthz_down = (await _get(session, f"{gateway}/healthz"))[0]
        metrics = f"http://127.0.0.1:{stage.endpoints.admin_port}/metrics"
        self.store_up_down = await _poll(
            lambda: _store_up(session, metrics), lambda value: value == 0, GATEWAY_WAIT_S
        )
        stage.note(
            f"while down: probes answered {sorted(r.status for r in self.probe_answers)}, "
            f"/readyz {self.readyz_down and self.readyz_down[0]}, /healthz {self.healthz_down}, "
            f"gateway_store_up {self.store_up_down}"
        )

    async def _after(
        self, stage: DrillStage, session: aiohttp.ClientSession, started: float
    ) -> None:
        gateway = stage.endpoints.gateway_url
        ready = await _poll(
            lambda: _get(session, f"{gateway}/readyz"),
            lambda answer: answer[0] == 200,
            RECOVERY_WAIT_S,
        )
        if ready is not None:
            self.ready_after_s = time.monotonic() - started
        order_no, body = self._new_order(stage)
        fresh = Order(order_no, body)
        stage.book.orders[order_no] = fresh
        if await self._settle(stage, session, fresh) is not None:
            self.first_2xx_after_s = time.monotonic() - started
        for order in self.probe_orders:  # the clients retry with the same idempotency key
            settled = await self._settle(stage, session, order)
            if settled is not None:
                self.retried.append(settled)
        metrics = f"http://127.0.0.1:{stage.endpoints.admin_port}/metrics"
        if await _poll(lambda: _store_up(session, metrics), lambda v: v == 1, GATEWAY_WAIT_S):
            self.store_up_after_s = time.monotonic() - started
        stage.note(
            f"after the restart: /readyz ready after {_seconds(self.ready_after_s)}, first new "
            f"submission acknowledged after {_seconds(self.first_2xx_after_s)}, "
            f"{len(self.retried)}/{len(self.probe_orders)} refused probes acknowledged on retry"
        )

    async def _settle(
        self, stage: DrillStage, session: aiohttp.ClientSession, order: Order
    ) -> Result | None:
        """Send `order` until the gateway acknowledges it (bounded); the settling answer."""
        deadline = time.monotonic() + RECOVERY_WAIT_S
        for _ in range(RETRY_ROUNDS):
            result = await self._submit(stage, session, order)
            if order.settled is not None:
                return result
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)  # the client's back-off
        return None

    async def _submit(
        self, stage: DrillStage, session: aiohttp.ClientSession, order: Order
    ) -> Result:
        assert stage.credentials is not None
        order.sends += 1
        result = await _post(
            session,
            stage.endpoints.gateway_url,
            stage.credentials.tenant_key,
            SUBMIT_OPERATION,
            order.body,
            order_no=order.order_no,
        )
        stage.book.record(order, result)
        return result

    async def _read_all_along(self, stage: DrillStage) -> None:
        assert stage.credentials is not None
        async with aiohttp.ClientSession() as session:
            while True:  # cancelled when the drill ends
                known = list(stage.book.orders)[-2:]
                if known:
                    phase = self.phase
                    result = await _post(
                        session,
                        stage.endpoints.gateway_url,
                        stage.credentials.tenant_key,
                        QUERY_OPERATION,
                        {"serialNos": [], "orderNos": known, "isOfferInvoiceDetail": "0"},
                    )
                    if phase == self.phase:  # not across a change of phase
                        self.reads[(phase, result.status)] += 1
                await asyncio.sleep(READ_EVERY_S)

    def _new_order(self, stage: DrillStage) -> tuple[str, dict[str, Any]]:
        if self._factory is None:
            assert stage.credentials is not None
            prefix = f"PG{self.run.seed:08d}"
            self._factory = InvoiceFactory(stage.credentials.user_tax, prefix=prefix)
        return self._factory.submission()


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


async def _post(
    session: aiohttp.ClientSession,
    gateway: str,
    api_key: str,
    operation: str,
    body: dict[str, Any],
    *,
    order_no: str | None = None,
) -> Result:
    kind: RequestKind = "read" if order_no is None else "submit"
    headers = {
        "method": operation,
        "X-Api-Key": api_key,
        "Content-Type": "application/json; charset=utf-8",
    }
    if order_no is not None:
        headers["Idempotency-Key"] = order_no
    started = time.perf_counter()
    try:
        async with session.post(
            gateway + SERVICES_PATH,
            data=json.dumps(body, ensure_ascii=False).encode(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=15),
        ) as response:
            payload = await response.read()
            status, head = response.status, response.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(kind, "no answer", 0, time.perf_counter() - started, detail=repr(exc))
    latency = time.perf_counter() - started
    return read_answer(kind, status, head, payload, latency, order_no=order_no)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            text = await response.text()
            return response.status, text
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


async def _store_up(session: aiohttp.ClientSession, url: str) -> float | None:
    status, text = await _get(session, url)
    if status != 200:
        return None
    for line in str(text).splitlines():
        if line.startswith("gateway_store_up "):
            return float(line.split()[1])
    return None


async def _poll(read: Any, good: Any, timeout_s: float, interval_s: float = 0.2) -> Any:
    """`await read()` until `good(value)`; the value, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if good(value):
            return value
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(interval_s)


async def test_postgres_stops_and_starts_under_load_and_nothing_is_lost(
    tmp_path: Path, mode: ChaosMode, run_index: int
) -> None:
    """PostgreSQL stops (fast shutdown) mid-load and starts again: 503 store-unavailable while
    it is down (never a 202), `/readyz` down and `/healthz` up, reads answered, the gateway
    recovers without a restart, and every acknowledged submission is issued exactly once."""
    run = ChaosRun("postgres-outage", seed_for(7, run_index), mode, tmp_path / "drill")
    at = run.at
    with PrivateServer() as server:
        server.start()
        store_url = server.create_database("outbox")
        outage = Outage(run, server)
        steps = (
            outage.reader(at(1)),
            fault(
                at(2),
                "the platform answers 503 to submissions for {duration_s:g} s: they are queued",
                kind="http_error",
                status=503,
                operations=[SUBMIT_OPERATION],
                duration_s=at(4),
            ),
            outage.stop(at(8)),
            outage.start(at(18)),
        )
        scenario = DrillScenario(
            "chaos-postgres",
            "A backlog is queued, then the outbox's PostgreSQL stops under load and starts again.",
            mode.traffic_s,
            steps,
            at(6),
            # Reads keep a breaker of their own, and the backlog drains slowly enough to be
            # waiting (and being delivered) when PostgreSQL stops.
            {
                "resilience.breaker.scope": "operation",
                "outbox.dispatcher.rate": round(mode.rate * DRAIN_SHARE),
                "outbox.dispatcher.burst": 5,
            },
        )
        result = await run.drill(scenario, gateway_env={"GATEWAY_STORE_URL": store_url})

    # A backlog acknowledged with 202 sat in PostgreSQL while it was down.
    assert result.check.queued > 0, "nothing was queued: the backlog part proves nothing"
    assert outage.waiting_at_stop, "the backlog was gone before PostgreSQL stopped"
    # While PostgreSQL was down: nothing acknowledged, every submission told to come back.
    assert len(outage.probe_answers) == PROBES
    for answer in outage.probe_answers:
        assert (503, STORE_UNAVAILABLE) == (answer.status, answer.problem), answer
        assert answer.latency_s < PROMPT_S, answer
    down = outage.traffic_while_down
    assert 0 == sum(n for status, n in down.items() if _is_2xx(status)), down
    assert down[503] > PROBES, f"the load saw no 503 while PostgreSQL was down: {down}"
    assert {503} >= {status for status, n in down.items() if n > 0}, down
    assert result.book.problems[STORE_UNAVAILABLE] >= down[503], result.book.problems
    assert outage.readyz_down is not None, "/readyz stayed ready while PostgreSQL was down"
    assert 200 == outage.healthz_down
    assert 0 == outage.store_up_down, "gateway_store_up never showed 0"
    reads_down = {status: n for (phase, status), n in outage.reads.items() if phase == "down"}
    assert reads_down.get(200, 0) > 0, outage.reads
    assert {200} == set(reads_down), outage.reads
    # Back by itself, and the refused submissions taken on when retried with the same key.
    assert outage.ready_after_s is not None, "/readyz not ready again without a restart"
    assert outage.first_2xx_after_s is not None, "no new submission acknowledged after restart"
    assert outage.store_up_after_s is not None, "gateway_store_up did not return to 1"
    assert len(outage.retried) == PROBES, "a submission refused while down was never taken on"
    assert all(r.accepted for r in outage.retried), outage.retried
    assert not any(status >= 500 and status != 503 for status in result.book.statuses)
    # The ledger: every acknowledged submission issued exactly once, none lost, no resend.
    assert_passed(run, result)
    run.out(
        f"postgres-outage: {outage.waiting_at_stop} acknowledged submissions waiting as "
        f"PostgreSQL stopped; {down[503] - PROBES} client submissions and {PROBES} probes answered "
        f"503 while down; /readyz ready {outage.ready_after_s:.2f} s after PostgreSQL was back, "
        f"first new submission acknowledged after {outage.first_2xx_after_s:.2f} s, "
        f"gateway_store_up 1 after {outage.store_up_after_s:.2f} s; reads {dict(outage.reads)}"
    )


def test_gateway_without_postgres_at_start_exits_naming_the_masked_url(tmp_path: Path) -> None:
    """PostgreSQL unreachable when the gateway starts: it exits non-zero within seconds, with a
    message naming the store's URL, its password masked."""
    password = "s3cret-not-for-logs"  # a fake one, to be masked
    port = free_port()  # nothing listens there
    url = f"postgresql://gateway:{password}@127.0.0.1:{port}/outbox"
    config = write_gateway_config(
        tmp_path / "gateway.yaml",
        upstream_url=f"http://127.0.0.1:{free_port()}",
        overrides={
            "listen": f"127.0.0.1:{free_port()}",
            "admin.listen": f"127.0.0.1:{free_port()}",
        },
    )
    process = ManagedProcess(
        "gateway",
        gateway_command("run", "--config", str(config)),
        {**base_env(), "GATEWAY_STORE_URL": url},
        tmp_path,
    )
    started = time.monotonic()
    with managed(process):
        wait_until(
            lambda: not process.alive(),
            timeout=START_FAILURE_S,
            interval=0.1,
            what="the gateway to give up on an unreachable PostgreSQL",
        )
        took = time.monotonic() - started
        assert process.process is not None
        code = process.process.returncode
    logs = process.logs()
    assert code not in (0, None), logs
    masked = f"postgresql://gateway:***@127.0.0.1:{port}/outbox"
    stderr = process.stderr_path.read_text(errors="replace")
    assert masked in stderr, logs
    assert password not in logs
    print(f"the gateway exited with {code} after {took:.2f} s: {stderr.strip().splitlines()[-1]}")


def test_private_server_keeps_its_data_across_stop_kill_and_start() -> None:
    """The fault tool itself: start, write, fast stop, start, kill -9, start: the rows are
    there, on the same port; leaving the block removes everything."""
    with PrivateServer() as server:
        server.start()
        port = server.port
        server.create_database("kept")
        server.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (1)", "kept")
        server.stop("fast")
        assert not server.ready()
        server.start()
        server.psql("INSERT INTO t VALUES (2)", "kept")
        server.kill()
        assert not server.ready()
        server.start()
        assert port == server.port
        assert "2" == server.psql("SELECT count(*) FROM t", "kept").strip()
        root = server.root
    assert not root.exists()
