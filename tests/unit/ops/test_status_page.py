"""The /status page: the facts people need, escaped, without secrets or payloads; the last hour
kept in memory and drawn as inline SVG."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway, client_app, open_gateway
from gateway.config import GatewayConfig, parse_config
from gateway.ops.status_page import Sample, StatusHistory, StatusPage, render
from gateway.resilience.breaker import CircuitState
from tests.support.fakes import FakeClock
from tests.support.processes import free_port

T0 = 1_800_000_000.0
ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
TENANT_KEY = "k-demo"


def facts(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "0.1.0",
        "now": "2026-11-27T10:05:00Z",
        "up_since": "2026-11-27T09:00:00Z",
        "availability": {"state": "up", "since": "2026-11-27T09:00:00Z", "since_ago_s": 3900.0},
        "platform": {"status": "unknown", "since": "2026-11-27T09:00:01Z", "probes": 0},
        "circuits": [
            {"name": "upstream", "state": "closed", "since": "2026-11-27T09:00:00Z", "reason": None}
        ],
        "dispatcher": {"paused": False, "in_flight": 0},
        "outbox": {
            "counts": {"queued": 0, "delivered": 10, "dead": 0},
            "waiting": 0,
            "oldest_queued_age_s": None,
        },
        "errors": [],
        "history": {
            "window_s": 3600.0,
            "interval_s": 10.0,
            "minutes": [
                {
                    "ago_s": 60.0 * (60 - i),
                    "forwarded": 0,
                    "replayed": 0,
                    "queued": 0,
                    "rejected": 0,
                }
                for i in range(60)
            ],
            "depth": [],
            "outages": [],
        },
    }
    base.update(overrides)
    return base


def outage_facts() -> dict[str, Any]:
    minutes = facts()["history"]["minutes"]
    minutes[-1] = {"ago_s": 60.0, "forwarded": 4, "replayed": 1, "queued": 7, "rejected": 2}
    return facts(
        availability={"state": "down", "since": "2026-11-27T10:00:00Z", "since_ago_s": 300.0},
        circuits=[
            {
                "name": "upstream",
                "state": "open",
                "since": "2026-11-27T10:04:59.5Z",
                "reason": "5 consecutive failures",
            }
        ],
        outbox={
            "counts": {"queued": 5, "unknown": 2, "delivered": 10, "dead": 1},
            "waiting": 7,
            "oldest_queued_age_s": 300.0,
        },
        errors=[
            {
                "class": "refused",
                "words": "platform refused connections",
                "count": 12,
                "last_seen_ago_s": 4.0,
            }
        ],
        history={
            "window_s": 3600.0,
            "interval_s": 10.0,
            "minutes": minutes,
            "depth": [{"ago_s": 20.0, "waiting": 3}, {"ago_s": 0.0, "waiting": 7}],
            "outages": [{"start_ago_s": 300.0, "end_ago_s": None}],
        },
    )


def test_healthy_page_says_up_and_since_when() -> None:
    """A healthy gateway says the platform is up, since when, and that nothing waits."""
    page = render(facts())
    assert "Platform up</h1>" in page
    assert "Up since 09:00:00 UTC (65 min ago)." in page
    assert "nothing queued" in page
    assert "No failed calls to the platform in the last hour." in page


def test_outage_page_shows_what_a_person_needs() -> None:
    """During an outage: the headline, since when, queued/delivered/dead, oldest age, the circuit
    in words and the error classes in plain words with counts."""
    page = render(outage_facts())
    assert "Platform down — submissions are being queued" in page
    assert "Down since 10:00:00 UTC (5 min ago)." in page
    assert "Queued<b>7</b><small>5 waiting · 2 being reconciled</small>" in page
    assert "Delivered<b>10</b>" in page
    assert "Dead<b>1</b>" in page
    assert "Oldest queued<b>5 min</b>" in page
    assert "open — failing fast, submissions are queued" in page
    assert "since 10:04:59 UTC" in page
    assert (
        "platform refused connections <small>(refused)</small></td><td class='n'>12</td>"
        "<td>in the last 10 s</td>"
    ) in page
    assert "1 submission(s) gave up and need on-call" in page


def test_charts_are_inline_svg_with_the_outage_shaded() -> None:
    """Both charts are inline SVG; the last minute's bar stacks every outcome; the outage is
    shaded up to now; the legend gives the hour's totals."""
    page = render(outage_facts())
    assert 2 == page.count("<svg ")
    assert "last minute: 4 forwarded, 1 replayed, 7 queued, 2 rejected" in page
    assert 4 == len(re.findall(r"<rect [^>]*fill='#(?:2e7d32|1e6fbf|e09b00|c62828)'", page))
    assert 2 == page.count("<title>platform down</title>")
    assert "forwarded 4</span>" in page
    assert "<title>now: 7 waiting</title>" in page


