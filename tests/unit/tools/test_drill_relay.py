"""The fault relay: forwards calls to a real target unchanged, and breaks them as its rules say.

Every target here listens on 127.0.0.1: a small echo app, or the simulator on real sockets.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.tools.drill.relay import FaultRelay
from gateway.tools.simulator import (
    QUERY_INVOICE_RESULT,
    REQUEST_BILLING,
    PlatformSettings,
    Simulator,
    build_simulator,
    make_tax_number,
)
from gateway.tools.simulator.faults import FaultSpecError
from gateway.tools.simulator.testing import ManualClock, signed_call

LOCALHOST = "127.0.0.1"
SETTINGS = PlatformSettings(issue_delay_s=1.0)


@dataclass
class EchoTarget:
    """A target that records what reached it and answers 201 with headers of its own."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": request.headers.copy(),
                "body": await request.read(),
            }
        )
        return web.Response(
            status=201,
            body=b"echoed:" + (await request.read()),
            headers={
                "Content-Type": "text/x-echo",
                "X-Target": "echo",
                "Set-Cookie": "a=1",
                "Keep-Alive": "timeout=99",
                "Proxy-Authenticate": "Basic",
            },
        )


@pytest.fixture
async def echo() -> AsyncIterator[EchoTarget]:
    target = EchoTarget()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", target.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOCALHOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    target.url = f"http://{LOCALHOST}:{port}"
    yield target
    await runner.cleanup()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def simulator(clock: ManualClock) -> AsyncIterator[Simulator]:
    sim = build_simulator(SETTINGS, clock=clock, rng=random.Random(1))
    await sim.start((LOCALHOST, 0))
    yield sim
    await sim.stop()


async def open_relay(target_url: str, clock: ManualClock) -> tuple[FaultRelay, str]:
    relay = FaultRelay(target_url, clock=clock, rng=random.Random(7))
    return relay, await relay.start(LOCALHOST, 0)


@pytest.fixture
async def echo_relay(echo: EchoTarget, clock: ManualClock) -> AsyncIterator[tuple[FaultRelay, str]]:
    relay, url = await open_relay(echo.url, clock)
    yield relay, url
    await relay.close()


@pytest.fixture
async def sim_relay(
    simulator: Simulator, clock: ManualClock
) -> AsyncIterator[tuple[FaultRelay, str]]:
    host, port = simulator.api_address
    relay, url = await open_relay(f"http://{host}:{port}", clock)
    yield relay, url
    await relay.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client_session:
        yield client_session


