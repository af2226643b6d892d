"""Several gateway replicas on one PostgreSQL database: load through all of them, a platform
outage, `kill -9` of one replica while they drain, and the same idempotency key arriving at two
replicas at once. The simulator does not deduplicate order numbers, so any blind resend would
show in its ledger as a second invoice."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.integration.test_core_gateway import ISSUE, invoice
from tests.support.harness import FAST_OUTBOX, Gateway, Simulator
from tests.support.postgres import scratch_database_sync
from tests.support.processes import http_json, wait_until

#: Short leases and sweeps, so a dead replica's leases are taken over within seconds.
LEASE_S = 3.0
REPLICA_OVERRIDES: dict[str, Any] = {
    "outbox": {**FAST_OUTBOX, "lease": f"{LEASE_S:g}s", "sweep_interval": "500ms"},
    "resilience": {
        "defaults": {
            "read": {"deadline": "3s", "attempts": 2, "backoff": {"base": "20ms", "cap": "100ms"}},
            "submit": {
                "deadline": "3s",
                "attempts": 2,
                "backoff": {"base": "20ms", "cap": "100ms"},
            },
        },
        "breaker": {"failure_threshold": 3, "reset_timeout": "500ms"},
    },
    "upstream.timeout": "2s",
}


@pytest.fixture
def database() -> Iterator[str]:
    """A throwaway PostgreSQL database for the replicas."""
    with scratch_database_sync("replicas") as url:
        yield url


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2", dedup=False) as simulator:
        yield simulator


def start_replicas(
    tmp_path: Path,
    sim: Simulator,
    database: str,
    count: int,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> list[Gateway]:
    """`count` gateways on `database`; if one cannot start, those started are stopped."""
    replicas: list[Gateway] = []
    try:
        for n in range(count):
            replicas.append(
                Gateway.start(
                    tmp_path / f"gw{n}",
                    sim.url,
                    name=f"gateway-{n}",
                    overrides={**REPLICA_OVERRIDES, "store_url": database, **overrides},
                    env=env,
                )
            )
    except BaseException:
        stop_all(replicas)
        raise
    return replicas


def stop_all(replicas: list[Gateway]) -> None:
    for replica in replicas:
        replica.process.stop()


def query(database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def send_all(replicas: list[Gateway], bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """Send each body once, round-robin over the replicas, eight at a time."""
    targets = itertools.cycle(replicas)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(next(targets).call, ISSUE, body) for body in bodies]
        return [(f.result()[0], f.result()[2]) for f in futures]


def states(database: str) -> dict[str, int]:
    rows = query(database, "SELECT state, count(*) AS n FROM submission GROUP BY state")
    return {str(r["state"]): int(r["n"]) for r in rows}


def test_three_replicas_through_an_outage_and_a_kill_9_issue_each_exactly_once(
    tmp_path: Path, sim: Simulator, database: str
) -> None:
    """Load through three replicas, an outage (everything queued), then `kill -9` of one while
    they drain: every acknowledged submission is issued exactly once, and nothing stays leased
    by the dead replica once its lease time has passed."""
    replicas = start_replicas(tmp_path, sim, database, 3)
    try:
        # The platform up: forwarded live through every replica.
        live = [invoice() for _ in range(30)]
        answers = send_all(replicas, live)
        assert {200} == {status for status, _ in answers}, answers
        # The platform down: every submission is acknowledged and queued.
        sim.fault(kind="http_error", status=503)
        queued = [invoice() for _ in range(150)]
        answers = send_all(replicas, queued)
        assert {202} == {status for status, _ in answers}, answers
        # All kept; none delivered while the platform is down (a 5xx may have been acted on:
        # those wait as `unknown`, to be looked up before any resend).
        waiting = states(database)
        assert 30 == waiting.pop("delivered")
        assert 150 == sum(waiting.values())
        assert set(waiting) <= {"queued", "unknown", "delivering"}
        # Back up, but slow: deliveries are in flight when one replica dies.
        sim.clear_faults()
        sim.fault(kind="slow", delay_s=0.4, operations=[ISSUE])
        wait_until(
            lambda: sim.ledger()["totals"]["accepted"] >= 30 + 20,
            timeout=30,
            interval=0.1,
            what="the drain to be under way",
        )
        victim = replicas[1]
        pid = victim.process.pid

        def leases_of_victim() -> int:
            return int(
                query(
                    database,
                    "SELECT count(*) AS n FROM submission WHERE state = 'delivering' "
                    "AND lease_owner LIKE $1",
                    f"%:{pid}:%",
                )[0]["n"]
            )

        # Killed while it holds leases (each delivery takes 0.4 s, the kill follows the check
        # within milliseconds), whichever replicas happened to claim the first rows.
        wait_until(
            lambda: leases_of_victim() >= 2,
            timeout=30,
            interval=0.02,
            what="the victim to hold leases",
        )
        victim.process.kill9()
        held = leases_of_victim()
        assert held > 0, "the killed replica held no lease: the test proved nothing"
        sim.clear_faults()
        survivors = [replicas[0], replicas[2]]

        def drained() -> bool:
            return states(database) == {"delivered": 180}

        wait_until(drained, timeout=90, interval=0.25, what="every submission delivered")
        leftover = query(
            database, "SELECT count(*) AS n FROM submission WHERE lease_owner LIKE $1", f"%:{pid}:%"
        )[0]["n"]
        assert 0 == leftover
        ledger = sim.ledger()
        for body in live + queued:
            order = ledger["orders"][body["order"]["orderNo"]]
            assert 1 == order["issued"], (body["order"]["orderNo"], order)
        assert 0 == ledger["totals"]["doubles"]
        assert 180 == ledger["totals"]["accepted"]
        for survivor in survivors:
            assert survivor.process.alive
    finally:
        stop_all(replicas)


def race(replicas: list[Gateway], body: dict[str, Any]) -> list[tuple[int, Any]]:
    """The same submission sent to two replicas at the same moment."""
    start = threading.Barrier(2)

    def send(replica: Gateway) -> tuple[int, Any]:
        start.wait(timeout=10)
        status, _, answer = replica.call(ISSUE, body)
        return status, answer

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(send, replicas[:2]))


def test_the_same_key_at_two_replicas_at_once_is_one_submission(
    tmp_path: Path, sim: Simulator, database: str
) -> None:
    """Forty times with the platform up and forty with it down, one submission sent to two
    replicas at the same moment: one row, one send, one invoice each time; the loser answers
    like a repeat (the same 202, or 409 while the winner is in flight, or the stored answer)."""
    replicas = start_replicas(tmp_path, sim, database, 2)
    try:
        up = [invoice() for _ in range(40)]
        for body in up:
            answers = race(replicas, body)
            assert {s for s, _ in answers} <= {200, 409}, answers
            assert 200 in {s for s, _ in answers}, answers
        sim.fault(kind="http_error", status=503)
        down = [invoice() for _ in range(40)]
        for body in down:
            (first, a), (second, b) = race(replicas, body)
            assert {first, second} <= {202, 409}, (a, b)
            ids = {x["submission_id"] for s, x in ((first, a), (second, b)) if s == 202}
            assert 1 == len(ids), (a, b)
        sim.clear_faults()
        per_key = query(
            database,
            "SELECT business_key, count(*) AS n FROM submission GROUP BY business_key",
        )
        assert {1} == {int(r["n"]) for r in per_key}
        assert 80 == len(per_key)
        wait_until(
            lambda: states(database) == {"delivered": 80},
            timeout=60,
            interval=0.25,
            what="every submission delivered",
        )
        ledger = sim.ledger()
        for body in up:
            order = ledger["orders"][body["order"]["orderNo"]]
            assert (1, 1) == (order["sends"], order["issued"]), order
        for body in down:
            assert 1 == ledger["orders"][body["order"]["orderNo"]]["issued"]
    finally:
        stop_all(replicas)


def metric(replica: Gateway, name: str) -> float:
    """A sample without labels from the replica's /metrics (0 if absent)."""
    status, _, text = http_json("GET", f"{replica.admin_url}/metrics")
    assert 200 == status
    for line in str(text).splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def test_a_replica_whose_lease_was_taken_over_records_nothing(
    tmp_path: Path, sim: Simulator, database: str
) -> None:
    """A delivery slower than its lease: a sweep takes the submission over (it may have been
    sent), the slow holder's result is fenced out and counted, and the submission is settled by
    lookup — issued once."""
    outbox = {**REPLICA_OVERRIDES["outbox"], "lease": "1s", "sweep_interval": "200ms"}
    replicas = start_replicas(tmp_path, sim, database, 2, outbox=outbox)
    try:
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        body = invoice()
        status, _, answer = replicas[0].call(ISSUE, body)
        assert 202 == status, answer
        sim.clear_faults()
        sim.fault(kind="slow", delay_s=2.5, operations=[ISSUE], count=1)

        def fenced() -> bool:
            return sum(metric(r, "gateway_outbox_fenced_writes_total") for r in replicas) >= 1

        wait_until(fenced, timeout=30, interval=0.2, what="a fenced-out delivery result")
        wait_until(
            lambda: states(database) == {"delivered": 1},
            timeout=30,
            interval=0.2,
            what="the submission settled",
        )
        order = sim.ledger()["orders"][body["order"]["orderNo"]]
        assert 1 == order["issued"], order
    finally:
        stop_all(replicas)