def test_up_with_a_backlog_says_it_is_delivering() -> None:
    """Back up after an outage, the headline says the queue is being delivered."""
    outbox = {"counts": {"queued": 40}, "waiting": 40, "oldest_queued_age_s": 90.0}
    assert "Platform up — delivering 40 queued submissions" in render(facts(outbox=outbox))


def test_held_by_on_call() -> None:
    """A circuit forced open by on-call is not called an outage of the platform."""
    availability = {"state": "held", "since": "2026-11-27T10:00:00Z", "since_ago_s": 60.0}
    page = render(facts(availability=availability))
    assert "Sending held by on-call — submissions are being queued" in page
    assert "Held since 10:00:00 UTC (60 s ago)." in page


def test_values_are_escaped() -> None:
    """Anything shown is HTML-escaped (a reason typed by on-call cannot inject markup)."""
    circuits = [{"name": "upstream", "state": "forced_open", "since": "x", "reason": "<script>"}]
    page = render(facts(circuits=circuits))
    assert "<script>" not in page
    assert "&lt;script&gt;" in page


def test_self_contained_and_refreshing() -> None:
    """No scripts, stylesheets or images from elsewhere; a meta refresh reloads the page."""
    page = render(outage_facts())
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page
    assert "<img" not in page
    # The icon is empty and inline, so a browser does not ask the proxy for /favicon.ico.
    assert {"data:,", "?format=json"} == set(re.findall(r'(?:href|src)="([^"]*)"', page))
    assert '<meta http-equiv="refresh" content="10">' in page


def test_store_unavailable_is_reported() -> None:
    """When the store cannot be read the page says so instead of failing."""
    page = render(facts(outbox={"error": "disk I/O error"}))
    assert "Store unavailable: disk I/O error" in page
    assert "Queued<b>?</b>" in page


# -- the history -------------------------------------------------------------------------------


def sample(at: float, waiting: int = 0, **outcomes: float) -> Sample:
    return Sample(at=T0 + at, outcomes=outcomes, waiting=waiting)


def test_minutes_count_the_differences_between_samples() -> None:
    """Each sample's increase is counted in the minute it was seen; the last minute includes
    the live sample."""
    history = StatusHistory(FakeClock(T0))
    history.add(sample(0))
    history.add(sample(30, forwarded=5))
    history.add(sample(70, forwarded=8, queued=2))
    minutes = history.minutes(sample(100, forwarded=9, queued=4, rejected=1))
    assert 60 == len(minutes)
    assert {"ago_s": 120.0, "forwarded": 5, "replayed": 0, "queued": 0, "rejected": 0} == minutes[
        -2
    ]
    assert {"ago_s": 60.0, "forwarded": 4, "replayed": 0, "queued": 4, "rejected": 1} == minutes[-1]


def test_the_ring_buffer_keeps_one_hour() -> None:
    """Two hours of samples every 10 s: the depth series covers the last hour only."""
    history = StatusHistory(FakeClock(T0), interval=10.0, window=3600.0)
    for i in range(721):
        history.add(sample(10.0 * i, waiting=i))
    depth = history.depth(sample(7210.0, waiting=0))
    assert 3600.0 >= max(point["ago_s"] for point in depth)
    assert 362 >= len(depth)
    assert {"ago_s": 0.0, "waiting": 0} == depth[-1]


def test_failures_in_the_window_in_plain_words() -> None:
    """Failed calls are counted over the last hour only, most frequent first, with when each
    class was last seen."""
    history = StatusHistory(FakeClock(T0), window=3600.0)
    history.add(Sample(at=T0, failures={"busy": 3}))
    history.add(Sample(at=T0 + 3000, failures={"busy": 5, "refused": 1}))
    history.add(Sample(at=T0 + 3590, failures={"busy": 5, "refused": 4}))
    found = history.failures(Sample(at=T0 + 3650, failures={"busy": 5, "refused": 4}))
    assert [
        {
            "class": "refused",
            "words": "platform refused connections",
            "count": 4,
            "last_seen_ago_s": 60.0,
        },
        {"class": "busy", "words": "platform busy", "count": 2, "last_seen_ago_s": 650.0},
    ] == found


