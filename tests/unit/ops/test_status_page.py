"""The /status page: the facts people need, escaped, without secrets or payloads; the last hour
kept in memory and drawn as inline SVG; its background sampling started and stopped."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway, client_app, open_gateway
from gateway.clock import iso_utc
from gateway.config import BreakerConfig, GatewayConfig, parse_config
from gateway.errors import StoreError
from gateway.ops import status as status_package
from gateway.ops.admin import admin_app
from gateway.ops.metrics import Metrics
from gateway.ops.status import (
    IncidentBoard,
    Sample,
    StatusHistory,
    StatusPage,
    incident_message,
    render,
)
from gateway.ops.status.history import Counters
from gateway.ops.status.incident import CLEAR, PAGE, RECENT, SET
from gateway.ops.status.render import ENVIRONMENT
from gateway.outbox.dispatcher import DispatcherStats
from gateway.outbox.store import OutboxCounts
from gateway.outbox.submissions import AuditEntry, SubmissionState
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.probe import UpstreamHealth
from tests.support.fakes import FakeClock, ManualClock
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
        'platform refused connections <small>(refused)</small></td><td class="n">12</td>'
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


HOSTILE = "<script>alert('x')</script>"


def test_hostile_text_in_every_shown_value_is_escaped() -> None:
    """An error class, a circuit, an outbox state, a store error or a version carrying markup
    is shown as text wherever it appears."""
    hostile = outage_facts()
    hostile["version"] = HOSTILE
    hostile["circuits"] = [{"name": HOSTILE, "state": HOSTILE, "since": HOSTILE, "reason": None}]
    hostile["errors"] = [
        {"class": HOSTILE, "words": HOSTILE, "count": 1, "last_seen_ago_s": 0.0},
    ]
    hostile["outbox"] = {"counts": {HOSTILE: 1}, "waiting": 0, "oldest_queued_age_s": None}
    page = render(hostile)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert 0 == render(facts(outbox={"error": HOSTILE})).count("<script")


async def test_a_hostile_failure_class_from_the_metrics_is_escaped() -> None:
    """A failure class the page has no words for is a metric label: it reaches the JSON
    unchanged and the page escaped."""
    clock = FakeClock(T0)
    parts = Parts(clock)
    parts.metrics.upstream_attempts.labels(ISSUE, HOSTILE).inc(3)
    found = await parts.page().facts()
    assert [HOSTILE] == [entry["class"] for entry in found["errors"]]
    page = render(found)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page


def test_a_missing_fact_is_an_error_not_a_blank() -> None:
    """The template is strict: a fact it shows that is missing fails the rendering."""
    incomplete = facts()
    del incomplete["version"]
    with pytest.raises(jinja2.UndefinedError, match="version"):
        render(incomplete)


def test_the_template_is_autoescaped_and_strict() -> None:
    """The page's template is autoescaped, and rendered without its context it fails rather
    than print blanks."""
    assert (True, jinja2.StrictUndefined) == (
        ENVIRONMENT.autoescape("status.html"),
        ENVIRONMENT.undefined,
    )
    with pytest.raises(jinja2.UndefinedError):
        ENVIRONMENT.get_template("status.html").render()


def test_self_contained_and_refreshing() -> None:
    """No scripts, stylesheets or images from elsewhere; a meta refresh reloads the page."""
    page = render(outage_facts())
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page
    assert "<img" not in page
    # The icon is empty and inline, so a browser does not ask the proxy for /favicon.ico.
    links = set(re.findall(r'(?:href|src)="([^"]*)"', page))
    assert {"data:,", "?format=json", "status/feed.json"} == links
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


def test_failures_in_the_window() -> None:
    """Failed calls are counted over the last hour only, most frequent first, with when each
    class was last seen."""
    history = StatusHistory(FakeClock(T0), window=3600.0)
    history.add(Sample(at=T0, failures={"busy": 3}))
    history.add(Sample(at=T0 + 3000, failures={"busy": 5, "refused": 1}))
    history.add(Sample(at=T0 + 3590, failures={"busy": 5, "refused": 4}))
    found = history.failures(Sample(at=T0 + 3650, failures={"busy": 5, "refused": 4}))
    assert [
        {"class": "refused", "count": 4, "last_seen_ago_s": 60.0},
        {"class": "busy", "count": 2, "last_seen_ago_s": 650.0},
    ] == found


async def test_failures_are_shown_in_plain_words() -> None:
    """The facts name each failure class as a person would say it; a class without words is
    shown with spaces for underscores."""
    parts = Parts(FakeClock(T0))
    parts.metrics.upstream_attempts.labels(ISSUE, "refused").inc(2)
    parts.metrics.upstream_attempts.labels(ISSUE, "new_kind").inc()
    parts.metrics.upstream_attempts.labels(ISSUE, "success").inc(5)
    found = await parts.page().facts()
    assert [("refused", "platform refused connections"), ("new_kind", "new kind")] == [
        (entry["class"], entry["words"]) for entry in found["errors"]
    ]


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


def refused_platform(tmp_path: Path, **extra: Any) -> GatewayConfig:
    """A gateway whose platform refuses every connection (nothing listens on its port)."""
    raw: dict[str, Any] = {
        **extra,
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
    return parse_config(raw, {"TENANT_KEY": TENANT_KEY, "STATUS_OPERATOR": OPERATOR})


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


async def test_open_gateway_starts_the_status_page_and_stops_it(tmp_path: Path) -> None:
    """The gateway's status page samples while the gateway is open and not after."""
    async with open_gateway(refused_platform(tmp_path)) as gateway:
        page = gateway.status_page
        assert page.running
        assert 1 == len(sampler_tasks())
    assert not page.running
    assert [] == sampler_tasks()


