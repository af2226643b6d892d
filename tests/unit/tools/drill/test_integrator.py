"""The drill's integrator: what each answer means for an order, what the book counts, and the
retry loop against small real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.edge.problem import problem_response
from gateway.tools.drill.integrator import Book, Integrator, Order, Settled, settlement
from gateway.tools.loadgen import NO_ANSWER, SERVICES_PATH, InvoiceFactory, Result, read_answer

SELLER = "91110108MA01TEST0X"


def answer(
    status: int, body: dict[str, Any] | None, *, outcome: str, replayed: bool = False
) -> Result:
    """A submission's answer read from header and body bytes, as the integrator reads it."""
    headers = CIMultiDict({"X-Gateway-Outcome": outcome, "Content-Type": "application/json"})
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    raw = b"" if body is None else json.dumps(body).encode()
    return read_answer("submit", status, headers, raw, 0.02, order_no="A1")


def problem(status: int, slug: str, title: str) -> Result:
    """A problem the gateway itself answers, from the bytes `problem_response` makes."""
    response = problem_response(
        status=status, slug=slug, title=title, detail="…", request_id="req-1"
    )
    assert isinstance(response.body, bytes)
    headers = CIMultiDict(response.headers)
    headers["X-Gateway-Outcome"] = "rejected"
    return read_answer("submit", status, headers, response.body, 0.01, order_no="A1")


def fresh(sends: int = 1) -> tuple[Book, Order]:
    """A book holding one order "A1" sent `sends` times, as `Integrator.run` registers it."""
    order = Order("A1", {"order": {"orderNo": "A1"}}, sends=sends)
    return Book(orders={"A1": order}), order


NO_ANSWER_RESULT = Result(
    "submit", NO_ANSWER, 0, 1.5, detail="ClientConnectorError", uncertain=True, order_no="A1"
)


def test_200_e0000_settles_acknowledged_forwarded() -> None:
    """200 E0000: the platform accepted it, forwarded."""
    book, order = fresh()
    assert book.record(order, answer(200, {"code": "E0000"}, outcome="forwarded"))
    assert (Settled.ACKNOWLEDGED, 200, "forwarded", False, "") == (
        order.settled,
        order.status,
        order.outcome,
        order.queued,
        order.detail,
    )


def test_202_settles_acknowledged_queued() -> None:
    """202: queued in the outbox, acknowledged, with its submission id."""
    book, order = fresh()
    body = {"submission_id": "sub_1", "state": "queued"}
    assert book.record(order, answer(202, body, outcome="queued"))
    assert (Settled.ACKNOWLEDGED, True, "sub_1") == (
        order.settled,
        order.queued,
        order.submission_id,
    )


def test_202_replay_settles_acknowledged_queued() -> None:
    """A replayed 202 (a resend of a queued order) settles it the same way."""
    book, order = fresh(sends=2)
    body = {"submission_id": "sub_1", "state": "delivered"}
    assert book.record(order, answer(202, body, outcome="replayed", replayed=True))
    assert (Settled.ACKNOWLEDGED, True) == (order.settled, order.queued)
    assert 1 == book.resends


def test_200_with_platform_code_settles_refused_with_the_code() -> None:
    """200 with another platform code is the platform's verdict: refused, code in `detail`."""
    book, order = fresh()
    body = {"code": "0201", "describe": "购方税号不正确"}
    assert book.record(order, answer(200, body, outcome="forwarded"))
    assert Settled.REFUSED is order.settled
    assert "0201" in order.detail


@pytest.mark.parametrize(
    ("status", "slug", "title"),
    [
        (400, "bad-request", "Bad request"),
        (413, "payload-too-large", "Payload too large"),
        (422, "idempotency-key-reused", "Idempotency key reused with another body"),
    ],
)
def test_gateway_refusals_settle_rejected(status: int, slug: str, title: str) -> None:
    """400, 413 and 422 are the gateway refusing the request itself: rejected, never resent."""
    book, order = fresh()
    assert book.record(order, problem(status, slug, title))
    assert (Settled.REJECTED, status, title) == (order.settled, order.status, order.detail)
    assert {slug: 1} == dict(book.problems)


@pytest.mark.parametrize(
    "result",
    [
        problem(409, "request-in-flight", "Request in flight"),
        problem(503, "store-unavailable", "Store unavailable"),
        NO_ANSWER_RESULT,
    ],
    ids=["409", "503", "no-answer"],
)
def test_unsettling_answers_are_counted_and_resent(result: Result) -> None:
    """409, 503 and no answer leave the order unsettled, but are counted."""
    book, order = fresh()
    assert settlement(result) is None
    assert not book.record(order, result)
    assert order.settled is None
    assert order in book.unsettled
    assert {result.status: 1} == dict(book.statuses)
    assert {result.outcome: 1} == dict(book.outcomes)
    assert 1 == sum(book.problems.values())


