"""The nuonuo-hmac scheme: signatures, durable single-flight tokens."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from structlog.testing import capture_logs

from gateway.app import open_gateway
from gateway.config import NuonuoHmacAuthConfig, parse_config
from gateway.errors import TokenUnavailable
from gateway.outbox.store import StoredToken
from gateway.upstream.auth.nuonuo import NuonuoHmacAuth
from gateway.upstream.auth.signature import sign
from gateway.upstream.models import UpstreamRequest, UpstreamResponse
from tests.support.fakes import FakeClock, MemoryTokenStore, platform_answer
from tests.support.token_endpoint import serving

ENV = {"K": "the-app-key", "S": "the-app-secret", "T": "91110000000000000X"}
TOKEN_KEY = "nuonuo-hmac:the-app-key"


def test_signature_matches_the_documented_formula() -> None:
    """The signature is Base64(HMAC-SHA1(secret, 'a=services&l=v1&p=open&k..&f=body'))."""
    body = b'{"order":{"orderNo":"A1"}}'
    message = b"a=services&l=v1&p=open&k=KEY&i=" + b"0" * 32 + b"&n=12345678&t=1700000000&f=" + body
    expected = base64.b64encode(hmac.new(b"SECRET", message, hashlib.sha1).digest()).decode()
    actual = sign(
        app_secret="SECRET",
        app_key="KEY",
        senid="0" * 32,
        nonce="12345678",
        timestamp="1700000000",
        body=body,
    )
    assert expected == actual


@dataclass
class TokenEndpoint:
    """The platform's token endpoint at `url`: counts calls, keeps the forms, answers tokens."""

    url: str = ""
    calls: int = 0
    fail: bool = False
    #: Answer `{"error": refusal}` instead of a token.
    refusal: str | None = None
    delay: float = 0.0
    expires_in: str = "86400"
    forms: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.forms.append(dict(await request.post()))  # type: ignore[arg-type]
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return web.json_response({"error": "070304", "error_description": "bad client"})
        if self.refusal is not None:
            return web.json_response({"error": self.refusal, "error_description": "refused"})
        return web.json_response(
            {"access_token": f"token-{self.calls}", "expires_in": self.expires_in}
        )


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    """The token endpoint, served on a free local port."""
    async with serving(TokenEndpoint()) as state:
        yield state


def make_auth(
    base_url: str,
    session: aiohttp.ClientSession,
    store: MemoryTokenStore,
    clock: FakeClock,
    **extra: Any,
) -> NuonuoHmacAuth:
    config = NuonuoHmacAuthConfig.model_validate(
        {
            "scheme": "nuonuo-hmac",
            "app_key": {"env": "K"},
            "app_secret": {"env": "S"},
            "user_tax": {"env": "T"},
            **extra,
        }
    )
    for ref in (config.app_key, config.app_secret, config.user_tax):
        assert ref.resolve(ENV) is None
    return NuonuoHmacAuth(config, base_url=base_url, session=session, tokens=store, clock=clock)


@dataclass
class Rig:
    """What the scheme runs against: the token endpoint, a session, a token store, a fake clock."""

    endpoint: TokenEndpoint
    session: aiohttp.ClientSession
    store: MemoryTokenStore = field(default_factory=MemoryTokenStore)
    clock: FakeClock = field(default_factory=FakeClock)

    def auth(self, **extra: Any) -> NuonuoHmacAuth:
        """The scheme on this rig; `extra` goes into its config."""
        return make_auth(self.endpoint.url, self.session, self.store, self.clock, **extra)

    def hold_token(self, value: str, *, age: float, expires_in: float) -> None:
        """Put `value` in the store as if obtained `age` seconds ago (e.g. before a restart)."""
        self.store.tokens[TOKEN_KEY] = StoredToken(value, self.clock.wall() - age, expires_in)


@pytest.fixture
def rig(endpoint: TokenEndpoint, session: aiohttp.ClientSession) -> Rig:
    return Rig(endpoint, session)


