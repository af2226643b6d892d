"""The demo: its traffic generator and statistics, its outbox tracking, its plan and wording,
and one real run."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.config import load_config
from gateway.edge.intake import STATUS_PATH as GATEWAY_STATUS_PATH
from gateway.tools.children import Endpoints, LedgerTotals, write_gateway_config
from gateway.tools.demo import (
    DEMO_OVERRIDES,
    DemoError,
    OutboxTracker,
    Plan,
    Scenario,
    StatusPoller,
    describe_ledger,
    describe_outage,
)
from gateway.tools.demo.outbox import STATUS_PATH, parse_time
from gateway.tools.demo.view import DemoState, Event, PlainView, describe_drain, is_alert
from gateway.tools.loadgen import (
    NO_ANSWER,
    OUTCOMES,
    QUERY_OPERATION,
    QUEUED_DETAIL,
    SUBMIT_OPERATION,
    UNLABELLED,
    InvoiceFactory,
    Result,
    TrafficGenerator,
    TrafficStats,
    outcome_of,
    percentile,
    read_answer,
)
from gateway.tools.simulator.ledger import Ledger
from gateway.tools.simulator.operations import OperationContext, request_billing
from gateway.tools.simulator.tax_numbers import is_valid_tax_number, make_tax_number
from tests.support.processes import ROOT

SELLER = make_tax_number(424242)
PROBLEM_502 = (
    b'{"type": "urn:invoice-gateway:problem:upstream-unreachable", '
    b'"title": "Invoice platform unreachable", "status": 502}'
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answer(outcome: str, status: int = 200) -> Result:
    return Result("submit", outcome, status, 0.01)


# -- statistics ---------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; p100 is the maximum."""
    values = [float(v) for v in range(100, 0, -1)]
    assert (50.0, 99.0, 100.0) == (
        percentile(values, 50),
        percentile(values, 99),
        percentile(values, 100),
    )


def test_percentile_of_few_or_no_values() -> None:
    """One value is every percentile; no values have none."""
    assert (7.0, 7.0, None) == (percentile([7.0], 1), percentile([7.0], 99), percentile([], 50))


def test_outcome_comes_from_the_gateway_header() -> None:
    """The outcome is the X-Gateway-Outcome header, read case-insensitively."""
    headers = CIMultiDict({"x-gateway-outcome": "Queued"})
    assert "queued" == outcome_of(headers)


def test_answer_without_outcome_header_is_unlabelled() -> None:
    """An answer that did not come through the gateway's proxy is counted apart."""
    assert UNLABELLED == outcome_of(CIMultiDict({"Content-Type": "text/plain"}))


def test_forwarded_success_is_an_accepted_submission() -> None:
    """A submission answered 200 with code E0000 counts as accepted, with the code as detail."""
    result = read_answer(
        "submit",
        200,
        CIMultiDict({"X-Gateway-Outcome": "forwarded"}),
        b'{"code": "E0000", "describe": "ok", "result": {"invoiceSerialNum": "1"}}',
        0.003,
    )
    assert ("forwarded", True, "platform code E0000") == (
        result.outcome,
        result.accepted,
        result.detail,
    )


def test_queued_submission_is_accepted() -> None:
    """A 202 (queued in the outbox) counts as accepted, with its submission id and order number."""
    result = read_answer(
        "submit",
        202,
        CIMultiDict({"X-Gateway-Outcome": "queued"}),
        b'{"submission_id": "s1", "status": "queued", "status_url": "/gateway/v1/submissions/s1"}',
        0.002,
        order_no="D1",
    )
    assert ("queued", True, "s1", "D1", QUEUED_DETAIL, False) == (
        result.outcome,
        result.accepted,
        result.submission_id,
        result.order_no,
        result.detail,
        result.replayed,
    )


def test_replayed_202_is_marked_as_a_replay() -> None:
    """A 202 with `Idempotent-Replayed: true` is the same submission answered again."""
    headers = CIMultiDict({"X-Gateway-Outcome": "replayed", "Idempotent-Replayed": "true"})
    result = read_answer("submit", 202, headers, b'{"submission_id": "s1"}', 0.001)
    assert (True, True, "s1") == (result.replayed, result.accepted, result.submission_id)


