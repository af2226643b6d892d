"""`/admin/v1/token`: the token's state for viewers, and the operator's refresh, audited first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway, open_gateway
from gateway.config import parse_config
from gateway.ops.admin import admin_app
from tests.unit.ops.admin.conftest import (
    ENVIRON,
    OPERATOR,
    VIEWER,
    AdminClient,
    problem,
    raw_config,
)


@dataclass
class TokenHost:
    """The platform's token endpoint: answers `refusal` as an error code, else a token."""

    url: str = ""
    calls: int = 0
    refusal: str | None = None

    async def handle(self, _request: web.Request) -> web.Response:
        self.calls += 1
        if self.refusal is not None:
            return web.json_response({"error": self.refusal, "error_description": "refused"})
        return web.json_response(
            {
                "access_token": f"tok-{self.calls}",
                "expires_in": "86400",
                "refresh_token": f"refresh-{self.calls}",
                "userId": "merchant-user",
            }
        )


@pytest.fixture
async def token_host() -> AsyncIterator[TokenHost]:
    host = TokenHost()
    app = web.Application()
    app.router.add_post("/accessToken", host.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    host.url = str(server.make_url("/accessToken"))
    try:
        yield host
    finally:
        await server.close()


@pytest.fixture
async def signing_gateway(token_host: TokenHost, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose scheme is nuonuo-hmac, its tokens from `token_host`."""
    raw = raw_config("http://127.0.0.1:9", tmp_path)
    raw["upstream"]["auth"] = {
        "scheme": "nuonuo-hmac",
        "app_key": {"env": "APP_KEY"},
        "app_secret": {"env": "APP_SECRET"},
        "user_tax": {"env": "USER_TAX"},
        "token_url": token_host.url,
    }
    environ = {**ENVIRON, "APP_KEY": "k", "APP_SECRET": "s", "USER_TAX": "91110000000000000X"}
    async with open_gateway(parse_config(raw, environ)) as opened:
        opened.dispatcher.pause()
        yield opened


@pytest.fixture
async def token_client(signing_gateway: Gateway) -> AsyncIterator[AdminClient]:
    test_client = TestClient(TestServer(admin_app(signing_gateway), host="127.0.0.1"))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


async def audited(gateway: Gateway) -> list[tuple[str, str | None, dict[str, Any]]]:
    entries, _ = await gateway.store.audit_log(limit=50, cursor=None)
    return [(e.action, e.reason, e.details or {}) for e in reversed(entries)]


async def test_viewers_see_the_token_state_without_the_token(
    token_client: AdminClient, token_host: TokenHost
) -> None:
    """Before any call: no token, no calls, no hold, the endpoint it would ask."""
    response = await token_client.get("/admin/v1/token", headers=VIEWER)
    assert 200 == response.status
    body = await response.json()
    assert (token_host.url, None, None) == (body["token_url"], body["token"], body["hold"])
    assert {"last_hour": 0, "last_day": 0, "last_30_days": 0, "per_hour": 5, "per_day": 20} == (
        body["calls"]
    )


async def test_refresh_needs_a_reason(token_client: AdminClient, token_host: TokenHost) -> None:
    """Without a reason nothing is asked: the quota is spent only with an explanation."""
    response = await token_client.post("/admin/v1/token/refresh", json={}, headers=OPERATOR)
    assert 400 == response.status
    assert "a reason is required" in (await problem(response))["detail"]
    assert 0 == token_host.calls


async def test_refresh_gets_a_token_and_is_audited(
    token_client: AdminClient, signing_gateway: Gateway, token_host: TokenHost
) -> None:
    """A refresh makes one token call; the audit entry carries the reason."""
    response = await token_client.post(
        "/admin/v1/token/refresh", json={"reason": "rotate after incident"}, headers=OPERATOR
    )
    assert 200 == response.status
    body = await response.json()
    assert (1, 1) == (token_host.calls, body["calls"]["last_hour"])
    assert body["token"]["obtained_at"].endswith("Z")
    assert [
        ("token-refresh", "rotate after incident", {"hold": None, "calls_last_30_days": 0})
    ] == await audited(signing_gateway)


async def test_a_refresh_the_platform_refuses_is_a_503_naming_the_cause(
    token_client: AdminClient, signing_gateway: Gateway, token_host: TokenHost
) -> None:
    """070306 again: `503 token-unavailable` with cause quota, and the hold in the state."""
    token_host.refusal = "070306"
    response = await token_client.post(
        "/admin/v1/token/refresh", json={"reason": "vendor reset it"}, headers=OPERATOR
    )
    assert 503 == response.status
    body = await problem(response)
    assert ("urn:invoice-gateway:problem:token-unavailable", "quota") == (
        body["type"],
        body["cause"],
    )
    assert "token quota is used up" in body["detail"]
    assert "quota" == body["token"]["hold"]["cause"]
    assert ["token-refresh"] == [action for action, _, _ in await audited(signing_gateway)]


async def test_viewers_may_not_refresh(token_client: AdminClient, token_host: TokenHost) -> None:
    """A refresh spends the platform's quota: operators only."""
    response = await token_client.post(
        "/admin/v1/token/refresh", json={"reason": "curious"}, headers=VIEWER
    )
    assert 403 == response.status
    assert 0 == token_host.calls


async def test_a_scheme_without_tokens_has_no_token_route(client: AdminClient) -> None:
    """`upstream.auth.scheme: none`: both routes answer 409 saying so."""
    shown = await client.get("/admin/v1/token", headers=VIEWER)
    refreshed = await client.post(
        "/admin/v1/token/refresh", json={"reason": "try"}, headers=OPERATOR
    )
    assert (409, 409) == (shown.status, refreshed.status)
    for response in (shown, refreshed):
        assert "has no token" in (await problem(response))["detail"]


@pytest.fixture
async def merchant_client(
    token_host: TokenHost, tmp_path: Path
) -> AsyncIterator[tuple[AdminClient, Gateway]]:
    """An admin client of a gateway with a merchant tenant `shop` (its own platform identity)."""
    raw = raw_config("http://127.0.0.1:9", tmp_path)
    raw["upstream"]["auth"] = {
        "scheme": "nuonuo-hmac",
        "app_key": {"env": "APP_KEY"},
        "app_secret": {"env": "APP_SECRET"},
        "user_tax": {"env": "USER_TAX"},
        "token_url": token_host.url,
    }
    raw["tenants"].append(
        {
            "id": "shop",
            "api_key_sha256": "0" * 64,
            "upstream": {
                "user_tax": {"env": "SHOP_TAX"},
                "code": {"env": "SHOP_CODE"},
                "redirect_uri": "https://isv.example.com/cb",
            },
        }
    )
    environ = {
        **ENVIRON,
        "APP_KEY": "k",
        "APP_SECRET": "s",
        "USER_TAX": "91110000000000000X",
        "SHOP_TAX": "91330100MA2AAAAA1X",
        "SHOP_CODE": "the-code",
    }
    async with open_gateway(parse_config(raw, environ)) as opened:
        opened.dispatcher.pause()
        test_client = TestClient(TestServer(admin_app(opened), host="127.0.0.1"))
        await test_client.start_server()
        try:
            yield test_client, opened
        finally:
            await test_client.close()


async def test_tenants_tokens_are_shown_and_refreshed_one_by_one(
    merchant_client: tuple[AdminClient, Gateway], token_host: TokenHost
) -> None:
    """GET lists the merchant tenant's own token; a refresh with its id spends its code once,
    is audited with the tenant, and leaves the gateway's own token alone; an unknown one is 404."""
    client, gateway = merchant_client
    shown = await (await client.get("/admin/v1/token", headers=VIEWER)).json()
    assert ["shop"] == list(shown["tenants"])
    assert ("authorization_code", None) == (
        shown["tenants"]["shop"]["grant"],
        shown["tenants"]["shop"]["token"],
    )

    response = await client.post(
        "/admin/v1/token/refresh",
        json={"reason": "merchant authorized", "tenant": "shop"},
        headers=OPERATOR,
    )
    assert 200 == response.status
    body = await response.json()
    assert ("shop", 1) == (body["tenant"], token_host.calls)
    assert body["token"]["obtained_at"].endswith("Z")
    shown = await (await client.get("/admin/v1/token", headers=VIEWER)).json()
    assert (None, 1) == (shown["token"], shown["tenants"]["shop"]["calls"]["last_hour"])
    assert [
        (
            "token-refresh",
            "merchant authorized",
            {"hold": None, "calls_last_30_days": 0, "tenant": "shop"},
        )
    ] == await audited(gateway)

    unknown = await client.post(
        "/admin/v1/token/refresh", json={"reason": "x", "tenant": "demo"}, headers=OPERATOR
    )
    assert 404 == unknown.status