# -- the background sampling, on a manual clock ------------------------------------------------


class FakeOutbox:
    """An outbox with fixed counts; `hold()` makes the next reads wait until `release()`."""

    def __init__(self, queued: int = 0) -> None:
        self.queued = queued
        self.reads = 0
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    async def counts(self) -> OutboxCounts:
        self.reads += 1
        if self._gate is not None:
            await self._gate.wait()
        return OutboxCounts(by_state={SubmissionState.QUEUED: self.queued}, oldest_queued_at=None)


class BrokenOutbox:
    """An outbox whose store cannot be read."""

    async def counts(self) -> OutboxCounts:
        raise StoreError("disk I/O error")


class IdleDispatcher:
    """A dispatcher, as far as the page sees it, with nothing to do."""

    paused = False
    in_flight = 0
    stats = DispatcherStats()


class Parts:
    """The parts of a gateway the page is handed, on `clock`."""

    def __init__(self, clock: FakeClock, outbox: Any = None) -> None:
        self.clock = clock
        self.outbox = outbox if outbox is not None else FakeOutbox()
        self.breakers = BreakerRegistry(BreakerConfig(), clock)
        self.metrics = Metrics(operations=[ISSUE], business_codes=[])

    def page(self, *, interval: float = 10.0) -> StatusPage:
        return StatusPage(
            outbox=self.outbox,
            breakers=self.breakers,
            health=UpstreamHealth(self.clock),
            dispatcher=IdleDispatcher(),
            metrics=self.metrics,
            started_at=self.clock.wall(),
            clock=self.clock,
            interval=interval,
        )


def sampler_tasks() -> list[asyncio.Task[Any]]:
    """The status page's sampling tasks still running."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == "status-sampler" and not task.done()
    ]


async def until(condition: Callable[[], bool], *, turns: int = 1000) -> None:
    """Let the event loop run until `condition` holds (turns of the loop, no wall time)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_samples_every_interval_between_start_and_stop() -> None:
    """Started, the page adds a sample at once and one every interval on its clock."""
    clock = ManualClock(T0)
    outbox = FakeOutbox(queued=3)
    page = Parts(clock, outbox).page(interval=10.0)
    page.start()
    try:
        await until(lambda: [10.0] == clock.sleeps)
        clock.advance(10.0)
        await until(lambda: [10.0, 10.0] == clock.sleeps)
        found = await page.facts()
    finally:
        await page.stop()
    assert [
        {"ago_s": 10.0, "waiting": 3},
        {"ago_s": 0.0, "waiting": 3},
        {"ago_s": 0.0, "waiting": 3},
    ] == found["history"]["depth"]