def test_circuit_open_answer_names_its_problem() -> None:
    """A 503 refused at once because the circuit is open carries the problem's slug."""
    body = b'{"type": "urn:invoice-gateway:problem:circuit-open", "title": "Unavailable"}'
    result = read_answer("read", 503, CIMultiDict({"X-Gateway-Outcome": "rejected"}), body, 0.001)
    assert ("circuit-open", None) == (result.problem, result.order_no)


def test_problem_answer_is_rejected_with_its_title() -> None:
    """A problem+json 502 is not accepted and is described by its title."""
    result = read_answer(
        "submit", 502, CIMultiDict({"X-Gateway-Outcome": "rejected"}), PROBLEM_502, 0.001
    )
    assert ("rejected", False, "Invoice platform unreachable", False) == (
        result.outcome,
        result.accepted,
        result.detail,
        result.uncertain,
    )


def test_lost_answer_makes_a_submission_uncertain() -> None:
    """A 504 outcome-unknown submission may have been issued: it is uncertain, not accepted."""
    body = b'{"type": "urn:invoice-gateway:problem:outcome-unknown", "title": "Outcome unknown"}'
    result = read_answer("submit", 504, CIMultiDict({"X-Gateway-Outcome": "rejected"}), body, 0.001)
    assert (False, True) == (result.accepted, result.uncertain)


def test_read_is_never_an_accepted_submission() -> None:
    """A successful result query is forwarded but is not a submission."""
    result = read_answer(
        "read", 200, CIMultiDict({"X-Gateway-Outcome": "forwarded"}), b'{"code": "E0000"}', 0.001
    )
    assert (False, False) == (result.accepted, result.uncertain)


def test_stats_count_outcomes_statuses_and_submissions() -> None:
    """Totals are kept by outcome, by HTTP status, and for submissions alone."""
    stats = TrafficStats(clock=FakeClock())
    stats.record(Result("submit", "forwarded", 200, 0.01, accepted=True))
    stats.record(Result("read", "forwarded", 200, 0.01))
    stats.record(Result("submit", "rejected", 502, 0.01))
    stats.record(Result("submit", NO_ANSWER, 0, 0.01, uncertain=True))
    assert (
        {"forwarded": 2, "rejected": 1, NO_ANSWER: 1},
        {200: 2, 502: 1, 0: 1},
        {"forwarded": 1, "rejected": 1, NO_ANSWER: 1},
        1,
        1,
        4,
    ) == (
        dict(stats.outcomes),
        dict(stats.statuses),
        dict(stats.submissions),
        stats.accepted,
        stats.uncertain,
        stats.total,
    )


def test_rates_are_per_second_over_the_window() -> None:
    """Ten answers in the last five seconds are 2/s; older ones no longer count."""
    clock = FakeClock()
    stats = TrafficStats(window_s=5.0, clock=clock)
    for _ in range(20):
        stats.record(answer("rejected", 502))
    clock.now += 10
    for _ in range(8):
        stats.record(answer("forwarded"))
    stats.record(answer("queued", 202))
    stats.record(answer("weird"))
    assert {"forwarded": 1.6, "queued": 0.2, "replayed": 0.0, "rejected": 0.0, "weird": 0.2} == (
        stats.rates()
    )


def test_rates_list_every_known_outcome_in_order() -> None:
    """The view always shows forwarded, queued, replayed, rejected, even at zero."""
    assert list(OUTCOMES) == list(TrafficStats(clock=FakeClock()).rates())


def test_rates_right_after_start_use_the_time_so_far() -> None:
    """One second after start, five answers are 5/s, not 1/s over a five-second window."""
    clock = FakeClock()
    stats = TrafficStats(window_s=5.0, clock=clock)
    clock.now += 1
    for _ in range(5):
        stats.record(answer("forwarded"))
    assert 5.0 == stats.rate()