def test_work_queued_at_one_replica_wakes_the_others_without_a_poll(
    tmp_path: Path, sim: Simulator, database: str
) -> None:
    """Dispatchers that poll once a minute: a submission queued at a replica whose circuit an
    operator opened is delivered by the other replica within seconds, woken through the
    database (`NOTIFY`), not by its poll."""
    outbox = {
        **REPLICA_OVERRIDES["outbox"],
        "sweep_interval": "60s",
        "dispatcher": {**FAST_OUTBOX["dispatcher"], "poll_interval": "60s"},
    }
    token = "replica-operator-token-0123456789"
    replicas = start_replicas(
        tmp_path, sim, database, 2, env={"GATEWAY_ADMIN_TOKEN": token}, outbox=outbox
    )
    try:
        held, other = replicas
        status, _, answer = held.admin(
            "POST",
            "/circuit/open",
            {"reason": "test: only the other replica may send"},
            token=token,
        )
        assert 200 == status, answer
        body = invoice()
        status, headers, answer = held.call(ISSUE, body)
        assert (202, "queued") == (status, headers["X-Gateway-Outcome"]), answer
        # A third of the poll interval: only a wake-up can explain a delivery by then.
        try:
            wait_until(
                lambda: states(database) == {"delivered": 1},
                timeout=20,
                interval=0.1,
                what="the other replica to deliver it",
            )
        except AssertionError as exc:
            logs = "\n".join(replica.process.logs() for replica in replicas)
            raise AssertionError(f"{exc}; states {states(database)}\n{logs}") from None
        assert 1 == sim.ledger()["orders"][body["order"]["orderNo"]]["issued"]
        assert (0, 1) == (
            metric(held, "gateway_outbox_delivered_total"),
            metric(other, "gateway_outbox_delivered_total"),
        )
    finally:
        stop_all(replicas)