async def test_start_is_idempotent() -> None:
    """Starting a running page again leaves one sampling task."""
    page = Parts(ManualClock(T0)).page()
    page.start()
    first = sampler_tasks()
    page.start()
    try:
        assert 1 == len(first)
        assert first == sampler_tasks()
    finally:
        await page.stop()


async def test_stop_ends_the_background_task() -> None:
    """`stop()` returns once the sampling task has ended, even while a sample is waiting on
    the store; stopping again is harmless and the page can be started anew."""
    clock = ManualClock(T0)
    outbox = FakeOutbox()
    outbox.hold()
    page = Parts(clock, outbox).page()
    page.start()
    await until(lambda: 1 == outbox.reads)
    await page.stop()
    assert (False, []) == (page.running, sampler_tasks())
    await page.stop()
    outbox.release()
    page.start()
    try:
        await until(lambda: [10.0] == clock.sleeps)
        assert (True, 1) == (page.running, len(sampler_tasks()))
    finally:
        await page.stop()
    assert [] == sampler_tasks()


async def test_a_sample_the_store_cannot_answer_is_kept_without_depth() -> None:
    """While the store cannot be read the sampling goes on; the page says the store is
    unavailable and the depth chart has no point for that time."""
    clock = ManualClock(T0)
    page = Parts(clock, BrokenOutbox()).page()
    page.start()
    try:
        await until(lambda: [10.0] == clock.sleeps)
        found = await page.facts()
    finally:
        await page.stop()
    assert ({"error": "disk I/O error"}, []) == (found["outbox"], found["history"]["depth"])


async def test_outages_come_from_the_breakers_it_is_handed() -> None:
    """The page watches the breakers it is given: a circuit opening is an outage since then."""
    clock = FakeClock(T0)
    parts = Parts(clock)
    page = parts.page()
    parts.breakers.force_open("maintenance")
    clock.advance(30)
    found = await page.facts()
    assert ("held", 30.0) == (
        found["availability"]["state"],
        found["availability"]["since_ago_s"],
    )
    assert [{"start_ago_s": 30.0, "end_ago_s": None}] == found["history"]["outages"]


def test_the_package_exports_its_public_surface() -> None:
    """`gateway.ops.status` exports the page, its history, its facts and the renderer, each
    defined."""
    assert [
        "CountedOutbox",
        "DispatcherState",
        "IncidentBoard",
        "Sample",
        "StatusFacts",
        "StatusHistory",
        "StatusPage",
        "history_sampler",
        "incident_message",
        "render",
    ] == status_package.__all__
    assert all(hasattr(status_package, name) for name in status_package.__all__)


# -- the incident line and the feed ------------------------------------------------------------

LINE = "开票平台故障，发票将在恢复后自动开具"