def test_latency_percentiles_cover_the_window_only() -> None:
    """Slow answers from before the window do not weigh on p99."""
    clock = FakeClock()
    stats = TrafficStats(window_s=5.0, clock=clock)
    stats.record(Result("submit", "rejected", 504, 15.0))
    clock.now += 6
    for ms in range(1, 101):
        stats.record(Result("submit", "forwarded", 200, ms / 1000))
    assert (0.05, 0.099) == (stats.latency(50), stats.latency(99))


# -- bodies -------------------------------------------------------------------------------------


def test_order_numbers_are_unique() -> None:
    """Every submission has its own order number."""
    factory = InvoiceFactory(SELLER, seed=1)
    numbers = [factory.submission()[0] for _ in range(2000)]
    assert len(numbers) == len(set(numbers))


def test_same_seed_gives_the_same_invoices() -> None:
    """A seeded factory is repeatable (apart from the invoice date)."""

    def bodies() -> list[dict[str, Any]]:
        factory = InvoiceFactory(SELLER, seed=7, prefix="T")
        out = []
        for _ in range(20):
            _, body = factory.submission()
            body["order"].pop("invoiceDate")
            out.append(body)
        return out

    assert bodies() == bodies()


def test_invoice_lines_add_up() -> None:
    """Each line's amount is price times quantity, split into net and tax at its rate."""
    factory = InvoiceFactory(SELLER, seed=3)
    for _ in range(200):
        _, body = factory.submission()
        for line in body["order"]["invoiceDetail"]:
            gross = Decimal(line["taxIncludedAmount"])
            net = Decimal(line["taxExcludedAmount"])
            assert Decimal(line["price"]) * Decimal(line["num"]) == gross
            assert gross - net == Decimal(line["tax"])
            assert abs(net * (1 + Decimal(line["taxRate"])) - gross) <= Decimal("0.01")
            assert line["goodsName"]
            assert len(line["goodsCode"]) == 19


def test_buyers_have_valid_tax_numbers_or_are_people() -> None:
    """Buyer tax numbers pass the credit-code check; a private buyer has none."""
    factory = InvoiceFactory(SELLER, seed=5)
    orders = [factory.submission()[1]["order"] for _ in range(300)]
    assert all(is_valid_tax_number(o["buyerTaxNum"]) or o["buyerTaxNum"] == "" for o in orders)
    assert any(o["buyerTaxNum"] == "" for o in orders)
    assert all(o["salerTaxNum"] == SELLER and o["buyerName"] for o in orders)


def test_simulator_accepts_and_issues_the_generated_invoices() -> None:
    """The simulator answers E0000 to every generated body and will issue it (no fail cause)."""
    ledger = Ledger()
    context = OperationContext(
        ledger=ledger,
        seller_tax_num=SELLER,
        now=0.0,
        wall=time.time(),
        issue_delay_s=1.0,
        dedup=True,
    )
    factory = InvoiceFactory(SELLER, seed=11)
    for _ in range(100):
        _, body = factory.submission()
        reply = request_billing(context, body)
        assert b'"E0000"' in reply.body
    totals = ledger.snapshot(now=2.0, with_invoices=False)["totals"]
    assert (100, 100, 0) == (totals["accepted"], totals["issued"], totals["failed"])


def test_query_asks_for_a_few_known_orders() -> None:
    """A result query names one to three of the given order numbers."""
    factory = InvoiceFactory(SELLER, seed=2)
    known = [f"D{n}" for n in range(10)]
    for _ in range(50):
        body = factory.query(known)
        assert 1 <= len(body["orderNos"]) <= 3
        assert set(body["orderNos"]) <= set(known)


# -- the sender ---------------------------------------------------------------------------------


