"""The drill's client: an integrator that submits invoices and retries the way the docs ask.

Every order is sent until it gets an answer that settles it for the client:

    200 E0000                  forwarded and accepted by the platform     → acknowledged
    202                        queued in the outbox (or a replay of that)  → acknowledged
    200 with another code      the platform's verdict (e.g. 0201)          → refused
    400 / 413 / 422            the gateway refused the request itself      → rejected
    no answer, 409, 5xx        not settled: the same body is sent again, with the same
                               order number (the idempotency key), after a short back-off

`Book` keeps what happened to each order and what the client saw on the way, for the report
and the ledger check (`gateway.tools.drill.checks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from gateway.tools.loadgen import (
    NO_ANSWER,
    SERVICES_PATH,
    SUBMIT_OPERATION,
    InvoiceFactory,
    Result,
    paced,
    percentile,
    send_operation,
)

#: Back-off between two sends of the same order, doubling from the first to the last value.
RETRY_FIRST_S: Final = 0.2
RETRY_LAST_S: Final = 2.0
#: Statuses that settle an order as refused by the gateway itself (bad request, too large, key
#: reused with another body): sending it again would not help.
REJECTED_STATUSES: Final = frozenset({400, 413, 422})


class Settled(enum.StrEnum):
    """How an order ended for the client."""

    ACKNOWLEDGED = "acknowledged"  # 2xx E0000 or 202: the gateway took it on
    REFUSED = "refused"  # the platform's final verdict, passed on
    REJECTED = "rejected"  # the gateway refused the request itself
    UNANSWERED = "unanswered"  # still no settling answer when the client gave up


@dataclass
class Order:
    """One invoice the client wanted issued, and what it learnt about it."""

    order_no: str
    body: dict[str, Any]
    sends: int = 0
    settled: Settled | None = None
    #: HTTP status and `X-Gateway-Outcome` of the settling answer.
    status: int = 0
    outcome: str = ""
    #: The platform code of a refusal, the problem of a rejection.
    detail: str = ""
    submission_id: str | None = None
    #: The answer was 202 (queued), not 200 (forwarded).
    queued: bool = False


@dataclass
class Book:
    """Every order of the run, and every answer the client saw."""

    orders: dict[str, Order] = field(default_factory=dict)
    #: Answers by `X-Gateway-Outcome` (or "no answer"), and by HTTP status.
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    #: Problem types (slug) and client-side errors seen, for "what the client saw".
    problems: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    #: Sends beyond the first, i.e. retries the client made.
    resends: int = 0

    def count(self, settled: Settled) -> int:
        return sum(1 for order in self.orders.values() if order.settled is settled)

    @property
    def unsettled(self) -> list[Order]:
        return [o for o in self.orders.values() if o.settled in (None, Settled.UNANSWERED)]

    def latency_ms(self, q: float) -> float | None:
        value = percentile(self.latencies_s, q)
        return None if value is None else value * 1000.0

    def record(self, order: Order, result: Result) -> bool:
        """Count one answer to `order`; True when it settles the order."""
        self.outcomes[result.outcome] += 1
        self.statuses[result.status] += 1
        if result.status:
            self.latencies_s.append(result.latency_s)
        if result.problem or result.status == 0:
            self.problems[result.problem or result.detail or NO_ANSWER] += 1
        if order.sends > 1:
            self.resends += 1
        settled = settlement(result)
        if settled is None:
            return False
        order.settled, order.status, order.outcome = settled, result.status, result.outcome
        order.detail = result.detail if settled is not Settled.ACKNOWLEDGED else ""
        order.submission_id = result.submission_id
        order.queued = result.status == 202
        return True


def settlement(result: Result) -> Settled | None:
    """What an answer means for its order (None: not settled, send again)."""
    if result.accepted:
        return Settled.ACKNOWLEDGED
    if result.status == 200:
        return Settled.REFUSED
    if result.status in REJECTED_STATUSES:
        return Settled.REJECTED
    return None


class Integrator:
    """Submits new invoices at `rate` per second (at most `max_in_flight` outstanding) and
    sends every unsettled one again until it settles or the client gives up."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        api_key: str,
        factory: InvoiceFactory,
        *,
        rate: float,
        max_in_flight: int = 48,
        timeout_s: float = 15.0,
        seed: int | None = None,
        on_answer: Callable[[Order, Result], None] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.book = Book()
        self._session = session
        self._url = gateway_url.rstrip("/") + SERVICES_PATH
        self._api_key = api_key
        self._factory = factory
        self._interval = 1.0 / rate
        self._slots = asyncio.Semaphore(max_in_flight)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_answer = on_answer
        #: Set once the client stops retrying; orders still unsettled then are unanswered.
        self._give_up = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Offer new orders until `stop` is set (retries of earlier ones go on meanwhile)."""
        async for _ in paced(stop, self._interval):
            order_no, body = self._factory.submission()
            order = Order(order_no, body)
            self.book.orders[order_no] = order
            task = asyncio.create_task(self._settle(order))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def finish(self, timeout_s: float, progress: Callable[[int], None] | None = None) -> int:
        """Keep retrying until every order settled or `timeout_s` passed; then give up on the
        rest (they count as unanswered). Returns how many are unsettled."""
        deadline = time.monotonic() + timeout_s
        while self._tasks and time.monotonic() < deadline:
            if progress is not None:
                progress(len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=min(1.0, deadline - time.monotonic()))
        self._give_up.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for order in self.book.orders.values():
            if order.settled is None:
                order.settled = Settled.UNANSWERED
        return self.book.count(Settled.UNANSWERED)

    async def _settle(self, order: Order) -> None:
        pause = RETRY_FIRST_S
        while not self._give_up.is_set():
            async with self._slots:
                order.sends += 1
                result = await self._post(order)
            settled = self.book.record(order, result)
            if self._on_answer is not None:
                self._on_answer(order, result)
            if settled:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._give_up.wait(), pause * self._rng.uniform(0.5, 1.0))
            pause = min(pause * 2, RETRY_LAST_S)

    async def _post(self, order: Order) -> Result:
        return await send_operation(
            self._session,
            self._url,
            self._api_key,
            SUBMIT_OPERATION,
            order.body,
            kind="submit",
            order_no=order.order_no,
            limit=self._timeout,
            headers={"Idempotency-Key": order.order_no},
        )