class FakeAuditLog:
    """An audit log in memory, newest first, a page at a time; counts the reads."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []
        self.reads = 0

    def record(self, action: str, at: float, actor: str = "oncall-alice", **details: Any) -> None:
        seq = len(self.entries) + 1
        self.entries.append(
            AuditEntry(actor, "operator", action, details=details or None, at=at, seq=seq)
        )

    async def audit_log(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        self.reads += 1
        start = int(cursor or 0)
        newest = self.entries[::-1]
        end = start + limit
        return newest[start:end], (str(end) if end < len(newest) else None)


def test_an_incident_line_is_one_line_of_at_most_280_characters() -> None:
    """Chinese counts by characters; blank, too long, several lines or not text are refused."""
    assert LINE == incident_message(f"  {LINE}  ")
    assert 280 == len(incident_message("故" * 280))
    for bad, why in (
        ("", "is empty"),
        ("   ", "is empty"),
        ("故" * 281, "is 281 characters long; at most 280"),
        ("one\ntwo", "single line"),
        ("bell\x07", "single line"),
        (42, "must be a string"),
    ):
        with pytest.raises(ValueError, match=why):
            incident_message(bad)


async def test_the_line_shown_is_the_latest_incident_entry_of_the_audit_log() -> None:
    """Set, replaced, cleared: the board shows the latest set line until a clear, and lists the
    lines newest first with when each was set and cleared (or replaced)."""
    log = FakeAuditLog()
    board = IncidentBoard(log)
    log.record("circuit-open", T0)
    log.record(SET, T0 + 1, message="first")
    log.record("dispatcher-pause", T0 + 2)
    await board.refresh()
    assert "first" == (board.current() or {}).get("message")
    log.record(SET, T0 + 60, actor="oncall-bob", message=LINE)
    await board.refresh()
    assert {
        "message": LINE,
        "set_at": "2027-01-15T08:01:00.000Z",
        "set_by": "oncall-bob",
        "cleared_at": None,
        "cleared_by": None,
    } == board.current()
    log.record(CLEAR, T0 + 120)
    await board.refresh()
    assert board.current() is None
    assert [(LINE, "2027-01-15T08:02:00.000Z"), ("first", "2027-01-15T08:01:00.000Z")] == [
        (line["message"], line["cleared_at"]) for line in board.incidents()
    ]


async def test_later_reads_stop_at_what_was_read_and_the_board_keeps_recent_lines() -> None:
    """The first read goes back far enough for the recent lines; later reads read one page
    when nothing new was recorded; the board keeps only the newest `RECENT` lines."""
    log = FakeAuditLog()
    for i in range(RECENT + 5):
        log.record(SET, T0 + i, message=f"line {i}")
        for _ in range(PAGE):
            log.record("submission-requeue", T0 + i)
    board = IncidentBoard(log)
    await board.refresh()
    first_reads = log.reads
    await board.refresh()
    assert 1 == log.reads - first_reads
    lines = board.incidents()
    assert RECENT == len(lines)
    assert (f"line {RECENT + 4}", "line 5") == (lines[0]["message"], lines[-1]["message"])


def test_the_incident_line_is_shown_first_as_text_with_when_and_who() -> None:
    """The line comes before the headline, escaped, with the time and the token's name."""
    incident = {
        "message": f"{LINE} {HOSTILE}",
        "set_at": "2026-11-27T10:02:13.000Z",
        "set_by": "oncall-alice",
        "cleared_at": None,
        "cleared_by": None,
    }
    page = render(facts(incident=incident))
    assert page.index(LINE) < page.index("<h1")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert" in page
    assert "Notice set at 10:02:13 UTC by oncall-alice" in page
    assert 'class="incident"' not in render(facts(incident=None))


def test_an_outage_counts_what_was_queued_during_it_and_delivered_after_it() -> None:
    """Queued from the first breaker opening to the last closing; delivered from then until the
    next outage starts; times in ISO 8601, newest outage first."""
    clock = FakeClock(T0)
    totals = {"queued": 2.0, "delivered": 5.0}
    history = StatusHistory(clock, counters=lambda: Counters(**totals))
    history.transition("upstream", CircuitState.CLOSED, CircuitState.OPEN, "5 failures")
    totals["queued"] += 7
    clock.advance(60)
    assert [{"start": iso_utc(T0), "end": None, "queued_during": 7, "delivered_after": 0}] == (
        history.outage_log()
    )
    history.transition("upstream", CircuitState.OPEN, CircuitState.CLOSED, "trial passed")
    totals["queued"] += 3  # after the outage: not counted
    totals["delivered"] += 6
    assert (7, 6) == tuple(history.outage_log()[0][k] for k in ("queued_during", "delivered_after"))
    clock.advance(60)
    history.transition("upstream", CircuitState.CLOSED, CircuitState.OPEN, "again")
    totals["delivered"] += 4  # during the next outage: not the first one's
    first = history.outage_log()[1]
    assert (iso_utc(T0 + 60), 7, 6) == (
        first["end"],
        first["queued_during"],
        first["delivered_after"],
    )