async def test_generator_sends_at_the_rate_and_counts_answers() -> None:
    """At 100/s for half a second about 50 requests go out, each counted by its outcome."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers["method"])
        assert request.headers["X-Api-Key"] == "k"
        return web.json_response(
            {"code": "E0000", "result": {"invoiceSerialNum": "1"}},
            headers={"X-Gateway-Outcome": "forwarded"},
        )

    app = web.Application()
    app.router.add_post("/open/v1/services", handle)
    stop = asyncio.Event()
    handed: list[Result] = []
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        stats = TrafficStats()
        generator = TrafficGenerator(
            session,
            str(server.make_url("/")),
            "k",
            InvoiceFactory(SELLER, seed=1, prefix="T"),
            stats,
            rate=100,
            seed=1,
            on_result=handed.append,
        )
        asyncio.get_running_loop().call_later(0.5, stop.set)
        await generator.run(stop)
    assert 35 <= stats.total <= 60
    assert stats.total == stats.outcomes["forwarded"] == len(seen) == len(handed)
    assert SUBMIT_OPERATION in seen
    assert QUERY_OPERATION in seen
    submitted = [r.order_no for r in handed if r.kind == "submit"]
    assert all(n and n.startswith("T") for n in submitted)
    assert len(submitted) == len(set(submitted))
    assert all(r.order_no is None for r in handed if r.kind == "read")


# -- the outbox as the client sees it -----------------------------------------------------------


def forwarded(order_no: str) -> Result:
    return Result("submit", "forwarded", 200, 0.01, accepted=True, order_no=order_no)


def queued(order_no: str, submission_id: str, *, replayed: bool = False) -> Result:
    outcome = "replayed" if replayed else "queued"
    return Result(
        "submit",
        outcome,
        202,
        0.01,
        accepted=True,
        order_no=order_no,
        submission_id=submission_id,
        replayed=replayed,
    )


def circuit_open_read() -> Result:
    return Result("read", "rejected", 503, 0.001, problem="circuit-open")


def tracker_with(*results: Result) -> OutboxTracker:
    tracker = OutboxTracker(wall=lambda: 1000.0)
    for result in results:
        tracker.observe(result)
    return tracker


def test_tracker_counts_forwarded_as_delivered_and_202_as_queued() -> None:
    """A 200 with the platform's success code is delivered; a 202 waits in the outbox."""
    tracker = tracker_with(forwarded("D1"), forwarded("D2"), queued("D3", "s3"))
    assert (3, 2, 1, 2, 1, ["s3"]) == (
        tracker.accepted,
        tracker.forwarded,
        tracker.queued_total,
        tracker.delivered,
        tracker.queued_now,
        tracker.pending(),
    )


def test_tracker_counts_a_replayed_submission_once() -> None:
    """The same order number answered again (a replayed 202) is one accepted submission."""
    tracker = tracker_with(queued("D1", "s1"), queued("D1", "s1", replayed=True))
    assert (1, 1, 1) == (tracker.accepted, tracker.queued_total, tracker.replays)


def test_tracker_ignores_what_was_not_accepted() -> None:
    """Refused submissions and reads are not the outbox's; a circuit-open 503 is counted."""
    tracker = tracker_with(
        Result("submit", "rejected", 503, 0.01, order_no="D1"),
        Result("read", "forwarded", 200, 0.01),
        circuit_open_read(),
    )
    assert (0, 1) == (tracker.accepted, tracker.circuit_open_answers)


def test_replayed_final_answer_marks_a_queued_submission_delivered() -> None:
    """A later 200 for a queued order number (its stored answer, replayed) means delivered."""
    tracker = tracker_with(queued("D1", "s1"), forwarded("D1"))
    assert (1, 1, 0, []) == (
        tracker.accepted,
        tracker.delivered,
        tracker.queued_now,
        tracker.pending(),
    )


def test_tracker_follows_status_updates() -> None:
    """Delivered and failed are final; unknown is still pending; unknown ids are ignored."""
    tracker = tracker_with(queued("D1", "s1"), queued("D2", "s2"), queued("D3", "s3"))
    changed = [
        tracker.update("s1", "delivered", 999.0),
        tracker.update("s1", "delivered", 999.5),
        tracker.update("s2", "failed"),
        tracker.update("s3", "unknown"),
        tracker.update("nope", "delivered"),
    ]
    assert [True, False, True, True, False] == changed
    assert (1, 2, 1, ["s3"], Counter({"unknown": 1}), False) == (
        tracker.drained,
        tracker.final,
        tracker.queued_now,
        tracker.pending(),
        tracker.unfinished(),
        tracker.settled,
    )


