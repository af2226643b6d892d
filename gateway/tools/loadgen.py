"""Client traffic for the demo and drills: invoice bodies, a paced sender, and what came back.

    InvoiceFactory    realistic `requestBillingNew` and `queryInvoiceResult` bodies, seeded
    TrafficStats      outcomes, HTTP statuses, latencies, rates over a sliding window
    TrafficGenerator  sends at a steady rate through one aiohttp session, bounded in flight

The outcome of every answer is read from the gateway's `X-Gateway-Outcome` header, so new
outcomes (queued, replayed) show up without changes here. A 202 carries the submission id the
outbox gave it; `TrafficGenerator(on_result=...)` hands every answer, with its order number, to
whoever follows the submissions (the demo's outbox tracker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, Literal

import aiohttp

from gateway.tools.simulator.tax_numbers import make_tax_number

SUBMIT_OPERATION: Final = "nuonuo.OpeMplatform.requestBillingNew"
QUERY_OPERATION: Final = "nuonuo.OpeMplatform.queryInvoiceResult"
SERVICES_PATH: Final = "/open/v1/services"
OUTCOME_HEADER: Final = "X-Gateway-Outcome"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
PROBLEM_TYPE_PREFIX: Final = "urn:invoice-gateway:problem:"

#: The outcomes a client sees in `X-Gateway-Outcome`, in the order they are shown.
OUTCOMES: Final = ("forwarded", "queued", "replayed", "rejected")
#: The request got no HTTP answer at all (connection refused or reset, client timeout).
NO_ANSWER: Final = "no answer"
#: An HTTP answer without an `X-Gateway-Outcome` header (not from the gateway's proxy).
UNLABELLED: Final = "unlabelled"

#: The gateway's problem type (suffix) for a submission whose answer was lost upstream.
OUTCOME_UNKNOWN_PROBLEM: Final = ":outcome-unknown"
#: The problem (slug) of a request refused at once because the circuit is open.
CIRCUIT_OPEN_PROBLEM: Final = "circuit-open"
#: What a 202 says, in a few words.
QUEUED_DETAIL: Final = "queued in the outbox"

RequestKind = Literal["submit", "read"]

_CENT: Final = Decimal("0.01")
_BEIJING: Final = timezone(timedelta(hours=8))


# -- bodies -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Goods:
    """A line item the demo sells: name, tax classification code (税收分类编码), unit, rate."""

    name: str
    code: str
    unit: str
    tax_rate: str
    price_range: tuple[int, int]
    spec: str = ""


GOODS: Final = (
    Goods("软件开发服务", "3040201010000000000", "项", "0.06", (2_000, 80_000)),
    Goods("信息技术咨询服务", "3040203000000000000", "次", "0.06", (500, 12_000)),
    Goods("会议服务", "3040802050000000000", "次", "0.06", (1_000, 30_000)),
    Goods("餐饮服务", "3070401000000000000", "次", "0.06", (80, 2_400)),
    Goods("货物运输服务", "3010102020100000000", "次", "0.09", (300, 6_000)),
    Goods("办公用房租赁", "3040502020200000000", "月", "0.09", (8_000, 60_000)),
    Goods("笔记本电脑", "1090511030000000000", "台", "0.13", (4_500, 16_000), "14英寸"),
    Goods("激光打印机", "1090512020000000000", "台", "0.13", (900, 5_000), "A4黑白"),
    Goods("复印纸", "1060201070000000000", "箱", "0.13", (120, 260), "A4 70g"),
    Goods("饮用水", "1030307020000000000", "箱", "0.13", (24, 60), "550ml×24"),
)
_CITY_PARTS: Final = ("北京", "北京市海淀区", "北京市朝阳区", "天津", "河北雄安")
_NAME_PARTS: Final = (
    "华信",
    "博远",
    "天成",
    "中科瑞达",
    "京安",
    "融创智联",
    "恒泰",
    "星河",
    "安和",
)
_TRADES: Final = ("科技", "信息技术", "商贸", "餐饮管理", "物流", "文化传媒", "建设工程")
_FORMS: Final = ("有限公司", "有限责任公司", "股份有限公司")
_PEOPLE: Final = ("张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊")
_STREETS: Final = ("中关村大街", "建国路", "西二旗大街", "望京街", "丰台路", "学院路")


class InvoiceFactory:
    """Makes plausible invoice traffic; the same `seed` gives the same bodies.

    Order numbers are unique within one factory (prefix + sequence). Every buyer tax number is
    a valid credit code, so the simulator issues every accepted order.
    """

    def __init__(
        self, seller_tax_num: str, *, seed: int | None = None, prefix: str | None = None
    ) -> None:
        self._rng = random.Random(seed)
        self._seller_tax_num = seller_tax_num
        self._prefix = prefix or f"D{datetime.now(_BEIJING):%y%m%d%H%M%S}"
        self._sequence = 0

    def submission(self) -> tuple[str, dict[str, Any]]:
        """A new `requestBillingNew` body and its order number."""
        self._sequence += 1
        order_no = f"{self._prefix}{self._sequence:06d}"
        rng = self._rng
        order: dict[str, Any] = {
            "orderNo": order_no,
            "invoiceDate": datetime.now(_BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            **self._buyer(),
            "salerTaxNum": self._seller_tax_num,
            "salerTel": "010-62981234",
            "salerAddress": "北京市海淀区中关村大街27号",
            "clerk": rng.choice(_PEOPLE),
            "pushMode": "-1",
            "invoiceType": "1",
            # 数电票: "pc" is the fully digital ordinary invoice, "bs" the special (VAT) one.
            "invoiceLine": rng.choice(("pc", "pc", "pc", "bs")),
            "invoiceDetail": [self._line() for _ in range(rng.choice((1, 1, 1, 2, 3)))],
        }
        return order_no, {"order": order}

    def query(self, order_nos: Iterable[str]) -> dict[str, Any]:
        """A `queryInvoiceResult` body for up to three of `order_nos` (the most recent first)."""
        recent = list(order_nos)[-50:]
        chosen = self._rng.sample(recent, k=min(len(recent), self._rng.choice((1, 1, 2, 3))))
        return {"serialNos": [], "orderNos": chosen, "isOfferInvoiceDetail": "0"}

    def _buyer(self) -> dict[str, str]:
        rng = self._rng
        if rng.random() < 0.1:  # a private person: no tax number (个人抬头)
            return {
                "buyerName": rng.choice(_PEOPLE),
                "buyerTaxNum": "",
                "buyerPhone": self._phone(),
            }
        name = "".join(
            (
                rng.choice(_CITY_PARTS),
                rng.choice(_NAME_PARTS),
                rng.choice(_TRADES),
                rng.choice(_FORMS),
            )
        )
        return {
            "buyerName": name,
            "buyerTaxNum": make_tax_number(rng.randrange(10**9)),
            "buyerAddress": f"北京市{rng.choice(_STREETS)}{rng.randint(1, 200)}号",
            "buyerTel": f"010-{rng.randint(5_000_0000, 8_999_9999)}",
            "buyerPhone": self._phone(),
            "email": f"finance{rng.randint(1, 999)}@example.cn",
        }

    def _phone(self) -> str:
        return f"1{self._rng.choice((3, 5, 8))}{self._rng.randint(0, 999_999_999):09d}"

    def _line(self) -> dict[str, str]:
        rng = self._rng
        goods = rng.choice(GOODS)
        low, high = goods.price_range
        price = Decimal(rng.randint(low * 100, high * 100)) / 100
        num = Decimal(rng.choice((1, 1, 1, 2, 3, 5, 10)))
        rate = Decimal(goods.tax_rate)
        with_tax = (price * num).quantize(_CENT, ROUND_HALF_UP)
        without_tax = (with_tax / (1 + rate)).quantize(_CENT, ROUND_HALF_UP)
        return {
            "goodsName": goods.name,
            "goodsCode": goods.code,
            "specType": goods.spec,
            "unit": goods.unit,
            "num": str(num),
            "price": str(price),
            "withTaxFlag": "1",
            "taxRate": goods.tax_rate,
            "taxIncludedAmount": str(with_tax),
            "taxExcludedAmount": str(without_tax),
            "tax": str(with_tax - without_tax),
            "invoiceLineProperty": "0",
        }


# -- what came back -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One request as the client saw it."""

    kind: RequestKind
    #: `X-Gateway-Outcome`, `NO_ANSWER` or `UNLABELLED`.
    outcome: str
    #: HTTP status, 0 when there was no HTTP answer.
    status: int
    latency_s: float
    #: A submission the gateway took on: the platform accepted it (E0000) or it was queued (202).
    accepted: bool = False
    #: What the answer said in a few words: a problem's title, a platform code, an error class.
    detail: str = ""
    #: A submission whose answer was lost: the platform may or may not have issued it.
    uncertain: bool = False
    #: The order number of a submission (set by the sender, not read from the answer).
    order_no: str | None = None
    #: The outbox's id for a submission answered 202 (queued, or a replay of one).
    submission_id: str | None = None
    #: The answer was a replay (`Idempotent-Replayed: true`): the same submission sent again.
    replayed: bool = False
    #: The gateway's problem type without its prefix (`circuit-open`), for problem answers.
    problem: str = ""
    #: The answer's JSON document, when it was JSON.
    document: Any = None