async def test_the_sampler_reads_the_incident_line_every_watch_interval() -> None:
    """With an audit log the sampler wakes every 2 s for the line and samples every 10 s."""
    clock = ManualClock(T0)
    log = FakeAuditLog()
    parts = Parts(clock)
    page = StatusPage(
        outbox=parts.outbox,
        breakers=parts.breakers,
        health=UpstreamHealth(clock),
        dispatcher=IdleDispatcher(),
        metrics=parts.metrics,
        started_at=T0,
        clock=clock,
        audit=log,
    )
    page.start()
    try:
        await until(lambda: [2.0] == clock.sleeps)
        log.record(SET, T0 + 1, message=LINE)
        clock.advance(2.0)
        await until(lambda: 2 == len(clock.sleeps))
        assert LINE == (page.incidents.current() or {}).get("message")
        for ticks in range(3, 7):
            clock.advance(2.0)
            await until(lambda ticks=ticks: ticks == len(clock.sleeps))  # type: ignore[misc]
        sampled = parts.outbox.reads
    finally:
        await page.stop()
    assert ([2.0] * 6, 2) == (clock.sleeps, sampled)  # samples at 0 s and 10 s


OPERATOR = "status-unit-operator-token-0123"


async def test_an_incident_set_through_the_admin_api_is_on_the_page_and_in_the_feed(
    tmp_path: Path,
) -> None:
    """PUT shows the line at once on this replica's page and feed (public, cacheable, readable
    from any origin); DELETE removes it; a line too long is a 400 naming `message`."""
    token = {"name": "oncall-alice", "role": "operator", "token": {"env": "STATUS_OPERATOR"}}
    config = refused_platform(tmp_path, admin={"tokens": [token]})
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    async with open_gateway(config) as gateway:
        admin = TestClient(TestServer(admin_app(gateway), host="127.0.0.1"))
        public = TestClient(TestServer(client_app(gateway), host="127.0.0.1"))
        async with admin, public:
            path = "/admin/v1/status/incident"
            too_long = await admin.put(path, json={"message": "故" * 281}, headers=auth)
            assert (400, "message") == (too_long.status, (await too_long.json())["parameter"])
            answer = await admin.put(path, json={"message": LINE, "reason": "drill"}, headers=auth)
            assert (200, LINE) == (answer.status, (await answer.json())["incident"]["message"])
            assert LINE in await (await public.get("/status")).text()
            feed = await public.get("/status/feed.json")
            document = await feed.json()
            assert ("public, max-age=10", "*") == (
                feed.headers["Cache-Control"],
                feed.headers["Access-Control-Allow-Origin"],
            )
            assert (LINE, "oncall-alice") == (
                document["incident"]["message"],
                document["incident"]["set_by"],
            )
            assert LINE.encode() in await feed.read()  # as written, not as escapes
            cleared = await admin.delete(path, params={"reason": "back"}, headers=auth)
            assert (200, None) == (cleared.status, (await cleared.json())["incident"])
            document = await (await public.get("/status/feed.json")).json()
            assert document["incident"] is None
            assert [LINE] == [line["message"] for line in document["incidents"]]
            assert document["incidents"][0]["cleared_at"] is not None
            assert LINE not in await (await public.get("/status")).text()
        entries, _ = await gateway.store.audit_log(limit=10, cursor=None)
        assert [CLEAR, SET] == [entry.action for entry in entries[:2]]


class FailingAuditLog(FakeAuditLog):
    """An audit log whose store stops answering when `down` is set."""

    down = False

    async def audit_log(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        if self.down:
            raise StoreError("connection refused")
        return await super().audit_log(limit=limit, cursor=cursor)


async def test_while_the_store_cannot_be_read_the_last_line_stays() -> None:
    """The sampler's read does not fail while the store is down: the line read last stays,
    and a line recorded meanwhile shows once the store answers again."""
    log = FailingAuditLog()
    board = IncidentBoard(log)
    log.record(SET, T0, message="first")
    await board.follow()
    log.down = True
    log.record(SET, T0 + 5, message=LINE)
    await board.follow()
    assert "first" == (board.current() or {}).get("message")
    log.down = False
    await board.follow()
    assert LINE == (board.current() or {}).get("message")


def test_reads_on_the_backup_address_are_said_and_primary_is_not() -> None:
    assert "backup address" in render(facts(reads_endpoint="backup"))
    assert "backup address" not in render(facts(reads_endpoint="primary"))
    assert "backup address" not in render(facts(reads_endpoint=None))