def test_dead_submissions_settle_but_stay_unfinished() -> None:
    """A dead submission changes no more without on-call: nothing to wait for, yet undelivered."""
    tracker = tracker_with(queued("D1", "s1"), forwarded("D2"))
    tracker.update("s1", "dead")
    assert (True, [], Counter({"dead": 1}), 1) == (
        tracker.settled,
        tracker.pending(),
        tracker.unfinished(),
        tracker.queued_now,
    )


def test_pending_lists_the_oldest_first_up_to_a_limit() -> None:
    """Only unsettled submissions are asked about, in acceptance order."""
    tracker = tracker_with(*(queued(f"D{n}", f"s{n}") for n in range(6)))
    tracker.update("s1", "delivered", 999.0)
    assert ["s0", "s2", "s3"] == tracker.pending(3)


def test_drain_rate_over_the_last_window() -> None:
    """Deliveries in the last window per second; older ones no longer count."""
    tracker = OutboxTracker(window_s=3.0, wall=lambda: 1000.0)
    for n in range(40):
        tracker.observe(queued(f"D{n}", f"s{n}"))
    for n in range(10):  # long ago
        tracker.update(f"s{n}", "delivered", 900.0)
    for n in range(10, 40):  # 30 in the last 2 s
        tracker.update(f"s{n}", "delivered", 998.0 + (n - 10) / 30)
    assert 15.0 == tracker.drain_rate()


def test_drain_rate_early_in_a_drain_uses_the_time_so_far() -> None:
    """Twenty deliveries in the last second are 20/s, not 20 over the whole window."""
    tracker = OutboxTracker(window_s=3.0, wall=lambda: 1000.0)
    for n in range(20):
        tracker.observe(queued(f"D{n}", f"s{n}"))
        tracker.update(f"s{n}", "delivered", 999.0 + n / 20)
    assert 20.0 == tracker.drain_rate()


def test_overall_drain_rate_needs_a_few_deliveries() -> None:
    """Eleven deliveries over a quarter second are 40/s; one delivery gives no rate."""
    tracker = tracker_with(*(queued(f"D{n}", f"s{n}") for n in range(11)))
    tracker.update("s0", "delivered", 100.0)
    alone = tracker.overall_drain_rate()
    for n in range(1, 11):
        tracker.update(f"s{n}", "delivered", 100.0 + n * 0.025)
    rate = tracker.overall_drain_rate()
    assert alone is None
    assert rate == pytest.approx(40.0)


def test_status_times_are_read_as_utc() -> None:
    """The status endpoint's timestamps are UTC with milliseconds; anything else is None."""
    assert (1714550400.25, None, None) == (
        parse_time("2024-05-01T08:00:00.250Z"),
        parse_time(None),
        parse_time("yesterday"),
    )


def test_status_path_is_the_gateways() -> None:
    """The demo asks where the gateway answers."""
    assert GATEWAY_STATUS_PATH == STATUS_PATH