def request(body: bytes = b'{"x":1}') -> UpstreamRequest:
    return UpstreamRequest(
        method="POST",
        path="/open/v1/services",
        query=(("senid", "client-senid"), ("keep", "me")),
        headers=CIMultiDict(
            {"method": "m", "accessToken": "client-token", "X-Nuonuo-Sign": "forged"}
        ),
        body=body,
    )


async def test_prepare_signs_freshly_each_time(rig: Rig) -> None:
    """Each prepared request has its own senid/nonce and a valid signature; client values go."""
    auth = rig.auth()
    first, second = await auth.prepare(request()), await auth.prepare(request())
    q1, q2 = dict(first.query), dict(second.query)
    assert q1["senid"] != q2["senid"]
    assert "me" == q1["keep"]
    assert str(int(rig.clock.wall())) == q1["timestamp"]
    assert "the-app-key" == q1["appkey"]
    assert "token-1" == first.headers["accessToken"]
    assert ["token-1"] == first.headers.getall("accessToken")
    assert "91110000000000000X" == first.headers["userTax"]
    expected = sign(
        app_secret="the-app-secret",
        app_key="the-app-key",
        senid=q1["senid"],
        nonce=q1["nonce"],
        timestamp=q1["timestamp"],
        body=b'{"x":1}',
    )
    assert expected == first.headers["X-Nuonuo-Sign"]
    assert 1 == rig.endpoint.calls
    assert {
        "client_id": "the-app-key",
        "client_secret": "the-app-secret",
        "grant_type": "client_credentials",
    } == rig.endpoint.forms[0]


async def test_stored_token_is_reused(rig: Rig) -> None:
    """A token in the store (e.g. from before a restart) is used without calling the endpoint."""
    rig.hold_token("kept", age=100, expires_in=86400)
    prepared = await rig.auth().prepare(request())
    assert "kept" == prepared.headers["accessToken"]
    assert 0 == rig.endpoint.calls


async def test_concurrent_first_use_fetches_once(rig: Rig) -> None:
    """Fifty concurrent requests with no token cause one token call (single-flight)."""
    rig.endpoint.delay = 0.05
    auth = rig.auth()
    prepared = await asyncio.gather(*(auth.prepare(request()) for _ in range(50)))
    assert 1 == rig.endpoint.calls
    assert {"token-1"} == {p.headers["accessToken"] for p in prepared}
    assert 1 == rig.store.saves[TOKEN_KEY]


async def test_refresh_near_expiry_in_background(rig: Rig) -> None:
    """Past 90 % of its life the token is renewed once, while the old one keeps serving."""
    rig.hold_token("old", age=91, expires_in=100)
    auth = rig.auth()
    prepared = await asyncio.gather(*(auth.prepare(request()) for _ in range(10)))
    assert {"old"} == {p.headers["accessToken"] for p in prepared}
    for _ in range(100):
        if auth.token is not None and auth.token.value != "old":
            break
        await asyncio.sleep(0.01)
    assert 1 == rig.endpoint.calls
    assert "token-1" == (await auth.prepare(request())).headers["accessToken"]


async def test_expired_token_is_replaced_before_use(rig: Rig) -> None:
    """An expired stored token is never sent."""
    rig.hold_token("dead", age=200, expires_in=100)
    prepared = await rig.auth().prepare(request())
    assert 1 == rig.endpoint.calls
    assert "token-1" == prepared.headers["accessToken"]
    assert "token-1" == rig.store.tokens[TOKEN_KEY].value


async def test_rejected_token_refreshes_once_for_many(rig: Rig) -> None:
    """Many rejections of one token cause one refresh, and none within the interval."""
    rig.endpoint.delay = 0.02
    auth = rig.auth(min_refresh_interval="30s")
    rejected = await auth.prepare(request())
    await asyncio.gather(*(auth.credentials_rejected(rejected) for _ in range(20)))
    assert 2 == rig.endpoint.calls  # the first fetch, plus exactly one forced refresh
    renewed = await auth.prepare(request())
    assert "token-2" == renewed.headers["accessToken"]
    rig.clock.advance(5)
    await auth.credentials_rejected(renewed)
    assert 2 == rig.endpoint.calls  # within min_refresh_interval: no token storm
    rig.clock.advance(30)
    await auth.credentials_rejected(renewed)
    assert 3 == rig.endpoint.calls


