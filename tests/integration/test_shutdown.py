"""Stopping the gateway (real processes, a slow simulated platform): SIGTERM under load answers
every client already in flight, fails `/readyz` first, exits 0 within the grace period and loses
nothing; a second SIGTERM, or the grace period running out, ends it at once — and still nothing
acknowledged is lost or issued twice once it runs again."""

from __future__ import annotations

import concurrent.futures
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.integration.test_outbox import OVERRIDES, wait_delivered
from tests.support.harness import Gateway, Simulator
from tests.support.processes import http_json, wait_until

pytestmark = pytest.mark.integration

IN_FLIGHT = "gateway_in_flight_requests"


@pytest.fixture
def slow_sim(tmp_path: Path) -> Iterator[Simulator]:
    """The platform answers an issue request after 1.5 s; a reused order number is issued
    again (no dedup): only the gateway stands between a resend and a second invoice."""
    with Simulator.start(tmp_path / "sim", dedup=False) as sim:
        sim.fault(kind="slow", delay_s=1.5, operations=[ISSUE])
        yield sim


def submit_concurrently(
    gateway: Gateway, bodies: list[dict[str, Any]]
) -> tuple[concurrent.futures.ThreadPoolExecutor, list[concurrent.futures.Future[Any]]]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(bodies))
    return pool, [pool.submit(gateway.call, ISSUE, body) for body in bodies]


def exit_code_within(gateway: Gateway, seconds: float) -> tuple[int, float]:
    """Wait for the process to exit; its exit code and how long it took."""
    process = gateway.process.process
    assert process is not None
    started = time.monotonic()
    code = process.wait(timeout=seconds)
    return code, time.monotonic() - started


def test_sigterm_under_load_answers_everyone_in_flight_and_exits_0(
    tmp_path: Path, slow_sim: Simulator
) -> None:
    """Twelve submissions waiting on the platform when SIGTERM arrives: `/readyz` answers 503
    at once (requests still served during the 1 s drain delay), every client gets its answer,
    the process exits 0 well within the 15 s grace period, new connections are refused, and
    after a restart every order is issued exactly once."""
    gateway = Gateway.start(
        tmp_path / "gw",
        slow_sim.url,
        overrides={**OVERRIDES, "shutdown.drain_delay": "1s", "shutdown.grace_period": "15s"},
    )
    bodies = [invoice() for _ in range(12)]
    orders = [body["order"]["orderNo"] for body in bodies]
    pool, futures = submit_concurrently(gateway, bodies)
    try:
        wait_until(
            lambda: gateway.metric(IN_FLIGHT) >= 12,
            timeout=10,
            interval=0.05,
            what="twelve requests in flight",
        )
        gateway.process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        # Not ready as soon as the signal is taken, while still serving (the drain delay).
        wait_until(
            lambda: http_json("GET", f"{gateway.url}/readyz")[2].get("status") == "stopping",
            timeout=1,
            interval=0.02,
            what="/readyz to fail",
        )
        code, took = exit_code_within(gateway, 20)
        answers = [future.result(timeout=5) for future in futures]
    finally:
        pool.shutdown(wait=False)
        gateway.process.stop()
    assert 0 == code, gateway.process.logs()
    assert took < 15
    assert {200} == {status for status, _, _ in answers}, answers  # forwarded in time
    with pytest.raises(OSError, match="refused"):
        http_json("GET", f"{gateway.url}/healthz", timeout=1)
    log = gateway.process.stderr_path.read_text()
    assert "gateway stopping" in log
    assert "gateway stopped" in log
    assert "stopping at once" not in log
    ledger = slow_sim.ledger()
    assert 0 == ledger["totals"]["doubles"]
    assert all(slow_sim.sends(order) == 1 for order in orders)


def queue_then_deliver_slowly(
    tmp_path: Path, slow_sim: Simulator, overrides: dict[str, Any]
) -> tuple[Gateway, list[dict[str, Any]], list[str]]:
    """Eight submissions queued during an outage, then the platform back but taking 5 s per
    invoice: returns once deliveries are in flight (none can finish for 5 s)."""
    gateway = Gateway.start(tmp_path / "gw", slow_sim.url, overrides={**OVERRIDES, **overrides})
    slow_sim.clear_faults()
    slow_sim.fault(kind="http_error", status=503, operations=[ISSUE])
    bodies = [invoice() for _ in range(8)]
    answers = [gateway.call(ISSUE, body) for body in bodies]
    queued = [body["submission_id"] for status, _, body in answers if status == 202]
    assert len(queued) == len(bodies), answers
    slow_sim.clear_faults()
    slow_sim.fault(kind="slow", delay_s=5, operations=[ISSUE])
    wait_until(
        lambda: gateway.metric("gateway_dispatcher_in_flight") >= 1,
        timeout=15,
        interval=0.05,
        what="deliveries in flight",
    )
    return gateway, bodies, queued


