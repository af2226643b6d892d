"""Retries, token renewal and circuit breaking against the real simulator's faults."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_core_gateway import ISSUE, QUERY, counters, invoice
from tests.support.harness import Gateway, Simulator
from tests.support.processes import http_json, jumped_clock, wait_until

FAST_POLICY = {"backoff": {"base": "20ms", "cap": "200ms"}}


def calls(sim: Simulator, operation: str) -> int:
    return int(counters(sim)["calls"].get(operation, 0))


def test_busy_and_503_bursts_are_absorbed(gateway: Gateway, simulator: Simulator) -> None:
    """A couple of busy codes or 503s are retried away: the client sees plain success."""
    simulator.fault(kind="busy", operations=[QUERY], count=2)
    status, _, answer = gateway.call(QUERY, {"orderNos": ["x"]})
    assert 200 == status
    assert "E0000" == answer["code"]
    assert 3 == calls(simulator, QUERY)

    simulator.fault(kind="http_error", status=503, operations=[ISSUE], count=2)
    body = invoice()
    status, _, answer = gateway.call(ISSUE, body)
    assert 200 == status, answer
    assert "E0000" == answer["code"]
    assert 1 == simulator.ledger()["orders"][body["order"]["orderNo"]]["issued"]


def test_rate_limit_is_waited_out(gateway: Gateway, simulator: Simulator) -> None:
    """A 429 with Retry-After: 1 is waited out and retried; the client sees success."""
    gateway.call(QUERY, {"orderNos": ["warm-up"]})
    simulator.fault(kind="rate_limit", retry_after_s=1, operations=[QUERY], count=1)
    started = time.monotonic()
    status, _, answer = gateway.call(QUERY, {"orderNos": ["x"]})
    waited = time.monotonic() - started
    assert 200 == status
    assert "E0000" == answer["code"]
    assert waited >= 1.0  # the Retry-After was honoured, not ignored


def test_token_expiry_causes_exactly_one_token_call(gateway: Gateway, simulator: Simulator) -> None:
    """After the platform revokes the token, twenty concurrent requests cause one renewal."""
    gateway.call(QUERY, {"orderNos": ["warm-up"]})
    assert 1 == counters(simulator)["token_calls"]
    simulator.fault(kind="token_expiry")
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: gateway.call(QUERY, {"orderNos": ["x"]}), range(20)))
    assert [200] * 20 == [status for status, _, _ in results]
    assert ["E0000"] * 20 == [answer["code"] for _, _, answer in results]
    assert 2 == counters(simulator)["token_calls"]


def test_outage_opens_circuit_then_probe_closes_it(tmp_path: Path, simulator: Simulator) -> None:
    """During an outage reads fail fast with only probe traffic upstream; recovery closes it."""
    gw = Gateway.start(
        tmp_path / "gw",
        simulator.url,
        overrides={
            "resilience": {
                "defaults": {"read": {**FAST_POLICY, "attempts": 2}},
                "breaker": {"failure_threshold": 3, "reset_timeout": "60s"},
                "probe": {
                    "operation": QUERY,
                    "body": {"orderNos": ["gateway-health-probe"]},
                    "interval": "300ms",
                    "healthy_threshold": 2,
                    "unhealthy_threshold": 2,
                },
            }
        },
    )
    try:
        assert 200 == gw.call(QUERY, {"orderNos": ["x"]})[0]
        simulator.fault(kind="http_error", status=503, operations=[QUERY])

        def circuit_open() -> dict[str, Any] | None:
            status, _, problem = gw.call(QUERY, {"orderNos": ["x"]})
            return problem if status == 503 and "circuit-open" in problem["type"] else None

        problem = wait_until(circuit_open, timeout=15, interval=0.05, what="the circuit to open")
        assert 0 == problem["attempts"] or problem["failure_class"] == "circuit_open"

        before = calls(simulator, QUERY)
        started = time.monotonic()
        for _ in range(50):
            status, headers, problem = gw.call(QUERY, {"orderNos": ["x"]})
            assert 503 == status
            assert "circuit-open" in problem["type"]
            assert int(headers["Retry-After"]) >= 1
        elapsed = time.monotonic() - started
        upstream_calls = calls(simulator, QUERY) - before
        # Only the health probe reached the platform: one call per 300 ms interval.
        assert upstream_calls <= elapsed / 0.3 + 2

        simulator.clear_faults()

        def recovered() -> bool:
            status, headers, _ = gw.call(QUERY, {"orderNos": ["x"]})
            return status == 200 and headers["X-Gateway-Outcome"] == "forwarded"

        wait_until(recovered, timeout=15, interval=0.1, what="the probe to close the circuit")
    finally:
        simulator.clear_faults()
        gw.process.stop()


def gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


@pytest.mark.parametrize(("jump", "offset"), [("+3600", -3600.0), ("-1800", 1800.0)])
def test_clock_jump_does_not_fail_invoices_with_stale_timestamp(
    tmp_path: Path, simulator: Simulator, jump: str, offset: float
) -> None:
    """The gateway host's clock jumps (an hour ahead, half an hour behind): the platform refuses
    its timestamp (070601), the gateway re-signs with the platform's Date and the invoice is
    issued once."""
    env = jumped_clock(tmp_path / "clock", jump)
    with Gateway.start(tmp_path / "gw", simulator.url, env=env) as gw:
        body = invoice()
        status, _, answer = gw.call(ISSUE, body)
        assert 200 == status, (answer, gw.process.logs())
        assert "E0000" == answer["code"]
        assert 1 == simulator.ledger()["orders"][body["order"]["orderNo"]]["issued"]
        assert 1 == counters(simulator)["stale_timestamp"]  # refused once, then re-signed

        status, _, answer = gw.call(QUERY, {"orderNos": [body["order"]["orderNo"]]})
        assert (200, "E0000") == (status, answer["code"])
        assert 1 == counters(simulator)["stale_timestamp"]  # later calls use the offset

        status, _, text = http_json("GET", f"{gw.admin_url}/metrics")
        assert 200 == status
        assert offset == pytest.approx(gauge(text, "gateway_upstream_clock_offset_seconds"), abs=5)
    logs = gw.process.stdout_path.read_text() + gw.process.stderr_path.read_text()
    assert "fix NTP on this host" in logs