def test_an_outage_lasts_from_open_until_closed() -> None:
    """Open, half-open trials and open again are one outage; it ends when the circuit closes."""
    clock = FakeClock(T0)
    history = StatusHistory(clock)
    history.transition("upstream", CircuitState.CLOSED, CircuitState.OPEN, "5 failures")
    clock.advance(15)
    history.transition("upstream", CircuitState.OPEN, CircuitState.HALF_OPEN, "trial")
    history.transition("upstream", CircuitState.HALF_OPEN, CircuitState.OPEN, "trial failed")
    assert T0 == history.down_since
    assert [{"start_ago_s": 15.0, "end_ago_s": None}] == history.outages(clock.wall())
    clock.advance(45)
    history.transition("upstream", CircuitState.OPEN, CircuitState.HALF_OPEN, "trial")
    history.transition("upstream", CircuitState.HALF_OPEN, CircuitState.CLOSED, "trial passed")
    clock.advance(10)
    assert (None, T0 + 60) == (history.down_since, history.up_since)
    assert [{"start_ago_s": 70.0, "end_ago_s": 10.0}] == history.outages(clock.wall())


# -- in process, against a platform that refuses connections -----------------------------------


def refused_platform(tmp_path: Path) -> GatewayConfig:
    """A gateway whose platform refuses every connection (nothing listens on its port)."""
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "store_url": f"sqlite:///{tmp_path / 'gw.db'}",
        "tenants": [{"id": "demo", "api_key": {"env": "TENANT_KEY"}}],
        "upstream": {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout": "1s"},
        "resilience": {
            "defaults": {"submit": {"deadline": "1s", "attempts": 1}},
            "breaker": {"failure_threshold": 2, "reset_timeout": "60s"},
        },
        "operations": [
            {
                "name": ISSUE,
                "kind": "submit",
                "match": {"method": "POST", "path": "/services", "headers": {"method": ISSUE}},
                "business_key": "/order/orderNo",
            }
        ],
    }
    return parse_config(raw, {"TENANT_KEY": TENANT_KEY})


@pytest.fixture
async def down_gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, TestClient[Any, Any]]]:
    async with open_gateway(refused_platform(tmp_path)) as gateway:
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(client_app(gateway), host="127.0.0.1")
        )
        await client.start_server()
        try:
            yield gateway, client
        finally:
            await client.close()


async def test_status_during_an_outage_in_process(
    down_gateway: tuple[Gateway, TestClient[Any, Any]],
) -> None:
    """Submissions queued while the platform refuses connections show up on the page and in
    its JSON: down, the circuit open, the queue, the refusals in plain words, both charts."""
    _gateway, client = down_gateway
    for i in range(4):
        body = {"order": {"orderNo": f"A-{i}", "buyerTaxNum": "91110108MA01ABCD2X"}}
        response = await client.post(
            "/services", json=body, headers={"method": ISSUE, "X-Api-Key": TENANT_KEY}
        )
        assert 202 == response.status
    response = await client.get("/status", params={"format": "json"})
    facts = await response.json()
    assert "down" == facts["availability"]["state"]
    assert 4 == facts["outbox"]["waiting"]
    assert "refused" in [entry["class"] for entry in facts["errors"]]
    assert 4 == sum(minute["queued"] for minute in facts["history"]["minutes"])
    response = await client.get("/status")
    page = await response.text()
    assert "text/html" == response.content_type
    assert "Platform down — submissions are being queued" in page
    assert "platform refused connections" in page
    assert 2 == page.count("<svg ")
    assert "91110108MA01ABCD2X" not in page
    assert TENANT_KEY not in page


async def test_the_page_samples_while_the_gateway_runs(tmp_path: Path) -> None:
    """Built inside a running gateway, the page samples it in the background."""
    async with open_gateway(refused_platform(tmp_path)) as gateway:
        page = StatusPage(gateway, interval=0.01)
        try:
            for _ in range(100):
                facts = await page.facts()
                if len(facts["history"]["depth"]) >= 3:  # two samples and the live one
                    break
                await asyncio.sleep(0.01)
            assert 3 <= len(facts["history"]["depth"])
        finally:
            await page.close()
