"""The demo: its traffic generator and statistics, its plan and wording, and one real run."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.demo import (
    Child,
    ChildStartError,
    DemoError,
    LedgerTotals,
    Plan,
    describe_ledger,
    describe_outage,
    stop_children,
    wait_ready,
)
from gateway.loadgen import (
    NO_ANSWER,
    OUTCOMES,
    QUERY_OPERATION,
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
from gateway.simulator.ledger import Ledger
from gateway.simulator.operations import OperationContext, request_billing
from gateway.simulator.tax_numbers import is_valid_tax_number, make_tax_number

ROOT = Path(__file__).resolve().parents[2]
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
    """A 202 (queued in the outbox) counts as accepted."""
    result = read_answer(
        "submit",
        202,
        CIMultiDict({"X-Gateway-Outcome": "queued"}),
        b'{"submission_id": "s1", "status": "queued"}',
        0.002,
    )
    assert ("queued", True) == (result.outcome, result.accepted)


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
        duplicate_detection=True,
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
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        stats = TrafficStats()
        generator = TrafficGenerator(
            session,
            str(server.make_url("/")),
            "k",
            InvoiceFactory(SELLER, seed=1),
            stats,
            rate=100,
            seed=1,
        )
        asyncio.get_running_loop().call_later(0.5, stop.set)
        await generator.run(stop)
    assert 35 <= stats.total <= 60
    assert stats.total == stats.outcomes["forwarded"] == len(seen)
    assert SUBMIT_OPERATION in seen
    assert QUERY_OPERATION in seen


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


def test_ledger_line_flags_doubles_and_missing_invoices() -> None:
    """Doubles and missing invoices are called out, unfinished issuance is not a loss."""
    doubled = LedgerTotals(accepted=11, issued=11, issuing=0, failed=0, doubles=1)
    short = LedgerTotals(accepted=9, issued=9, issuing=0, failed=0, doubles=0)
    busy = LedgerTotals(accepted=10, issued=9, issuing=1, failed=0, doubles=0)
    assert ["DOUBLES", "MISSING", "not settled yet"] == [
        describe_ledger(10, 0, ledger).split(":")[0] for ledger in (doubled, short, busy)
    ]


# -- children -----------------------------------------------------------------------------------


def python_child(tmp_path: Path, name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], dict(os.environ), tmp_path)


async def test_child_that_exits_at_start_reports_its_stderr(tmp_path: Path) -> None:
    """A child dying while starting raises ChildStartError carrying its last stderr lines."""
    child = python_child(tmp_path, "gateway", "import sys; sys.exit('boom: bad config')")
    child.start()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ChildStartError, match="exited with code 1") as caught:
            await wait_ready(child, session, "http://127.0.0.1:9/healthz")
    assert "boom: bad config" in caught.value.stderr_tail


def test_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    """stop_children falls back to SIGKILL when SIGTERM is ignored."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    child = python_child(tmp_path, "stubborn", code)
    child.start()
    time.sleep(0.3)  # let it install its handler
    started = time.monotonic()
    stop_children([child], timeout_s=0.5)
    assert child.exit_code() is not None
    assert time.monotonic() - started < 5


# -- a real run ---------------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration
def test_demo_runs_through_an_outage_and_cleans_up() -> None:
    """A short demo exits 0, tells of the outage and the ledger, and leaves nothing behind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "gateway", "demo", "--duration", "8"]
    argv += ["--outage-at", "2", "--outage-for", "3", "--seed", "1"]
    completed = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=40, check=False
    )
    out = completed.stdout
    assert 0 == completed.returncode, completed.stderr + out
    assert "\x1b" not in out
    assert "platform down — outage injected" in out
    assert "platform back" in out
    assert re.search(r"(submissions refused|queued \d+ submissions) during the outage", out)
    assert re.search(r"all delivered: \d+ accepted, \d+ issued, 0 issued twice", out), out
    pids = [int(pid) for pid in re.findall(r"\bpid (\d+)", out)]
    assert 2 == len(pids), out
    assert all(process_gone(pid) for pid in pids)
    workdir = re.search(r"files\s+(\S+)", out)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