async def test_replicas_sharing_a_store_fetch_once(rig: Rig) -> None:
    """Two gateways on one store (replicas on one database) asking at once: one token call;
    the other takes up the token it stored."""
    rig.endpoint.delay = 0.05
    first, second = rig.auth(), rig.auth()
    prepared = await asyncio.gather(
        *(auth.prepare(request()) for auth in (first, second) for _ in range(5))
    )
    assert 1 == rig.endpoint.calls
    assert {"token-1"} == {p.headers["accessToken"] for p in prepared}


async def test_a_replica_takes_up_the_token_another_renewed(rig: Rig) -> None:
    """Near expiry, or after a rejection, a replica reads what another already renewed instead
    of spending another token call."""
    rig.hold_token("old", age=0, expires_in=100)
    rig.endpoint.expires_in = "100"
    first, second = rig.auth(), rig.auth()
    assert "old" == (await second.prepare(request())).headers["accessToken"]
    await first.prepare(request())
    rejected = await first.prepare(request())
    await first.credentials_rejected(rejected)  # renews: token-1
    assert 1 == rig.endpoint.calls
    # The second still holds "old" and is told it is rejected: it takes up token-1.
    await second.credentials_rejected(await second.prepare(request()))
    assert "token-1" == (await second.prepare(request())).headers["accessToken"]
    assert 1 == rig.endpoint.calls
    # Past 90 % of token-1's life, one renewal between them, each ends up with token-2.
    rig.clock.advance(95)
    await first.prepare(request())
    await second.prepare(request())
    for auth in (first, second):
        for _ in range(100):
            if auth.token is not None and auth.token.value == "token-2":
                break
            await asyncio.sleep(0.01)
    assert 2 == rig.endpoint.calls
    assert {"token-2"} == {
        (await a.prepare(request())).headers["accessToken"] for a in (first, second)
    }


async def test_an_operator_refresh_is_not_taken_up_from_the_store(rig: Rig) -> None:
    """`token refresh` asks the platform even when the store holds a fresh token."""
    rig.hold_token("kept", age=0, expires_in=86400)
    auth = rig.auth()
    await auth.prepare(request())
    await auth.refresh_token()
    assert 1 == rig.endpoint.calls


class SlowSavingStore(MemoryTokenStore):
    """Saves take a few turns of the event loop, as a database's do."""

    async def save_token(self, key: str, token: StoredToken) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        await super().save_token(key, token)


async def test_an_operator_release_is_not_undone_by_a_refresh_reading_the_old_record(
    endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """A request that starts a refresh while the operator's release is still being saved must
    not take the old record (with its quota hold) back up from the store."""
    rig = Rig(endpoint, session, store=SlowSavingStore())
    rig.endpoint.refusal = "070306"
    auth = rig.auth()
    with pytest.raises(TokenUnavailable):
        await auth.prepare(request())
    rig.endpoint.refusal = None
    status, prepared = await asyncio.gather(auth.refresh_token(), auth.prepare(request()))
    assert status.hold is None
    assert "token-2" == prepared.headers["accessToken"]


async def test_token_refusal_is_token_unavailable(rig: Rig) -> None:
    """A refused token request raises TokenUnavailable naming the error and what to fix."""
    rig.endpoint.fail = True
    with pytest.raises(TokenUnavailable, match=r"070304.*upstream\.auth\.app_key"):
        await rig.auth().prepare(request())


async def test_token_endpoint_down_is_token_unavailable(session: aiohttp.ClientSession) -> None:
    """An unreachable token endpoint raises TokenUnavailable (so the request is 'not sent')."""
    from tests.support.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TokenUnavailable, match="cannot reach the token endpoint"):
        await make_auth(url, session, MemoryTokenStore(), FakeClock()).prepare(request())