def test_a_live_forward_slower_than_its_lease_records_nothing_and_is_settled_once(
    tmp_path: Path, sim: Simulator, database: str
) -> None:
    """The client's own request, forwarded live, outlasts its lease: a sweep takes the
    submission over; the forward's result is fenced out and counted, the client still gets
    the platform's answer, and the submission is settled by lookup — issued once."""
    outbox = {**REPLICA_OVERRIDES["outbox"], "lease": "1s", "sweep_interval": "200ms"}
    slow_enough = {"upstream.timeout": "5s", "resilience.defaults.submit.deadline": "6s"}
    replicas = start_replicas(tmp_path, sim, database, 2, outbox=outbox, **slow_enough)
    try:
        sim.fault(kind="slow", delay_s=2.5, operations=[ISSUE], count=1)
        body = invoice()
        status, _, answer = replicas[0].call(ISSUE, body)
        assert 200 == status, answer
        assert 1 == metric(replicas[0], "gateway_outbox_fenced_writes_total")
        wait_until(
            lambda: states(database) == {"delivered": 1},
            timeout=30,
            interval=0.2,
            what="the submission settled",
        )
        assert 1 == sim.ledger()["orders"][body["order"]["orderNo"]]["issued"]
    finally:
        stop_all(replicas)


def test_a_replica_stopping_mid_delivery_hands_its_rows_to_another_at_once(
    tmp_path: Path, database: str
) -> None:
    """Replica A is delivering (the platform takes 1.5 s per invoice) when it is stopped with a
    1 s grace period: it exits 0 within it, handing back what it could not finish, and replica
    B — whose dispatcher was held until then — delivers everything long before A's 60 s leases
    would have expired. The simulator does not deduplicate: each order is issued once."""
    from tests.integration.test_admin_api import ADMIN, ADMIN_ENV, OPERATOR_TOKEN

    lease = 60.0
    overrides: dict[str, Any] = {
        **ADMIN,
        "outbox": {**REPLICA_OVERRIDES["outbox"], "lease": f"{lease:g}s"},
        "shutdown.grace_period": "1s",
    }
    with Simulator.start(tmp_path / "sim", dedup=False) as sim:
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        a, b = start_replicas(tmp_path, sim, database, 2, env=ADMIN_ENV, **overrides)
        try:
            status, _, view = b.admin(
                "POST", "/dispatcher/pause", {"reason": "test: A delivers"}, token=OPERATOR_TOKEN
            )
            assert 200 == status, view
            bodies = [invoice() for _ in range(4)]
            answers = [a.call(ISSUE, body) for body in bodies]
            assert {202} == {status for status, _, _ in answers}, answers
            sim.clear_faults()
            sim.fault(kind="slow", delay_s=1.5, operations=[ISSUE])
            wait_until(
                lambda: a.metric("gateway_dispatcher_in_flight") >= 1,
                timeout=15,
                interval=0.02,
                what="A delivering",
            )
            status, _, view = b.admin(
                "POST", "/dispatcher/resume", {"reason": "test: A stops"}, token=OPERATOR_TOKEN
            )
            assert 200 == status, view
            stopped = time.monotonic()
            assert 0 == a.process.stop(timeout=10), a.process.logs()
            assert time.monotonic() - stopped < 3
            assert "handed back" in a.process.stderr_path.read_text()
            wait_until(
                lambda: states(database).get("delivered") == len(bodies),
                timeout=20,
                interval=0.1,
                what="B to deliver what A handed back",
            )
            assert time.monotonic() - stopped < lease / 2
        finally:
            stop_all([a, b])
        ledger = sim.ledger()
    assert 0 == ledger["totals"]["doubles"], ledger["totals"]
    assert [1] * len(bodies) == [
        ledger["orders"].get(body["order"]["orderNo"], {}).get("sends") for body in bodies
    ]
