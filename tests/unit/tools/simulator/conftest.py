"""Fixtures: an in-process simulator on a manual clock, and a caller that talks to it like the
gateway does (fresh signature per call)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientTimeout
from aiohttp.test_utils import TestClient, TestServer

from gateway.tools.simulator import (
    REQUEST_BILLING,
    PlatformSettings,
    Simulator,
    build_simulator,
    make_tax_number,
)
from gateway.tools.simulator.testing import ManualClock, signed_call

SETTINGS = PlatformSettings(
    app_key="SD11112222",
    app_secret="test-secret-0001",
    user_tax="91110108000000001A",
    issue_delay_s=1.0,
)


class Caller:
    """Calls the simulator the way the gateway does: a token first, each call signed afresh."""

    def __init__(self, client: TestClient, clock: ManualClock, settings: PlatformSettings) -> None:
        self.client = client
        self.clock = clock
        self.settings = settings
        self._token: str | None = None

    @staticmethod
    def order(order_no: str, **fields: Any) -> dict[str, Any]:
        """A realistic requestBillingNew body: one line of 113.00 yuan including 13 % VAT."""
        body: dict[str, Any] = {
            "orderNo": order_no,
            "buyerName": "北京测试科技有限公司",
            "buyerTaxNum": make_tax_number(42),
            "salerTaxNum": SETTINGS.user_tax,
            "invoiceDate": "2026-01-01 08:00:00",
            "clerk": "张三",
            "invoiceType": "1",
            "invoiceDetail": [
                {
                    "goodsName": "技术服务费",
                    "num": "1",
                    "price": "113",
                    "withTaxFlag": "1",
                    "taxRate": "0.13",
                }
            ],
        }
        body.update(fields)
        return {"order": body}

    async def fetch_token(self, **form: str) -> ClientResponse:
        fields = {
            "client_id": self.settings.app_key,
            "client_secret": self.settings.app_secret,
            "grant_type": "client_credentials",
            **form,
        }
        return await self.client.post("/accessToken", data=fields)

    async def token(self) -> str:
        """A token, fetched once and reused, as the gateway would."""
        if self._token is None:
            self._token = await self.new_token()
        return self._token

    async def new_token(self) -> str:
        response = await self.fetch_token()
        body = await response.json()
        return str(body["access_token"])

    async def send(self, method: str, payload: object, **overrides: Any) -> ClientResponse:
        """The raw response to a signed call; `timeout` (s) bounds it, other `overrides` go to
        `signed_call`."""
        timeout = overrides.pop("timeout", None)
        token = overrides.pop("token", None) or await self.token()
        call = signed_call(
            method,
            payload,
            token=token,
            wall=self.clock.wall(),
            settings=self.settings,
            **overrides,
        )
        extra = {"timeout": ClientTimeout(total=timeout)} if timeout is not None else {}
        return await self.client.post(
            "/open/v1/services", params=call.params, headers=call.headers, data=call.body, **extra
        )

    async def call(self, method: str, payload: object, **overrides: Any) -> dict[str, Any]:
        """The JSON answer to a signed call (asserting HTTP 200, as the platform always sends)."""
        response = await self.send(method, payload, **overrides)
        assert 200 == response.status
        body: dict[str, Any] = await response.json()
        return body

    async def issue(self, order_no: str, **fields: Any) -> dict[str, Any]:
        return await self.call(REQUEST_BILLING, self.order(order_no, **fields))

    async def control(self, verb: str, path: str, body: object = None) -> tuple[int, Any]:
        response = await self.client.request(verb, path, json=body)
        return response.status, await response.json()

    async def add_fault(self, **rule: Any) -> str:
        status, body = await self.control("POST", "/_sim/faults", rule)
        assert 201 == status, body
        return str(body["id"])

    async def ledger(self) -> dict[str, Any]:
        status, body = await self.control("GET", "/_sim/ledger")
        assert 200 == status
        result: dict[str, Any] = body
        return result


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> PlatformSettings:
    """The platform's settings; parametrize it indirectly with a dict to change some of them."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    return dataclasses.replace(SETTINGS, **overrides)


@pytest.fixture
def sim(clock: ManualClock, settings: PlatformSettings) -> Simulator:
    return build_simulator(settings, clock=clock, rng=random.Random(1234))


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[TestClient]:
    test_client = TestClient(TestServer(sim.app, host="127.0.0.1"))
    await test_client.start_server()
    yield test_client
    await test_client.close()


@pytest.fixture
def platform(client: TestClient, clock: ManualClock, settings: PlatformSettings) -> Caller:
    return Caller(client, clock, settings)