def test_no_answer_has_no_latency_and_counts_as_its_error() -> None:
    """No answer is counted under its client error; its time is not an answer's latency."""
    book, order = fresh()
    book.record(order, NO_ANSWER_RESULT)
    assert {"ClientConnectorError": 1} == dict(book.problems)
    assert [] == book.latencies_s
    assert book.latency_ms(50) is None


def test_book_counts_resends_and_latencies() -> None:
    """Answers to second and later sends are resends; every HTTP answer has a latency."""
    book, order = fresh(sends=0)
    for result in (NO_ANSWER_RESULT, problem(503, "store-unavailable", "Store unavailable")):
        order.sends += 1
        book.record(order, result)
    order.sends += 1
    assert book.record(order, answer(202, {"submission_id": "sub_1"}, outcome="queued"))
    assert 2 == book.resends
    assert Counter({0: 1, 503: 1, 202: 1}) == book.statuses
    assert pytest.approx([0.01, 0.02]) == book.latencies_s
    assert 1 == book.count(Settled.ACKNOWLEDGED)
    assert [] == book.unsettled


# -- the retry loop, against small servers ----------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _settle_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__ == "Integrator._settle"  # type: ignore[union-attr]
    ]


async def _drive(
    handler: Handler, *, traffic_s: float, finish_s: float, timeout_s: float = 5.0
) -> tuple[Integrator, int, float]:
    """Run the integrator against `handler` for `traffic_s`, then `finish(finish_s)`; returns
    it, what `finish` returned and how long `finish` took."""
    app = web.Application()
    app.router.add_post(SERVICES_PATH, handler)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        integrator = Integrator(
            session,
            str(server.make_url("/")),
            "tenant-key",
            InvoiceFactory(SELLER, seed=3, prefix="T"),
            rate=40,
            timeout_s=timeout_s,
            seed=3,
        )
        stop = asyncio.Event()
        traffic = asyncio.create_task(integrator.run(stop))
        await asyncio.sleep(traffic_s)
        stop.set()
        await asyncio.wait_for(traffic, 2)
        started = time.monotonic()
        unanswered = await integrator.finish(finish_s)
        took = time.monotonic() - started
        assert [] == _settle_tasks()
        return integrator, unanswered, took


async def test_every_order_settles_after_one_resend() -> None:
    """Each order answered 503 first and 202 second ends acknowledged after exactly 2 sends,
    with its order number as the idempotency key both times."""
    seen: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        body = await request.json()
        assert key == body["order"]["orderNo"]
        seen[key] += 1
        if seen[key] == 1:
            return web.json_response({"title": "Upstream unavailable"}, status=503)
        return web.json_response(
            {"submission_id": f"sub_{key}"}, status=202, headers={"X-Gateway-Outcome": "queued"}
        )

    integrator, unanswered, _ = await _drive(handler, traffic_s=0.3, finish_s=10)
    orders = integrator.book.orders
    assert 0 == unanswered
    assert len(orders) >= 5
    assert set(orders) == set(seen)
    assert {2} == set(seen.values())
    assert {(Settled.ACKNOWLEDGED, 2, True)} == {
        (o.settled, o.sends, o.queued) for o in orders.values()
    }
    assert len(orders) == integrator.book.resends
    assert {503: len(orders), 202: len(orders)} == dict(integrator.book.statuses)


async def test_finish_gives_up_on_an_upstream_that_never_answers_well() -> None:
    """Against 503s forever, `finish(timeout)` returns within its bound with every order
    unanswered, and no retry is left running."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"title": "Upstream unavailable"}, status=503)

    integrator, unanswered, took = await _drive(handler, traffic_s=0.2, finish_s=0.6)
    orders = integrator.book.orders
    assert len(orders) >= 3
    assert len(orders) == unanswered
    assert {Settled.UNANSWERED} == {o.settled for o in orders.values()}
    assert took < 1.6
    assert calls > len(orders)  # they were resent meanwhile


async def test_finish_cancels_sends_still_waiting_for_an_answer() -> None:
    """Sends hanging on an upstream that never answers are cancelled at the bound, long before
    their own client timeout."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({}, status=503)

    try:
        integrator, unanswered, took = await _drive(
            handler, traffic_s=0.2, finish_s=0.5, timeout_s=30
        )
    finally:
        release.set()
    assert len(integrator.book.orders) == unanswered > 0
    assert took < 1.5
    assert {1} == {o.sends for o in integrator.book.orders.values()}


async def test_integrator_refuses_a_rate_of_zero() -> None:
    """A rate must be positive."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="rate must be positive"):
            Integrator(session, "http://127.0.0.1:1", "k", InvoiceFactory(SELLER), rate=0)
