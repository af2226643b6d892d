"""The nuonuo-hmac scheme for a service-provider application: one token per merchant tenant,
obtained with its authorization code once, renewed with its refresh token, each guarded alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.config import ConfigError, NuonuoHmacAuthConfig, TenantConfig, parse_config
from gateway.errors import NotFound, TokenUnavailable
from gateway.upstream.auth.nuonuo import NuonuoHmacAuth
from gateway.upstream.auth.tokens import StoredToken
from gateway.upstream.models import UpstreamRequest
from tests.support.fakes import FakeClock, MemoryTokenStore
from tests.support.token_endpoint import serving

ENV = {
    "K": "the-app-key",
    "S": "the-app-secret",
    "T": "91110000000000000X",
    "A_TAX": "91330100AAAAAAAAAA",
    "A_CODE": "code-a",
    "B_TAX": "91330100BBBBBBBBBB",
    "B_CODE": "code-b",
}
CALLBACK = "https://isv.example.com/nuonuo/callback"
KEY_A = "nuonuo-hmac:the-app-key:shop-a"
KEY_B = "nuonuo-hmac:the-app-key:shop-b"


@dataclass
class IsvTokenEndpoint:
    """The token endpoint of a service-provider application: codes once, refresh tokens after.

    `codes` maps an unused code to its merchant's tax number; a merchant's user id is
    `user-{taxNum}`. `gate`, when set, holds every answer until it opens."""

    url: str = ""
    codes: dict[str, str] = field(default_factory=lambda: {"code-a": ENV["A_TAX"]})
    #: Refresh tokens still good, and whose (user id).
    refresh: dict[str, str] = field(default_factory=dict)
    forms: list[dict[str, str]] = field(default_factory=list)
    expires_in: str = "86400"
    gate: asyncio.Event | None = None
    #: Set once `expected` calls have arrived (before the gate).
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 1
    issued: int = 0
    #: User ids whose refresh is answered 070306 (the token quota is used up).
    quota_users: set[str] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        if len(self.forms) >= self.expected:
            self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if form.get("client_secret") != ENV["S"]:
            return web.json_response({"error": "070305", "error_description": "bad secret"})
        if form.get("grant_type") == "authorization_code":
            tax = self.codes.pop(form.get("code", ""), None)
            if tax is None or tax != form.get("taxNum") or form.get("redirect_uri") != CALLBACK:
                return web.json_response({"error": "070308", "error_description": "bad code"})
            user = f"user-{tax}"
        elif form.get("client_id") in self.quota_users:
            return web.json_response({"error": "070306", "error_description": "quota"})
        elif form.get("grant_type") == "refresh_token":
            user = self.refresh.pop(form.get("refresh_token", ""), "")
            if not user or user != form.get("client_id"):
                return web.json_response({"error": "070304", "error_description": "refused"})
        else:
            return web.json_response({"error": "070307", "error_description": "grant"})
        self.issued += 1
        refresh = f"refresh-{self.issued}"
        self.refresh[refresh] = user
        return web.json_response(
            {
                "access_token": f"token-{self.issued}",
                "refresh_token": refresh,
                "expires_in": self.expires_in,
                "userId": user,
            }
        )

    def grants(self) -> list[str]:
        return [form["grant_type"] for form in self.forms]


@pytest.fixture
async def endpoint() -> AsyncIterator[IsvTokenEndpoint]:
    """The token endpoint, served on a free local port."""
    async with serving(IsvTokenEndpoint()) as state:
        yield state


def merchant(tenant: str, tax: str, code: str | None) -> dict[str, Any]:
    upstream: dict[str, Any] = {"user_tax": {"env": tax}, "redirect_uri": CALLBACK}
    if code is not None:
        upstream["code"] = {"env": code}
    return {"id": tenant, "api_key_sha256": "0" * 64, "upstream": upstream}


@dataclass
class Rig:
    endpoint: IsvTokenEndpoint
    session: aiohttp.ClientSession
    store: MemoryTokenStore = field(default_factory=MemoryTokenStore)
    clock: FakeClock = field(default_factory=FakeClock)
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))

    def auth(self, *, b_code: bool = True, **extra: Any) -> NuonuoHmacAuth:
        """The scheme with tenants shop-a and shop-b (merchants) and demo (the gateway's own)."""
        config = NuonuoHmacAuthConfig.model_validate(
            {
                "scheme": "nuonuo-hmac",
                "app_key": {"env": "K"},
                "app_secret": {"env": "S"},
                "user_tax": {"env": "T"},
                "token_url": f"{self.endpoint.url}/accessToken",
                **extra,
            }
        )
        tenants = [
            TenantConfig.model_validate(merchant("shop-a", "A_TAX", "A_CODE")),
            TenantConfig.model_validate(merchant("shop-b", "B_TAX", "B_CODE" if b_code else None)),
            TenantConfig.model_validate({"id": "demo", "api_key_sha256": "1" * 64}),
        ]
        refs = [config.app_key, config.app_secret, config.user_tax]
        for tenant in tenants:
            if tenant.upstream is not None:
                refs.append(tenant.upstream.user_tax)
                if tenant.upstream.code is not None:
                    refs.append(tenant.upstream.code)
        for ref in refs:
            assert ref.resolve(self.env) is None
        return NuonuoHmacAuth(
            config,
            base_url="http://unused",
            session=self.session,
            tokens=self.store,
            clock=self.clock,
            tenants=tenants,
        )


@pytest.fixture
def rig(endpoint: IsvTokenEndpoint, session: aiohttp.ClientSession) -> Rig:
    return Rig(endpoint, session)


def request(tenant: str | None) -> UpstreamRequest:
    return UpstreamRequest(
        method="POST",
        path="/open/v1/services",
        query=(),
        headers=CIMultiDict({"method": "m", "userTax": "forged"}),
        body=b"{}",
        tenant=tenant,
    )


async def test_a_merchant_token_comes_from_its_code(rig: Rig) -> None:
    """A merchant's first call exchanges its code (with taxNum and redirect_uri) for a token,
    signs with it and its own tax number, and keeps the token and refresh token per tenant."""
    prepared = await rig.auth().prepare(request("shop-a"))
    assert ("token-1", ENV["A_TAX"]) == (
        prepared.headers["accessToken"],
        prepared.headers["userTax"],
    )
    assert [
        {
            "grant_type": "authorization_code",
            "client_id": "the-app-key",
            "client_secret": "the-app-secret",
            "code": "code-a",
            "taxNum": ENV["A_TAX"],
            "redirect_uri": CALLBACK,
        }
    ] == rig.endpoint.forms
    assert "token-1" == rig.store.tokens[KEY_A].value
    kept = json.loads(rig.store.tokens[f"{KEY_A}:grant"].value)
    assert ("refresh-1", f"user-{ENV['A_TAX']}") == (kept["refresh_token"], kept["user_id"])


async def test_a_tenant_without_an_identity_uses_the_gateways_own(rig: Rig) -> None:
    """A tenant without `upstream`, or no tenant (the probe), is signed as the gateway's own
    application (client_credentials) with `upstream.auth.user_tax`; merchants' tokens are not
    touched."""
    rig.store.tokens["nuonuo-hmac:the-app-key"] = StoredToken("own", rig.clock.wall(), 86400)
    auth = rig.auth()
    for tenant in ("demo", None):
        prepared = await auth.prepare(request(tenant))
        assert ("own", ENV["T"]) == (prepared.headers["accessToken"], prepared.headers["userTax"])
    assert [] == rig.endpoint.forms


async def test_the_code_is_never_sent_again_once_a_token_is_stored(rig: Rig) -> None:
    """After a restart the stored token is reused (no call); once it nears expiry it is renewed
    with the refresh token and the merchant's user id as client_id, never the code again."""
    await rig.auth().prepare(request("shop-a"))
    restarted = rig.auth()
    assert "token-1" == (await restarted.prepare(request("shop-a"))).headers["accessToken"]
    assert ["authorization_code"] == rig.endpoint.grants()

    rig.clock.advance(86400 * 0.95)
    await restarted.prepare(request("shop-a"))  # still the old one; renewal in the background
    renewed = await restarted.prepare(request("shop-a"))
    while renewed.headers["accessToken"] == "token-1":
        await asyncio.sleep(0)  # let the background renewal finish; no time passes
        renewed = await restarted.prepare(request("shop-a"))
    assert "token-2" == renewed.headers["accessToken"]
    assert ["authorization_code", "refresh_token"] == rig.endpoint.grants()
    assert {
        "grant_type": "refresh_token",
        "refresh_token": "refresh-1",
        "client_id": f"user-{ENV['A_TAX']}",
        "client_secret": "the-app-secret",
    } == rig.endpoint.forms[1]
    assert "refresh-2" == json.loads(rig.store.tokens[f"{KEY_A}:grant"].value)["refresh_token"]


async def test_an_expired_merchant_token_is_refreshed_before_use(rig: Rig) -> None:
    """A merchant token past its lifetime is replaced by a refresh before the call is signed."""
    await rig.auth().prepare(request("shop-a"))
    rig.clock.advance(86400 + 1)
    prepared = await rig.auth().prepare(request("shop-a"))
    assert "token-2" == prepared.headers["accessToken"]
    assert ["authorization_code", "refresh_token"] == rig.endpoint.grants()


async def test_concurrent_first_calls_of_one_merchant_spend_its_code_once(rig: Rig) -> None:
    """Twenty concurrent calls of each merchant: one token call per merchant (single-flight per
    tenant), each merchant's calls with its own token."""
    rig.endpoint.codes["code-b"] = ENV["B_TAX"]
    rig.endpoint.gate = asyncio.Event()
    rig.endpoint.expected = 2
    auth = rig.auth()
    calls = [
        asyncio.ensure_future(auth.prepare(request(tenant)))
        for _ in range(20)
        for tenant in ("shop-a", "shop-b")
    ]
    await rig.endpoint.arrived.wait()
    rig.endpoint.gate.set()
    prepared = await asyncio.gather(*calls)
    assert ["code-a", "code-b"] == sorted(form["code"] for form in rig.endpoint.forms)
    by_tenant: dict[str, set[tuple[str, str]]] = {}
    for call in prepared:
        by_tenant.setdefault(str(call.tenant), set()).add(
            (call.headers["accessToken"], call.headers["userTax"])
        )
    assert {1} == {len(pairs) for pairs in by_tenant.values()}
    assert {ENV["A_TAX"], ENV["B_TAX"]} == {tax for pairs in by_tenant.values() for _, tax in pairs}
    assert 1 == rig.store.saves[KEY_A]
    assert 1 == rig.store.saves[KEY_B]


async def test_a_refused_refresh_token_holds_that_merchant_only(rig: Rig) -> None:
    """The platform refuses shop-a's refresh token: shop-a is held (config_error, naming the new
    authorization it needs) with no further token call, even after a restart; shop-b and the
    gateway's own tenants carry on."""
    rig.endpoint.codes["code-b"] = ENV["B_TAX"]
    auth = rig.auth()
    await auth.prepare(request("shop-a"))
    await auth.prepare(request("shop-b"))
    rig.endpoint.refresh.pop("refresh-1")  # the merchant withdrew the authorization
    rig.clock.advance(86400 + 1)

    with pytest.raises(TokenUnavailable) as refused:
        await auth.prepare(request("shop-a"))
    assert "config_error" == refused.value.cause
    assert "tenants[0].upstream.code" in str(refused.value)
    assert "authorize the application again" in str(refused.value)
    calls = len(rig.endpoint.forms)

    restarted = rig.auth()
    with pytest.raises(TokenUnavailable):
        await restarted.prepare(request("shop-a"))
    assert calls == len(rig.endpoint.forms)
    status = restarted.tenant_tokens()["shop-a"]
    assert ("config_error", "authorization_code") == (
        status.hold.cause.value if status.hold else None,
        status.grant,
    )

    prepared = await restarted.prepare(request("shop-b"))
    assert ("token-3", ENV["B_TAX"]) == (
        prepared.headers["accessToken"],
        prepared.headers["userTax"],
    )
    assert restarted.tenant_tokens()["shop-b"].hold is None


async def test_a_new_code_ends_the_hold_after_a_refused_refresh(rig: Rig) -> None:
    """After the refused refresh, a restart with the merchant's new code exchanges it once."""
    auth = rig.auth()
    await auth.prepare(request("shop-a"))
    rig.endpoint.refresh.clear()
    rig.clock.advance(86400 + 1)
    with pytest.raises(TokenUnavailable):
        await auth.prepare(request("shop-a"))

    rig.endpoint.codes["code-a2"] = ENV["A_TAX"]
    rig.env["A_CODE"] = "code-a2"
    prepared = await rig.auth().prepare(request("shop-a"))
    assert "token-2" == prepared.headers["accessToken"]
    assert ["authorization_code", "refresh_token", "authorization_code"] == rig.endpoint.grants()


async def test_a_refused_code_is_not_sent_again(rig: Rig) -> None:
    """A code the platform refuses is spent: the tenant is held naming the key, and a restart
    with the same code makes no call."""
    rig.endpoint.codes.clear()
    with pytest.raises(TokenUnavailable) as refused:
        await rig.auth().prepare(request("shop-a"))
    assert "refused its authorization code" in str(refused.value)
    with pytest.raises(TokenUnavailable) as again:
        await rig.auth().prepare(request("shop-a"))
    assert "tenants[0].upstream.code" in str(again.value)
    assert 1 == len(rig.endpoint.forms)


async def test_a_merchant_without_token_or_code_is_held_without_a_call(rig: Rig) -> None:
    """shop-b has no code and no stored token: held at once, naming the key to set."""
    with pytest.raises(TokenUnavailable) as held:
        await rig.auth(b_code=False).prepare(request("shop-b"))
    assert "tenants[1].upstream.code" in str(held.value)
    assert [] == rig.endpoint.forms


async def test_one_merchants_quota_does_not_hold_another(rig: Rig) -> None:
    """The platform says shop-a's token quota is used up (070306): shop-a is held with no
    further call, while shop-b's token is still renewed."""
    rig.endpoint.codes["code-b"] = ENV["B_TAX"]
    auth = rig.auth()
    await auth.prepare(request("shop-a"))
    await auth.prepare(request("shop-b"))
    rig.endpoint.quota_users.add(f"user-{ENV['A_TAX']}")
    rig.clock.advance(86400 + 1)

    for _ in range(3):
        with pytest.raises(TokenUnavailable) as held:
            await auth.prepare(request("shop-a"))
        assert "quota" == held.value.cause
    assert 3 == len(rig.endpoint.forms)
    assert "token-3" == (await auth.prepare(request("shop-b"))).headers["accessToken"]
    assert auth.tenant_tokens()["shop-b"].hold is None


async def test_operator_refresh_of_one_tenant(rig: Rig) -> None:
    """`refresh_token(tenant)` renews that merchant's token only; an unknown tenant is 404."""
    auth = rig.auth()
    await auth.prepare(request("shop-a"))
    status = await auth.refresh_token("shop-a")
    assert ["authorization_code", "refresh_token"] == rig.endpoint.grants()
    assert "token-2" == rig.store.tokens[KEY_A].value
    assert status.obtained_at == rig.clock.wall()
    with pytest.raises(NotFound):
        await auth.refresh_token("demo")


def test_tenant_upstream_is_validated_by_key() -> None:
    """A tenant's upstream identity is checked at start, every problem named by its key."""
    raw = {
        "tenants": [
            {
                "id": "shop-a",
                "api_key_sha256": "0" * 64,
                "upstream": {"user_tax": "9133", "redirect_uri": "callback", "grant": "password"},
            }
        ],
        "upstream": {"url": "http://127.0.0.1:1", "auth": {"scheme": "none"}},
    }
    with pytest.raises(ConfigError) as problems:
        parse_config(raw, {})
    text = "\n".join(problems.value.problems)
    assert "tenants[0].upstream.user_tax" in text
    assert "tenants[0].upstream.redirect_uri" in text
    assert "tenants[0].upstream.grant" in text


def test_tenant_upstream_needs_the_nuonuo_scheme() -> None:
    """A merchant tenant under `upstream.auth.scheme: none` is refused at start."""
    raw = {
        "tenants": [merchant("shop-a", "A_TAX", None)],
        "upstream": {"url": "http://127.0.0.1:1", "auth": {"scheme": "none"}},
    }
    with pytest.raises(ConfigError) as problems:
        parse_config(raw, ENV)
    assert any("tenants[0].upstream" in p and "nuonuo-hmac" in p for p in problems.value.problems)


def test_tenant_secrets_are_resolved_and_masked() -> None:
    """A merchant's tax number and code are secrets: resolved at start, unset ones named."""
    raw = {
        "tenants": [merchant("shop-a", "A_TAX", "A_CODE")],
        "upstream": {
            "url": "http://127.0.0.1:1",
            "auth": {
                "scheme": "nuonuo-hmac",
                "app_key": {"env": "K"},
                "app_secret": {"env": "S"},
                "user_tax": {"env": "T"},
            },
        },
    }
    config = parse_config(raw, ENV)
    keys = [key for key, _ in config.secrets()]
    assert ["tenants[0].upstream.user_tax", "tenants[0].upstream.code"] == keys[:2]
    with pytest.raises(ConfigError) as problems:
        parse_config(raw, {k: v for k, v in ENV.items() if k != "A_CODE"})
    assert any("tenants[0].upstream.code" in p for p in problems.value.problems)