def delivered_once_after_restart(
    gateway: Gateway, slow_sim: Simulator, bodies: list[dict[str, Any]], queued: list[str]
) -> None:
    """Started again on the same store: nothing acknowledged was lost, nothing issued twice."""
    slow_sim.clear_faults()
    gateway.restart()
    try:
        wait_delivered(gateway, queued, timeout=60)
    finally:
        gateway.process.stop()
    assert 0 == slow_sim.ledger()["totals"]["doubles"]
    assert all(slow_sim.sends(body["order"]["orderNo"]) >= 1 for body in bodies)


@pytest.mark.parametrize("cut", ["second-sigterm", "grace-runs-out"])
def test_a_stop_cut_short_loses_nothing_acknowledged(
    tmp_path: Path, slow_sim: Simulator, cut: str
) -> None:
    """Submissions are being delivered (5 s each) when the gateway is stopped and cut short —
    by a second SIGTERM, or by a 1 s grace period that a client's read (also 5 s) outlasts.
    It exits 1 at once; started again on the same store, every acknowledged submission is
    delivered, each order issued exactly once."""
    overrides = {"shutdown.grace_period": "30s"}
    if cut == "grace-runs-out":
        overrides = {"shutdown.grace_period": "1s", "shutdown.drain_delay": "500ms"}
    gateway, bodies, queued = queue_then_deliver_slowly(tmp_path, slow_sim, overrides)
    reader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    if cut == "grace-runs-out":
        slow_sim.fault(kind="slow", delay_s=5, operations=[QUERY])
        reader.submit(gateway.call, QUERY, {"orderNos": ["slow-read"]})
        wait_until(lambda: gateway.metric(IN_FLIGHT) >= 1, timeout=10, interval=0.02, what="a read")
    started = time.monotonic()
    gateway.process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    if cut == "second-sigterm":
        wait_until(
            lambda: "gateway stopping" in gateway.process.stderr_path.read_text(),
            timeout=5,
            interval=0.02,
            what="the first SIGTERM taken",
        )
        gateway.process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    code, _ = exit_code_within(gateway, 10)
    took = time.monotonic() - started
    reader.shutdown(wait=False)
    log = gateway.process.stderr_path.read_text()
    assert 1 == code, gateway.process.logs()
    assert took < 5
    reason = "a second SIGTERM" if cut == "second-sigterm" else "the grace period ran out"
    assert f"stopping at once ({reason})" in log
    delivered_once_after_restart(gateway, slow_sim, bodies, queued)


def test_deliveries_the_grace_period_cuts_off_are_handed_back(
    tmp_path: Path, slow_sim: Simulator
) -> None:
    """Deliveries (5 s each) outlast a 1 s grace period: the gateway hands them back — in the
    store as `unknown`, due at once, to be reconciled, leased to nobody — and exits 0 within
    the grace period; started again, each is delivered and issued once."""
    gateway, bodies, queued = queue_then_deliver_slowly(
        tmp_path, slow_sim, {"shutdown.grace_period": "1s"}
    )
    started = time.monotonic()
    gateway.process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    code, _ = exit_code_within(gateway, 10)
    took = time.monotonic() - started
    assert 0 == code, gateway.process.logs()
    assert took < 2.5
    assert "handed back" in gateway.process.stderr_path.read_text()
    with sqlite3.connect(gateway.store_url.removeprefix("sqlite:///")) as db:
        rows = db.execute(
            "SELECT state, last_error_class, lease_owner FROM submission "
            "WHERE last_error_class = 'lease_released'"
        ).fetchall()
        leased = db.execute("SELECT count(*) FROM submission WHERE state = 'delivering'")
        assert (0,) == leased.fetchone()
    assert rows, "nothing handed back"
    assert {("unknown", "lease_released", None)} == set(rows)
    delivered_once_after_restart(gateway, slow_sim, bodies, queued)
