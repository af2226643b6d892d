"""Vendor-SDK clients: signature, timestamp window, replay memory and gateway tokens, on an
injected clock (edge/sdk.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import pytest
from multidict import CIMultiDict, MultiDict

from gateway.config import TenantConfig
from gateway.edge.sdk import (
    BUSY,
    CALLER_MISMATCH,
    INSTALL_KEY_ROW,
    SIGNATURE_REFUSED,
    TOKEN_INVALID,
    TOKEN_LIFETIME,
    ReplayCache,
    SdkGate,
    SdkRefused,
    is_sdk_call,
)
from tests.support.fakes import FakeClock, MemoryTokenStore

PATH = "/open/v1/services"
BODY = b'{"order":{"orderNo":"SO-1"}}'
ENV = {"DEMO_KEY": "demo-key", "DEMO_SECRET": "demo-secret", "ACME_KEY": "acme-key"}
ENV["ACME_SECRET"] = "acme-secret"


def tenants(env: dict[str, str] = ENV) -> list[TenantConfig]:
    found = []
    for tenant in ("demo", "acme"):
        config = TenantConfig.model_validate(
            {
                "id": tenant,
                "sdk_client": {
                    "app_key": {"env": f"{tenant.upper()}_KEY"},
                    "app_secret": {"env": f"{tenant.upper()}_SECRET"},
                },
            }
        )
        assert config.sdk_client is not None
        assert config.sdk_client.app_key.resolve(env) is None
        assert config.sdk_client.app_secret.resolve(env) is None
        found.append(config)
    return found


def vendor_sign(secret: str, key: str, senid: str, nonce: str, ts: str, body: bytes) -> str:
    """The vendor SDK's MakeSign, written from its published algorithm (not the gateway's)."""
    message = f"a=services&l=v1&p=open&k={key}&i={senid}&n={nonce}&t={ts}&f=".encode() + body
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha1).digest()).decode()


class Call:
    """One SDK-signed call's parts, changeable before it is checked."""

    def __init__(self, clock: FakeClock, token: str, *, nonce: str = "12345678") -> None:
        self.key, self.secret = "demo-key", "demo-secret"
        self.senid, self.nonce = "a" * 32, nonce
        self.timestamp = str(int(clock.wall()))
        self.token = token
        self.body = BODY

    async def check(self, gate: SdkGate) -> str:
        query = MultiDict(
            senid=self.senid, nonce=self.nonce, timestamp=self.timestamp, appkey=self.key
        )
        sign = vendor_sign(self.secret, self.key, self.senid, self.nonce, self.timestamp, self.body)
        headers = CIMultiDict({"X-Nuonuo-Sign": sign, "accessToken": self.token})
        return await gate.authenticate(path=PATH, query=query, headers=headers, body=self.body)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def gate_on(clock: FakeClock, configs: Sequence[TenantConfig] | None = None, **kw: Any) -> SdkGate:
    return SdkGate(configs or tenants(), store=MemoryTokenStore(), clock=clock, **kw)


async def refused(call: Call, gate: SdkGate) -> str:
    with pytest.raises(SdkRefused) as caught:
        await call.check(gate)
    return caught.value.code


async def test_a_call_signed_as_the_vendor_signs_is_its_tenants(clock: FakeClock) -> None:
    gate = gate_on(clock)
    call = Call(clock, await gate.issue_token("demo"))
    assert "demo" == await call.check(gate)


async def test_a_wrong_secret_or_body_is_a_bad_signature(clock: FakeClock) -> None:
    gate = gate_on(clock)
    token = await gate.issue_token("demo")
    wrong_secret = Call(clock, token)
    wrong_secret.secret = "guessed"
    assert SIGNATURE_REFUSED == await refused(wrong_secret, gate)
    unknown_key = Call(clock, token, nonce="22222222")
    unknown_key.key = "nobody"
    assert SIGNATURE_REFUSED == await refused(unknown_key, gate)


@pytest.mark.parametrize(("skew", "ok"), [(-299, True), (299, True), (-301, False), (301, False)])
async def test_the_timestamp_must_be_within_300_s(clock: FakeClock, skew: int, ok: bool) -> None:
    gate = gate_on(clock)
    call = Call(clock, await gate.issue_token("demo"))
    call.timestamp = str(int(clock.wall()) + skew)
    if ok:
        assert "demo" == await call.check(gate)
    else:
        assert SIGNATURE_REFUSED == await refused(call, gate)