async def test_poller_asks_only_about_unsettled_submissions() -> None:
    """Each round asks the oldest unsettled ones, with the tenant's key, a few at a time."""
    asked: list[str] = []
    in_flight, most = 0, 0
    statuses = {"s0": "delivered", "s1": "queued", "s2": "failed", "s3": "delivering"}

    async def status(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        assert request.headers["X-Api-Key"] == "k"
        submission_id = request.match_info["id"]
        asked.append(submission_id)
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        if submission_id not in statuses:
            return web.json_response({"title": "not found"}, status=404)
        delivered = "2024-05-01T08:00:00.250Z" if statuses[submission_id] == "delivered" else None
        return web.json_response(
            {
                "submission_id": submission_id,
                "status": statuses[submission_id],
                "delivered_at": delivered,
            }
        )

    app = web.Application()
    app.router.add_get("/gateway/v1/submissions/{id}", status)
    tracker = tracker_with(forwarded("F"), *(queued(f"D{n}", f"s{n}") for n in range(6)))
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        poller = StatusPoller(
            session, str(server.make_url("/")), "k", tracker, concurrency=2, batch=5
        )
        first = await poller.poll_once()
        asked_first = sorted(asked)
        asked.clear()
        second = await poller.poll_once()
    assert ((5, 2), ["s0", "s1", "s2", "s3", "s4"]) == (first, asked_first)
    assert ((4, 0), ["s1", "s3", "s4", "s5"]) == (second, sorted(asked))
    assert 2 == most
    assert (1, 1, ["s1", "s3", "s4", "s5"]) == (
        tracker.drained,
        tracker.statuses()["failed"],
        tracker.pending(),
    )


class RecordingView:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def start(self) -> None: ...
    def tick(self) -> None: ...
    def stop(self) -> None: ...

    def event(self, event: Event) -> None:
        self.events.append(event)


def scenario_for_narration(tmp_path: Path) -> tuple[Scenario, DemoState, RecordingView]:
    """A scenario whose narration can be driven by hand (nothing runs)."""
    state = DemoState(
        plan(),
        Endpoints(1, 2, 3, 4),
        TrafficStats(clock=FakeClock()),
        tmp_path,
        keep=False,
        outbox=OutboxTracker(wall=lambda: 1000.0),
    )
    view = RecordingView()
    nothing: Any = None
    scenario = Scenario(state, view, nothing, nothing, nothing, [], asyncio.Event())
    return scenario, state, view


def feed(state: DemoState, *results: Result) -> None:
    for result in results:
        state.stats.record(result)
        state.outbox.observe(result)


def test_narration_of_an_outage_and_the_drain(tmp_path: Path) -> None:
    """First queued answer: circuit opened; queued ones delivered: the outage and the drain."""
    scenario, state, view = scenario_for_narration(tmp_path)
    feed(state, forwarded("D0"))
    scenario.watch_outbox()
    quiet = list(view.events)
    feed(state, queued("D1", "s1"), circuit_open_read())
    scenario.watch_outbox()
    opened = state.circuit_open
    feed(state, queued("D2", "s2"), queued("D3", "s3"))
    scenario.watch_outbox()
    for n in (1, 2, 3):
        state.outbox.update(f"s{n}", "delivered", 998.0 + n * 0.5)
    scenario.watch_outbox()
    assert ([], True, False) == (quiet, opened, state.circuit_open)
    assert [
        "platform down — circuit opened",
        "queued 3 submissions during the outage",
        "platform back — draining ~2/s",
    ] == [event.text for event in view.events]


def test_forwarding_again_means_the_circuit_closed(tmp_path: Path) -> None:
    """A submission forwarded at once after the circuit opened: closed, the drain not yet told."""
    scenario, state, view = scenario_for_narration(tmp_path)
    feed(state, queued("D1", "s1"))
    scenario.watch_outbox()
    opened = state.circuit_open
    feed(state, forwarded("D2"))
    scenario.watch_outbox()
    assert (True, False, ["platform down — circuit opened"]) == (
        opened,
        state.circuit_open,
        [event.text for event in view.events],
    )


def test_after_a_recovery_only_circuit_open_reopens(tmp_path: Path) -> None:
    """A stray 202 after the drain (an answer lost on the way back) is no new outage."""
    scenario, state, view = scenario_for_narration(tmp_path)
    feed(state, queued("D1", "s1"))
    scenario.watch_outbox()
    state.outbox.update("s1", "delivered", 999.0)
    scenario.watch_outbox()
    told = len(view.events)
    feed(state, queued("D2", "s2"))
    scenario.watch_outbox()
    stray = len(view.events)
    feed(state, circuit_open_read())
    scenario.watch_outbox()
    assert (told, "platform down — circuit opened") == (stray, view.events[-1].text)


class NoLedger:
    async def ledger(self) -> None:
        return None


async def test_settle_gives_up_after_its_timeout_and_says_what_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain that does not finish is reported prominently, by status, when time is up."""
    monkeypatch.setattr("gateway.tools.demo.scenario.SETTLE_TIMEOUT_S", 0.3)
    state = DemoState(
        plan(),
        Endpoints(1, 2, 3, 4),
        TrafficStats(clock=FakeClock()),
        tmp_path,
        keep=False,
        outbox=tracker_with(queued("D1", "s1"), queued("D2", "s2"), forwarded("D3")),
    )
    state.outbox.update("s2", "unknown")
    view = RecordingView()
    nothing: Any = None
    control: Any = NoLedger()
    scenario = Scenario(state, view, control, nothing, nothing, [], asyncio.Event())
    started = time.monotonic()
    await scenario.settle()
    assert time.monotonic() - started < 2
    assert [
        ("draining: 0 of 2 delivered", False),
        ("NOT SETTLED after 0.3 s — still in the outbox: 1 queued, 1 unknown", True),
    ] == [(event.text, event.alert) for event in view.events]


def test_plain_view_marks_alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An alert stands out in plain output."""
    _, state, _ = scenario_for_narration(tmp_path)
    view = PlainView(state)
    view.event(Event(61.0, "NOT SETTLED: 1 accepted", alert=True))
    view.event(Event(62.0, "all delivered", alert=False))
    assert "[01:01] !! NOT SETTLED: 1 accepted\n[01:02] all delivered\n" == capsys.readouterr().out


# -- plan and wording ---------------------------------------------------------------------------


def plan(**overrides: Any) -> Plan:
    args = {"duration": 60.0, "rate": 20.0, "outage_at": None, "outage_for": None, **overrides}
    return Plan.from_args(argparse.Namespace(**args))


def test_default_plan_has_an_outage_in_the_middle() -> None:
    """A minute: healthy for 15 s, down for 20 s, traffic until 55 s, then settle."""
    default = plan()
    assert (15.0, 20.0, 55.0) == (
        default.outage_at_s,
        default.outage_for_s,
        default.traffic_until_s,
    )
    assert ["healthy", "outage", "recovery", "settle"] == [
        default.phase(t) for t in (1, 20, 40, 57)
    ]


def test_outage_must_end_before_traffic_stops() -> None:
    """An outage running past the traffic is refused with a message naming the options."""
    with pytest.raises(DemoError, match="--outage-for"):
        plan(duration=10.0, outage_at=5.0, outage_for=5.0)


def test_outage_for_zero_means_no_outage() -> None:
    """With --outage-for 0 the scenario never enters the outage phase."""
    calm = plan(outage_at=0.0, outage_for=0.0)
    assert "healthy" == calm.phase(0.0)


def test_outage_summary_without_an_outbox() -> None:
    """Refused submissions are reported as such, noting there is no outbox yet."""
    assert "12 submissions refused during the outage (no outbox yet)" == describe_outage(
        {"rejected": 12, "forwarded": 2}
    )


def test_outage_summary_with_queueing() -> None:
    """Once submissions are queued, the summary says so first."""
    assert (
        "queued 120 submissions during the outage, 3 submissions refused during the outage"
        == describe_outage({"queued": 120, "rejected": 3})
    )


def test_ledger_line_when_everything_adds_up() -> None:
    """Accepted equals issued, none twice: all delivered."""
    ledger = LedgerTotals(accepted=480, issued=480, issuing=0, failed=0, doubles=0)
    assert "all delivered: 480 accepted, 480 issued, 0 issued twice" == describe_ledger(
        480, 0, ledger
    )


def test_ledger_line_allows_for_lost_answers() -> None:
    """An invoice issued for a submission whose answer was lost still adds up."""
    ledger = LedgerTotals(accepted=11, issued=11, issuing=0, failed=0, doubles=0)
    assert describe_ledger(10, 1, ledger).startswith("all delivered: 10 accepted, 11 issued")


def test_ledger_line_with_submissions_still_in_the_outbox() -> None:
    """Submissions not yet delivered make the check NOT SETTLED, naming them by status."""
    ledger = LedgerTotals(accepted=8, issued=8, issuing=0, failed=0, doubles=0)
    line = describe_ledger(10, 0, ledger, unfinished=Counter({"queued": 1, "unknown": 1}))
    assert line == (
        "NOT SETTLED: 10 accepted, 8 issued, 0 issued twice (2 not delivered: 1 queued, 1 unknown)"
    )
    assert is_alert(line)


def test_ledger_line_with_submissions_the_platform_refused() -> None:
    """A queued submission the platform refused for good is settled, not missing."""
    ledger = LedgerTotals(accepted=10, issued=9, issuing=0, failed=0, doubles=0)
    line = describe_ledger(10, 0, ledger, failed=1)
    assert line.startswith("all settled: 10 accepted, 9 issued, 0 issued twice")
    assert not is_alert(line)


def test_drain_wording() -> None:
    """The drain is told with its rate when one could be measured."""
    assert ("platform back — draining ~38/s", "platform back — draining the outbox") == (
        describe_drain(38.4),
        describe_drain(None),
    )


def test_demo_profile_is_valid_and_lively(tmp_path: Path) -> None:
    """The default profile plus the demo timings passes validation with the demo's values."""
    path = write_gateway_config(tmp_path, Endpoints(1, 2, 3, 4), DEMO_OVERRIDES)
    env = {
        "NUONUO_APP_KEY": "k",
        "NUONUO_APP_SECRET": "s",
        "NUONUO_USER_TAX": SELLER,
        "GATEWAY_DEMO_API_KEY": "demo-key",
    }
    config = load_config(path, env)
    probe = config.resilience.probe
    assert probe is not None
    assert (1.0, 2, 3.0, 0.2, 2.0, 40.0) == (
        probe.interval,
        probe.healthy_threshold,
        config.resilience.breaker.reset_timeout,
        config.outbox.backoff.base,
        config.outbox.backoff.cap,
        config.outbox.dispatcher.rate,
    )


def test_ledger_line_flags_doubles_and_missing_invoices() -> None:
    """Doubles and missing invoices are called out, unfinished issuance is not a loss."""
    doubled = LedgerTotals(accepted=11, issued=11, issuing=0, failed=0, doubles=1)
    short = LedgerTotals(accepted=9, issued=9, issuing=0, failed=0, doubles=0)
    busy = LedgerTotals(accepted=10, issued=9, issuing=1, failed=0, doubles=0)
    assert ["DOUBLES", "MISSING", "not settled yet"] == [
        describe_ledger(10, 0, ledger).split(":")[0] for ledger in (doubled, short, busy)
    ]


# -- a real run ---------------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration
def test_demo_runs_through_an_outage_and_cleans_up() -> None:
    """A short demo exits 0, queues during the outage, drains after it, checks the ledger
    (accepted = issued, none twice), and leaves nothing behind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "gateway", "demo", "--duration", "8"]
    argv += ["--outage-at", "2", "--outage-for", "3", "--seed", "1"]
    completed = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=40, check=False
    )
    out = completed.stdout
    assert 0 == completed.returncode, completed.stderr + out
    assert "\x1b" not in out
    assert "outage injected" in out
    assert "platform down — circuit opened" in out
    assert re.search(r"platform back — draining", out), out
    queued = re.search(r"queued (\d+) submissions during the outage", out)
    assert queued is not None, out
    assert int(queued.group(1)) > 0
    ledger = re.search(r"all delivered: (\d+) accepted, (\d+) issued, 0 issued twice", out)
    assert ledger is not None, out
    assert int(ledger.group(1)) == int(ledger.group(2)) > 0
    pids = [int(pid) for pid in re.findall(r"\bpid (\d+)", out)]
    assert 2 == len(pids), out
    assert all(process_gone(pid) for pid in pids)
    workdir = re.search(r"files\s+(\S+)", out)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