async def connects(base_url: str) -> bool:
    """Whether a TCP connection to the relay is accepted (False on ECONNREFUSED)."""
    host, port = base_url.removeprefix("http://").split(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def eventually(condition: Any, *, attempts: int = 400) -> None:
    """Poll `condition` (sync or async) until it holds: the relay acts in the background."""
    for _ in range(attempts):
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


class Platform:
    """Calls the simulator through the relay the way the gateway does: token, then signed calls."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, clock: ManualClock) -> None:
        self.session = session
        self.base_url = base_url
        self.clock = clock

    async def token(self) -> str:
        form = {
            "client_id": SETTINGS.app_key,
            "client_secret": SETTINGS.app_secret,
            "grant_type": "client_credentials",
        }
        async with self.session.post(f"{self.base_url}/accessToken", data=form) as response:
            return str((await response.json())["access_token"])

    async def send(self, method: str, payload: object, token: str) -> tuple[int, bytes]:
        call = signed_call(method, payload, token=token, wall=self.clock.wall(), settings=SETTINGS)
        async with self.session.post(
            f"{self.base_url}/open/v1/services",
            params=call.params,
            headers=call.headers,
            data=call.body,
        ) as response:
            return response.status, await response.read()


def order(order_no: str) -> dict[str, Any]:
    return {
        "order": {
            "orderNo": order_no,
            "buyerName": "北京测试科技有限公司",
            "buyerTaxNum": make_tax_number(42),
            "invoiceDetail": [{"goodsName": "技术服务费", "num": "1", "price": "113"}],
        }
    }


# --- what the relay refuses or breaks -------------------------------------------------------


@pytest.mark.parametrize("kind", ["busy", "quota", "rate_limit", "token_expiry"])
async def test_kinds_that_need_the_platform_are_refused_naming_the_simulator(echo_relay, kind):
    """A relay cannot make the platform answer busy, quota, 429 or revoke tokens."""
    relay, _ = echo_relay

    with pytest.raises(FaultSpecError, match="simulator"):
        await relay.add_fault({"kind": kind})

    assert {} == relay.faults_hit


async def test_an_invalid_rule_is_refused_as_the_simulator_would(echo_relay):
    """Rules are validated by the simulator's own parser: same fields, same messages."""
    relay, _ = echo_relay

    with pytest.raises(FaultSpecError, match="'status' must be an integer from 400 to 599"):
        await relay.add_fault({"kind": "http_error", "status": 200})


async def test_refuse_closes_the_listener_for_its_window_then_forwards_again(
    echo_relay, echo, clock, session
):
    """During the window connecting gives ECONNREFUSED; after it the same URL forwards again."""
    relay, url = echo_relay
    await relay.add_fault({"kind": "refuse", "duration_s": 5})

    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await session.get(f"{url}/ping")
    clock.advance(5)
    await eventually(lambda: connects(url))
    async with session.get(f"{url}/ping") as response:
        recovered = response.status

    assert errno.ECONNREFUSED == caught.value.os_error.errno
    assert 201 == recovered
    assert 1 == len(echo.seen)
    assert {"refuse": 1} == relay.faults_hit


async def test_refuse_drops_connections_that_were_open_already(echo_relay):
    """An open connection does not survive the relay going down."""
    relay, url = echo_relay
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    await relay.add_fault({"kind": "refuse"})
    try:
        received = await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionResetError:
        received = b""
    finally:
        writer.close()

    assert b"" == received


async def test_clear_faults_reopens_a_refusing_listener(echo_relay, session):
    """Clearing the rules ends an open-ended refuse at once."""
    relay, url = echo_relay
    await relay.add_fault({"kind": "refuse"})
    refused = not await connects(url)

    await relay.clear_faults()
    async with session.get(f"{url}/ping") as response:
        status = response.status

    assert refused
    assert 201 == status


async def test_answer_lost_lets_the_target_act_but_resets_the_caller(
    sim_relay, simulator, clock, session
):
    """The simulator issues the invoice; the caller sees a broken connection, not the answer."""
    relay, url = sim_relay
    platform = Platform(session, url, clock)
    token = await platform.token()
    await relay.add_fault({"kind": "answer_lost", "operations": [REQUEST_BILLING]})

    with pytest.raises(aiohttp.ClientConnectionError):
        await platform.send(REQUEST_BILLING, order("ORD-LOST-1"), token)

    assert 1 == len(simulator.platform.ledger)
    assert 1 == simulator.platform.counters.calls[REQUEST_BILLING]
    assert {"answer_lost": 1} == relay.faults_hit
    assert 2 == relay.forwarded


async def test_truncate_lets_the_target_act_but_cuts_the_answer_short(
    sim_relay, simulator, clock, session
):
    """The caller gets the status line and half the body, announced as the whole."""
    relay, url = sim_relay
    platform = Platform(session, url, clock)
    token = await platform.token()
    await relay.add_fault({"kind": "truncate", "operations": [REQUEST_BILLING]})

    with pytest.raises(aiohttp.ClientPayloadError):
        await platform.send(REQUEST_BILLING, order("ORD-CUT-1"), token)

    assert 1 == len(simulator.platform.ledger)
    assert {"truncate": 1} == relay.faults_hit


async def test_http_error_answers_instead_and_the_target_never_sees_the_call(
    sim_relay, simulator, clock, session
):
    """A 503 rule on issuing: the caller gets 503, the platform counts no issuing call."""
    relay, url = sim_relay
    platform = Platform(session, url, clock)
    token = await platform.token()
    await relay.add_fault({"kind": "http_error", "operations": [REQUEST_BILLING]})

    status, _ = await platform.send(REQUEST_BILLING, order("ORD-503-1"), token)
    query_status, _ = await platform.send(QUERY_INVOICE_RESULT, {"orderNos": ["X"]}, token)

    assert (503, 200) == (status, query_status)
    assert 0 == simulator.platform.counters.calls[REQUEST_BILLING]
    assert 0 == len(simulator.platform.ledger)
    assert 2 == relay.forwarded  # the token and the query


async def test_reset_before_forwarding_never_reaches_the_target(echo_relay, echo, session):
    """kind=reset: the caller sees a broken connection and the target sees nothing."""
    relay, url = echo_relay
    await relay.add_fault({"kind": "reset"})

    with pytest.raises(aiohttp.ClientConnectionError):
        await session.post(f"{url}/open/v1/services", data=b"{}")

    assert [] == echo.seen
    assert 0 == relay.forwarded


async def test_faults_hit_counts_fired_rules_per_kind_and_respects_count(echo_relay, session):
    """`count` bounds a rule; faults_hit counts each firing; other calls are forwarded."""
    relay, url = echo_relay
    await relay.add_fault({"kind": "http_error", "status": 502, "count": 2})

    statuses = []
    for _ in range(3):
        async with session.get(f"{url}/ping") as response:
            statuses.append(response.status)

    assert [502, 502, 201] == statuses
    assert {"http_error": 2} == relay.faults_hit
    assert 1 == relay.forwarded


async def test_slow_forwards_once_the_delay_has_passed_on_the_relays_clock(
    echo_relay, echo, clock, session
):
    """kind=slow holds the call on the relay's clock, then forwards it."""
    relay, url = echo_relay
    await relay.add_fault({"kind": "slow", "delay_s": 30})

    call = asyncio.ensure_future(session.get(f"{url}/ping"))
    await eventually(lambda: clock.sleepers == 1)
    held = len(echo.seen)
    clock.advance(30)
    async with await call as response:
        status = response.status

    assert (0, 201) == (held, status)
    assert {"slow": 1} == relay.faults_hit


# --- plain forwarding ----------------------------------------------------------------------


async def test_forwards_method_path_query_body_and_end_to_end_headers(echo_relay, echo, session):
    """The target sees the call as sent, with its own Host and without hop-by-hop headers."""
    _, url = echo_relay

    async with session.put(
        # encoded=True: send the query exactly as written, as a signing client would.
        URL(f"{url}/open/v1/services?b=2&a=%2F1", encoded=True),
        data=b'{"x": 1}',
        headers={
            "method": "nuonuo.OpeMplatform.queryInvoiceResult",
            "X-Custom": "kept",
            "Content-Type": "application/json",
            "Connection": "keep-alive, X-Named-Hop",
            "X-Named-Hop": "dropped",
            "Proxy-Authorization": "Basic dropped",
        },
    ) as response:
        await response.read()
    seen = echo.seen[0]
    headers = seen["headers"]

    assert ("PUT", "/open/v1/services?b=2&a=%2F1", b'{"x": 1}') == (
        seen["method"],
        seen["raw_path"],
        seen["body"],
    )
    assert "nuonuo.OpeMplatform.queryInvoiceResult" == headers["method"]
    assert ("kept", "application/json") == (headers["X-Custom"], headers["Content-Type"])
    assert echo.url.removeprefix("http://") == headers["Host"]
    assert "X-Named-Hop" not in headers
    assert "Proxy-Authorization" not in headers


async def test_returns_the_targets_status_body_and_end_to_end_headers(echo_relay, session):
    """The caller gets the target's answer, minus hop-by-hop headers."""
    _, url = echo_relay

    async with session.post(f"{url}/any", data=b"hello") as response:
        body = await response.read()

    assert (201, b"echoed:hello") == (response.status, body)
    assert ("echo", "text/x-echo") == (response.headers["X-Target"], response.content_type)
    assert "a=1" == response.headers["Set-Cookie"]
    assert "Keep-Alive" not in response.headers
    assert "Proxy-Authenticate" not in response.headers


async def test_an_unreachable_target_shows_as_a_broken_connection(clock, session):
    """The relay does not invent answers: a target that refuses looks like a reset."""
    with socket.create_server((LOCALHOST, 0)) as placeholder:
        port = placeholder.getsockname()[1]
    relay, url = await open_relay(f"http://{LOCALHOST}:{port}", clock)
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{url}/ping")
    finally:
        await relay.close()


def test_only_http_targets_are_accepted():
    """A target must be an http(s) base URL."""
    with pytest.raises(ValueError, match="http"):
        FaultRelay("ftp://example.cn")