async def test_rejections_during_a_renewal_wait_for_it(rig: Rig) -> None:
    """Requests rejected while the renewal is still running get the new token, not the old one."""
    rig.endpoint.delay = 0.05
    auth = rig.auth()
    rejected = await auth.prepare(request())
    first = asyncio.create_task(auth.credentials_rejected(rejected))
    await asyncio.sleep(0.01)  # the renewal is now in flight

    async def rejected_again() -> str | None:
        await auth.credentials_rejected(rejected)
        return auth.token.value if auth.token else None  # what a resend would now carry

    seen = await asyncio.gather(*(rejected_again() for _ in range(10)))
    await first
    assert ["token-2"] * 10 == seen
    assert 2 == rig.endpoint.calls
    assert "token-2" == (await auth.prepare(request())).headers["accessToken"]


# -- the token quota --------------------------------------------------------------------------


async def test_tokens_come_from_the_token_url_not_the_api_host(
    endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """With `token_url` set, the token is asked for there; the API host is never asked."""
    from tests.support.processes import free_port

    api = f"http://127.0.0.1:{free_port()}"  # nothing listens: asking it would fail
    auth = make_auth(
        api, session, MemoryTokenStore(), FakeClock(), token_url=f"{endpoint.url}/accessToken"
    )
    prepared = await auth.prepare(request())
    assert ("token-1", 1) == (prepared.headers["accessToken"], endpoint.calls)
    assert f"{endpoint.url}/accessToken" == auth.token_url


async def test_quota_refused_means_no_token_call_until_the_cooldown(rig: Rig) -> None:
    """070306 once: hours of requests make no further token call; after quota_cooldown, one."""
    rig.endpoint.refusal = "070306"
    auth = rig.auth(quota_cooldown="6h")
    for _ in range(6 * 60 - 1):
        with pytest.raises(TokenUnavailable, match="token quota is used up") as caught:
            await auth.prepare(request())
        assert "quota" == caught.value.cause
        rig.clock.advance(60)
    assert 1 == rig.endpoint.calls
    rig.endpoint.refusal = None
    rig.clock.advance(60)
    assert "token-2" == (await auth.prepare(request())).headers["accessToken"]
    assert 2 == rig.endpoint.calls


async def test_operator_refresh_ends_a_quota_hold(rig: Rig) -> None:
    """After 070306, `refresh_token` asks at once; the token then serves requests."""
    rig.endpoint.refusal = "070306"
    auth = rig.auth()
    with pytest.raises(TokenUnavailable):
        await auth.prepare(request())
    rig.endpoint.refusal = None
    status = await auth.refresh_token()
    assert (2, None, 2) == (rig.endpoint.calls, status.hold, status.calls_last_hour)
    assert "token-2" == (await auth.prepare(request())).headers["accessToken"]


async def test_wrong_secret_is_a_configuration_error_without_a_storm(rig: Rig) -> None:
    """070305: one token call, then none for a month of requests; the error names the key."""
    rig.endpoint.refusal = "070305"
    auth = rig.auth()
    for _ in range(100):
        with pytest.raises(TokenUnavailable, match=r"upstream\.auth\.app_secret") as caught:
            await auth.prepare(request())
        assert ("config_error", None) == (caught.value.cause, caught.value.retry_after)
        rig.clock.advance(8 * 3600)
    assert 1 == rig.endpoint.calls


async def test_a_restart_keeps_the_hold_and_the_counts(rig: Rig) -> None:
    """A new process on the same store makes no token call while the quota hold lasts."""
    rig.endpoint.refusal = "070306"
    with pytest.raises(TokenUnavailable):
        await rig.auth().prepare(request())
    restarted = rig.auth()
    await restarted.load()
    with pytest.raises(TokenUnavailable, match="token quota is used up"):
        await restarted.prepare(request())
    status = restarted.token_status()
    assert (1, "quota") == (rig.endpoint.calls, status.hold.cause if status.hold else None)
    assert 1 == status.calls_last_30_days


async def test_unreachable_token_endpoint_backs_off(session: aiohttp.ClientSession) -> None:
    """A failed token call holds the next one back (no call meanwhile), doubling each time."""
    from tests.support.processes import free_port

    clock = FakeClock()
    auth = make_auth(f"http://127.0.0.1:{free_port()}", session, MemoryTokenStore(), clock)
    with pytest.raises(TokenUnavailable, match="cannot reach the token endpoint"):
        await auth.prepare(request())
    for _ in range(5):
        with pytest.raises(TokenUnavailable, match="the next token call at") as caught:
            await auth.prepare(request())
        assert ("backoff", 30.0) == (caught.value.cause, caught.value.retry_after)
    clock.advance(30)
    with pytest.raises(TokenUnavailable, match="cannot reach the token endpoint"):
        await auth.prepare(request())
    status = auth.token_status()
    assert (2, 2) == (status.calls_last_hour, status.results["failure"])
    assert status.hold is not None
    assert status.hold.until == clock.wall() + 60


async def test_forced_renewals_stop_at_the_hourly_cap(rig: Rig) -> None:
    """A platform that rejects every token gets at most `per_hour` token calls in an hour."""
    auth = rig.auth(min_refresh_interval="1s", token_calls={"per_hour": 3, "per_day": 10})
    causes = []
    for _ in range(20):
        prepared = await auth.prepare(request())
        try:
            await auth.credentials_rejected(prepared)
        except TokenUnavailable as exc:
            causes.append(exc.cause)
        rig.clock.advance(2)
    assert 3 == rig.endpoint.calls
    assert ["hourly_cap"] * 18 == causes  # the first call fetched, two forced renewals


# -- the platform's clock -------------------------------------------------------------------


def stale_timestamp(rejected: UpstreamRequest, *, platform_time: float | None) -> UpstreamResponse:
    """The platform's 070601 for `rejected`, with a `Date` of `platform_time` when given."""
    headers = {}
    if platform_time is not None:
        headers["Date"] = email.utils.formatdate(platform_time, usegmt=True)
    return platform_answer(
        {"code": "070601", "describe": "signature check failed"},
        headers=headers,
        request=rejected,
    )


def signed_time(prepared: UpstreamRequest) -> int:
    return int(dict(prepared.query)["timestamp"])


async def test_refused_timestamp_learns_the_platform_clock_from_its_date(rig: Rig) -> None:
    """070601 with a Date an hour ahead: later requests are signed with the platform's time."""
    auth = rig.auth()
    rejected = await auth.prepare(request())
    platform_now = rig.clock.wall() + 3600
    assert await auth.clock_rejected(stale_timestamp(rejected, platform_time=platform_now))
    assert 3600 == pytest.approx(auth.clock_offset, abs=1)
    resent = await auth.prepare(request())
    assert int(platform_now) == pytest.approx(signed_time(resent), abs=1)
    rig.clock.advance(600)
    assert int(platform_now + 600) == pytest.approx(
        signed_time(await auth.prepare(request())), abs=1
    )
    expected = sign(
        app_secret="the-app-secret",
        app_key="the-app-key",
        senid=dict(resent.query)["senid"],
        nonce=dict(resent.query)["nonce"],
        timestamp=dict(resent.query)["timestamp"],
        body=resent.body,
    )
    assert expected == resent.headers["X-Nuonuo-Sign"]
    assert 1 == rig.endpoint.calls  # the token endpoint carries no timestamp: left alone


async def test_refused_timestamp_without_a_date_learns_nothing(rig: Rig) -> None:
    """Without a usable Date header there is nothing to correct by: no resend is worthwhile."""
    auth = rig.auth()
    rejected = await auth.prepare(request())
    assert not await auth.clock_rejected(stale_timestamp(rejected, platform_time=None))
    unparsable = platform_answer(
        {"code": "070601"}, headers={"Date": "yesterday-ish"}, request=rejected
    )
    assert not await auth.clock_rejected(unparsable)
    assert 0.0 == auth.clock_offset
    assert str(int(rig.clock.wall())) == dict((await auth.prepare(request())).query)["timestamp"]


async def test_refusal_of_the_corrected_time_is_not_resent_again(rig: Rig) -> None:
    """If the platform refuses the time its own Date gave, re-signing cannot help."""
    auth = rig.auth()
    platform_now = rig.clock.wall() - 1800
    first = await auth.prepare(request())
    assert await auth.clock_rejected(stale_timestamp(first, platform_time=platform_now))
    corrected = await auth.prepare(request())
    assert not await auth.clock_rejected(stale_timestamp(corrected, platform_time=platform_now))
    assert -1800 == pytest.approx(auth.clock_offset, abs=1)


async def test_signature_refused_with_the_clocks_in_step_blames_the_secret(rig: Rig) -> None:
    """070601 with the clocks in step: no resend, and the warning points to the app secret."""
    auth = rig.auth()
    rejected = await auth.prepare(request())
    with capture_logs() as logs:
        resend = await auth.clock_rejected(
            stale_timestamp(rejected, platform_time=rig.clock.wall())
        )
    assert (False, 0.0) == (resend, auth.clock_offset)
    [warning] = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert "the clock is not the cause" in warning
    assert "upstream.auth.app_secret" in warning


async def test_requests_signed_before_the_offset_was_learned_are_resent(rig: Rig) -> None:
    """Concurrent requests signed with the old clock each get their resend, not only the first."""
    auth = rig.auth()
    platform_now = rig.clock.wall() + 3600
    signed = [await auth.prepare(request()) for _ in range(5)]
    learned = [
        await auth.clock_rejected(stale_timestamp(r, platform_time=platform_now)) for r in signed
    ]
    assert [True] * 5 == learned
    assert 3600 == pytest.approx(auth.clock_offset, abs=1)


async def test_clock_put_right_again_is_followed(rig: Rig) -> None:
    """Once the host's clock is fixed, the next refusal takes the offset back to about zero."""
    auth = rig.auth()
    skewed = await auth.prepare(request())
    assert await auth.clock_rejected(stale_timestamp(skewed, platform_time=rig.clock.wall() + 3600))
    rig.clock.advance(3600)  # NTP steps the host's clock forward to the platform's
    late = await auth.prepare(request())
    assert await auth.clock_rejected(stale_timestamp(late, platform_time=rig.clock.wall()))
    assert 0 == pytest.approx(auth.clock_offset, abs=1)
    assert int(rig.clock.wall()) == pytest.approx(signed_time(await auth.prepare(request())), abs=1)


async def test_learned_offset_is_the_clock_offset_gauge(tmp_path: Path) -> None:
    """`gateway_upstream_clock_offset_seconds` is 0 until a refusal, then the learned offset."""
    from tests.support.processes import free_port

    raw = {
        "listen": "127.0.0.1:0",
        "store_url": f"sqlite:///{tmp_path / 'gw.db'}",
        "tenants": [{"id": "demo", "api_key": {"env": "K"}}],
        "upstream": {
            "url": f"http://127.0.0.1:{free_port()}",
            "auth": {
                "scheme": "nuonuo-hmac",
                "app_key": {"env": "K"},
                "app_secret": {"env": "S"},
                "user_tax": {"env": "T"},
            },
        },
    }
    async with open_gateway(parse_config(raw, ENV)) as gateway:
        registry = gateway.metrics.registry
        assert 0.0 == registry.get_sample_value("gateway_upstream_clock_offset_seconds")
        refused = platform_answer(
            {"code": "070601"},
            headers={"Date": email.utils.formatdate(gateway.clock.wall() - 3600, usegmt=True)},
        )
        assert await gateway.auth.clock_rejected(refused)
        offset = registry.get_sample_value("gateway_upstream_clock_offset_seconds")
    assert -3600 == pytest.approx(offset, abs=2)