def outcome_of(headers: Mapping[str, str]) -> str:
    """The gateway's outcome from a response's headers (`UNLABELLED` when it is missing)."""
    value = headers.get(OUTCOME_HEADER, "").strip().lower()
    return value or UNLABELLED


def read_answer(
    kind: RequestKind,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    latency_s: float,
    *,
    order_no: str | None = None,
) -> Result:
    """Classify one HTTP answer of the gateway (`order_no`: the submission's, if one)."""
    document: Any = None
    with contextlib.suppress(ValueError):
        document = json.loads(body)
    detail = ""
    code = None
    problem_type = ""
    submission_id = None
    if isinstance(document, dict):
        problem_type = str(document.get("type", ""))
        if isinstance(document.get("title"), str):
            detail = document["title"]
        elif isinstance(document.get("code"), str):
            code = document["code"]
            detail = f"platform code {code}"
        if status == 202 and isinstance(document.get("submission_id"), str):
            submission_id = document["submission_id"]
            detail = detail or QUEUED_DETAIL
    accepted = kind == "submit" and (status == 202 or (status == 200 and code == "E0000"))
    uncertain = kind == "submit" and problem_type.endswith(OUTCOME_UNKNOWN_PROBLEM)
    return Result(
        kind,
        outcome_of(headers),
        status,
        latency_s,
        accepted,
        detail,
        uncertain,
        order_no=order_no if kind == "submit" else None,
        submission_id=submission_id,
        replayed=headers.get(REPLAYED_HEADER, "").strip().lower() == "true",
        problem=problem_type.removeprefix(PROBLEM_TYPE_PREFIX) if problem_type else "",
        document=document,
    )


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`-th percentile (0 < q <= 100) by the nearest-rank method; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class TrafficStats:
    """Counts of everything that came back, and rates and latencies over the last `window_s`."""

    def __init__(self, *, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._window_s = window_s
        self._started = clock()
        self._recent: deque[tuple[float, str, float]] = deque()
        self.outcomes: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        #: Submissions only, by outcome.
        self.submissions: Counter[str] = Counter()
        #: (outcome, status, detail) of every distinct kind of answer seen, with its count.
        self.answers: Counter[tuple[str, int, str]] = Counter()
        #: Submissions the gateway took on (see `Result.accepted`).
        self.accepted = 0
        #: Submissions whose fate is unknown to the client (see `Result.uncertain`).
        self.uncertain = 0
        self.total = 0

    @property
    def window_s(self) -> float:
        return self._window_s

    def record(self, result: Result) -> None:
        now = self._clock()
        self.total += 1
        self.outcomes[result.outcome] += 1
        self.statuses[result.status] += 1
        self.answers[(result.outcome, result.status, result.detail)] += 1
        if result.kind == "submit":
            self.submissions[result.outcome] += 1
            self.accepted += result.accepted
            self.uncertain += result.uncertain
        self._recent.append((now, result.outcome, result.latency_s))
        self._prune(now)

    def rates(self) -> dict[str, float]:
        """Requests per second by outcome over the last window (every outcome of `OUTCOMES`)."""
        now = self._clock()
        self._prune(now)
        span = min(self._window_s, now - self._started)
        counts = Counter(outcome for _, outcome, _ in self._recent)
        keys = [*OUTCOMES, *sorted(set(counts) - set(OUTCOMES))]
        return {key: counts[key] / span if span > 0 else 0.0 for key in keys}

    def rate(self) -> float:
        """All requests per second over the last window."""
        return sum(self.rates().values())

    def latency(self, q: float) -> float | None:
        """The `q`-th percentile latency in seconds over the last window."""
        self._prune(self._clock())
        return percentile((latency for _, _, latency in self._recent), q)

    def _prune(self, now: float) -> None:
        horizon = now - self._window_s
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()


# -- the sender ---------------------------------------------------------------------------------


async def paced(stop: asyncio.Event, interval: float) -> AsyncIterator[None]:
    """Yields once every `interval` seconds until `stop` is set. The pace is a schedule: a
    consumer that falls behind is not made to burst to catch up."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while not stop.is_set():
        delay = next_at - loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
        yield
        next_at = max(next_at + interval, loop.time() - interval)


class TrafficGenerator:
    """Sends submissions and result queries at `rate` per second until told to stop.

    The pace is kept by a schedule, not by answers, so a slow gateway does not slow the offered
    load, up to `max_in_flight` requests outstanding; when it falls behind it does not burst to
    catch up.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        factory: InvoiceFactory,
        stats: TrafficStats,
        *,
        rate: float,
        read_share: float = 0.2,
        max_in_flight: int = 64,
        timeout_s: float = 30.0,
        seed: int | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        """`on_result` is called with every answer after `stats` has counted it."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._session = session
        self._url = base_url.rstrip("/") + SERVICES_PATH
        self._api_key = api_key
        self._factory = factory
        self._stats = stats
        self._interval = 1.0 / rate
        self._read_share = read_share
        self._slots = asyncio.Semaphore(max_in_flight)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._rng = random.Random(seed)
        self._accepted_orders: deque[str] = deque(maxlen=500)
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_result = on_result

    async def run(self, stop: asyncio.Event, *, drain_s: float = 10.0) -> None:
        """Send until `stop` is set, then wait up to `drain_s` for the answers still due."""
        async for _ in paced(stop, self._interval):
            await self._slots.acquire()
            task = asyncio.create_task(self._send_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self._drain(drain_s)

    async def _drain(self, timeout_s: float) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _send_one(self) -> None:
        try:
            if self._accepted_orders and self._rng.random() < self._read_share:
                kind: RequestKind = "read"
                operation, order_no = QUERY_OPERATION, None
                body = self._factory.query(self._accepted_orders)
            else:
                kind, operation = "submit", SUBMIT_OPERATION
                order_no, body = self._factory.submission()
            result = await self._post(kind, operation, body, order_no)
            self._stats.record(result)
            if self._on_result is not None:
                self._on_result(result)
            if result.accepted and order_no is not None:
                self._accepted_orders.append(order_no)
        finally:
            self._slots.release()

    async def _post(
        self, kind: RequestKind, operation: str, body: dict[str, Any], order_no: str | None
    ) -> Result:
        return await send_operation(
            self._session,
            self._url,
            self._api_key,
            operation,
            body,
            kind=kind,
            order_no=order_no,
            limit=self._timeout,
        )


async def send_operation(
    session: aiohttp.ClientSession,
    url: str,
    api_key: str,
    operation: str,
    body: dict[str, Any],
    *,
    kind: RequestKind,
    order_no: str | None = None,
    limit: aiohttp.ClientTimeout,
    headers: Mapping[str, str] | None = None,
) -> Result:
    """POST one platform operation to the gateway at `url` as a tenant, and read the answer
    (no answer at all — refused, reset, timed out — is a `Result` too, with status 0)."""
    head = {
        "method": operation,
        "X-Api-Key": api_key,
        "Content-Type": "application/json; charset=utf-8",
        **(headers or {}),
    }
    data = json.dumps(body, ensure_ascii=False).encode()
    started = time.perf_counter()
    try:
        async with session.post(url, data=data, headers=head, timeout=limit) as response:
            payload = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(
            kind,
            NO_ANSWER,
            0,
            time.perf_counter() - started,
            detail=type(exc).__name__,
            uncertain=kind == "submit",
            order_no=order_no,
        )
    latency = time.perf_counter() - started
    return read_answer(kind, response.status, response.headers, payload, latency, order_no=order_no)