async def test_a_replayed_senid_and_nonce_is_refused(clock: FakeClock) -> None:
    gate = gate_on(clock)
    call = Call(clock, await gate.issue_token("demo"))
    assert "demo" == await call.check(gate)
    clock.advance(10)
    assert SIGNATURE_REFUSED == await refused(call, gate)
    call.nonce = "87654321"  # a fresh nonce: a new call
    assert "demo" == await call.check(gate)


async def test_an_unverified_call_is_not_remembered(clock: FakeClock) -> None:
    """A forged call cannot fill the memory or block the real one with its senid and nonce."""
    gate = gate_on(clock)
    forged = Call(clock, await gate.issue_token("demo"))
    forged.secret = "guessed"
    assert SIGNATURE_REFUSED == await refused(forged, gate)
    forged.secret = "demo-secret"
    assert "demo" == await forged.check(gate)


def test_the_replay_memory_forgets_after_twice_the_window(clock: FakeClock) -> None:
    cache = ReplayCache(clock, window=300, capacity=10)
    assert cache.first_time(("k", "s", "1"))
    clock.advance(599)
    assert not cache.first_time(("k", "s", "1"))
    clock.advance(2)
    assert cache.first_time(("k", "s", "1"))


def test_the_replay_memory_is_bounded_and_refuses_when_full(clock: FakeClock) -> None:
    """Full of live entries it answers busy rather than forget one (a replay could pass)."""
    cache = ReplayCache(clock, window=300, capacity=2)
    assert cache.first_time(("k", "s", "1"))
    assert cache.first_time(("k", "s", "2"))
    with pytest.raises(SdkRefused) as caught:
        cache.first_time(("k", "s", "3"))
    assert BUSY == caught.value.code
    assert 2 == len(cache)
    clock.advance(601)
    assert cache.first_time(("k", "s", "3"))
    assert 1 == len(cache)


async def test_another_tenants_token_is_a_caller_mismatch(clock: FakeClock) -> None:
    gate = gate_on(clock)
    call = Call(clock, await gate.issue_token("acme"))
    assert CALLER_MISMATCH == await refused(call, gate)


@pytest.mark.parametrize("token", ["", "junk", "a.b", "a.b.c"])
async def test_a_token_the_gateway_never_issued_is_invalid(clock: FakeClock, token: str) -> None:
    gate = gate_on(clock)
    assert TOKEN_INVALID == await refused(Call(clock, token), gate)


async def test_a_token_with_a_changed_payload_is_invalid(clock: FakeClock) -> None:
    """Naming another tenant or a later expiry breaks the MAC."""
    gate = gate_on(clock)
    payload, mac = (await gate.issue_token("acme")).split(".")
    expires, nonce, _ = base64.urlsafe_b64decode(payload + "==").decode().split(":")
    forged = base64.urlsafe_b64encode(f"{expires}:{nonce}:demo".encode()).decode().rstrip("=")
    assert TOKEN_INVALID == await refused(Call(clock, f"{forged}.{mac}"), gate)


async def test_a_token_expires_after_a_day(clock: FakeClock) -> None:
    gate = gate_on(clock)
    token = await gate.issue_token("demo")
    clock.advance(TOKEN_LIFETIME - 1)
    assert "demo" == await Call(clock, token, nonce="11111111").check(gate)
    clock.advance(1)
    assert TOKEN_INVALID == await refused(Call(clock, token, nonce="22222222"), gate)


async def test_new_sdk_credentials_end_the_tenants_tokens(clock: FakeClock) -> None:
    gate = gate_on(clock)
    token = await gate.issue_token("demo")
    gate.reconfigure(tenants({**ENV, "DEMO_SECRET": "rotated"}))
    call = Call(clock, token)
    call.secret = "rotated"
    assert TOKEN_INVALID == await refused(call, gate)


async def test_every_replica_accepts_a_token_and_the_key_is_made_once(clock: FakeClock) -> None:
    store = MemoryTokenStore()
    one = SdkGate(tenants(), store=store, clock=clock)
    other = SdkGate(tenants(), store=store, clock=clock)
    token = await one.issue_token("demo")
    assert "demo" == await other.token_tenant(token)
    assert 1 == store.saves[INSTALL_KEY_ROW]


def test_two_tenants_may_not_share_an_sdk_app_key(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match=r"same sdk_client\.app_key"):
        gate_on(clock, tenants({**ENV, "ACME_KEY": "demo-key"}))


def test_an_sdk_call_is_signed_and_has_no_api_key() -> None:
    signed = CIMultiDict({"X-Nuonuo-Sign": "x"})
    assert is_sdk_call(signed, {"appkey": "k"})
    assert not is_sdk_call(signed, {})
    assert not is_sdk_call(CIMultiDict({"X-Nuonuo-Sign": "x", "X-Api-Key": "k"}), {"appkey": "k"})
