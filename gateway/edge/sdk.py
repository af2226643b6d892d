"""Vendor-SDK clients (docs/sdk-clients.md): ERPs that call through the platform's own SDK
(Java `open-sdk`, .NET, PHP and their ports) with only the URL changed.

Such a client fetches its token from `POST /accessToken` (form `client_id`, `client_secret`,
`grant_type=client_credentials`) and signs every call itself: `senid`, `nonce`, `timestamp` and
`appkey` as query parameters, `X-Nuonuo-Sign` = base64(HMAC-SHA1(app_secret, message)) with
the message `a=<3rd path piece>&l=<2nd>&p=<1st>&k=<appkey>&i=<senid>&n=<nonce>&t=<timestamp>`
then `&f=<body>`, and the token in the `accessToken` header. A tenant's `sdk_client` holds the
pair it signs with: the gateway's own credentials for that tenant, never the platform's.

An SDK call (`appkey` and `X-Nuonuo-Sign`, no `X-Api-Key`) is checked cheapest first, and
nothing is remembered of a call whose signature did not verify:

    `appkey` is a tenant's sdk_client                   else 070601
    `timestamp` within ±300 s of the gateway's clock     else 070601 (the vendor: check the clock)
    `X-Nuonuo-Sign` verifies with that tenant's secret   else 070601
    (`senid`, `nonce`) not seen within the window        else 070601 (a replay); memory full: 040102
    `accessToken` is a live gateway token                else 070301
                  issued to this same tenant             else 070401

Refusals answer as the platform does: HTTP 200 with `{"code", "describe"}`. The replay memory is
per process (bounded in entries and in time: an entry is kept twice the window, after which its
`timestamp` is refused anyway).

Gateway tokens are self-contained: `<payload>.<mac>`, the payload (base64url) naming the tenant
and the expiry, the MAC an HMAC-SHA256 under a key derived from a per-install random key (a row
of the store, made once, so every replica shares it) and the tenant's SDK credentials. Any
replica checks a token without a store read per call; nothing grows with the number of tokens;
changing a tenant's `app_key` or `app_secret` ends all its tokens at once. A client's token call
never reaches the platform's token endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web
from multidict import MultiMapping

from gateway.clock import Clock
from gateway.config import TenantConfig
from gateway.upstream.auth.signature import SIGNED_QUERY_PARAMS
from gateway.upstream.auth.tokens import StoredToken, TokenStore

# ruff: noqa: S105  # names with TOKEN or SECRET hold header names and platform codes here

log = structlog.get_logger("gateway.edge.sdk")

SIGN_HEADER: Final = "X-Nuonuo-Sign"
TOKEN_HEADER: Final = "accessToken"
#: What an SDK call brings that must never travel further (the gateway signs afresh).
SDK_HEADERS: Final = (SIGN_HEADER, TOKEN_HEADER)
SDK_QUERY_PARAMS: Final = SIGNED_QUERY_PARAMS

# The platform's codes (docs/design.md#business-codes), HTTP 200 `{"code", "describe"}`.
SIGNATURE_REFUSED: Final = "070601"
TOKEN_INVALID: Final = "070301"
CALLER_MISMATCH: Final = "070401"
BUSY: Final = "040102"
# The token endpoint's, HTTP 200 `{"error", "error_description"}`.
UNKNOWN_CLIENT_ID: Final = "070304"
WRONG_CLIENT_SECRET: Final = "070305"
WRONG_GRANT_TYPE: Final = "070307"

#: How far a signed `timestamp` may be from the gateway's clock, either way (the platform's).
TIMESTAMP_WINDOW: Final = 300.0
#: A gateway token's lifetime, as the platform's (24 h).
TOKEN_LIFETIME: Final = 86_400
#: (senid, nonce) pairs remembered per process at most.
REPLAY_CAPACITY: Final = 200_000
#: The store row holding the per-install key gateway tokens are signed under.
INSTALL_KEY_ROW: Final = "sdk-client:token-key"
#: What a row without an expiry says as its lifetime: 100 years.
_FOREVER: Final = 100 * 365 * 86400.0
_MAC_BYTES: Final = 16


class SdkRefused(Exception):
    """An SDK call refused before anything was queued or sent; answered in the platform's
    shape with `code`."""

    def __init__(self, code: str, describe: str) -> None:
        super().__init__(f"{code}: {describe}")
        self.code = code
        self.describe = describe

    def answer(self) -> web.Response:
        return web.json_response(
            {"code": self.code, "describe": self.describe},
            dumps=_dumps,
        )


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def is_sdk_call(headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """A call signed as the vendor's SDK signs: `appkey` and `X-Nuonuo-Sign`, no `X-Api-Key`."""
    return "appkey" in query and SIGN_HEADER in headers and "X-Api-Key" not in headers


def signature_message(
    path: str, *, app_key: str, senid: str, nonce: str, timestamp: str, body: bytes
) -> bytes | None:
    """The bytes the vendor's SDK signs for a call to `path` (`/open/v1/services`: p=open,
    l=v1, a=services); None when the path has fewer than three pieces."""
    pieces = path.split("/")
    if len(pieces) < 4:
        return None
    head = f"a={pieces[3]}&l={pieces[2]}&p={pieces[1]}"
    head += f"&k={app_key}&i={senid}&n={nonce}&t={timestamp}&f="
    return head.encode() + body


def signature(app_secret: str, message: bytes) -> str:
    """Base64(HMAC-SHA1(app_secret, message)), as sent in `X-Nuonuo-Sign`."""
    digest = hmac.new(app_secret.encode(), message, hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class ReplayCache:
    """(app key, senid, nonce) of verified calls, each kept `2 * window` seconds of monotonic
    time (then its `timestamp` is outside the window anyway), at most `capacity` of them."""

    def __init__(self, clock: Clock, *, window: float, capacity: int) -> None:
        self._clock = clock
        self._keep = 2 * window
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, key: tuple[str, str, str]) -> bool:
        """Remember `key`; whether it was new. Raises `SdkRefused` (busy) when the memory is
        full of live entries: refusing is safe, forgetting one could let a replay through."""
        now = self._clock.monotonic()
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        if len(self._seen) >= self._capacity:
            raise SdkRefused(BUSY, "系统繁忙，请稍后重试")
        self._seen[key] = now + self._keep
        return True


@dataclass(frozen=True, slots=True)
class SdkClient:
    tenant: str
    app_key: str
    app_secret: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SdkGate:
    """Checks SDK calls and issues their tokens, for the tenants with an `sdk_client`."""

    def __init__(
        self,
        tenants: Sequence[TenantConfig],
        *,
        store: TokenStore,
        clock: Clock,
        window: float = TIMESTAMP_WINDOW,
        replay_capacity: int = REPLAY_CAPACITY,
    ) -> None:
        self._store = store
        self._clock = clock
        self._window = window
        self._replays = ReplayCache(clock, window=window, capacity=replay_capacity)
        self._install_key: bytes | None = None
        self._install_lock = asyncio.Lock()
        self.reconfigure(tenants)

    def reconfigure(self, tenants: Sequence[TenantConfig]) -> None:
        """Take up the SDK clients of a reloaded configuration (SIGHUP)."""
        by_key: dict[str, SdkClient] = {}
        answers: dict[str, str] = {}
        for tenant in tenants:
            answers[tenant.id] = tenant.answers
            if tenant.sdk_client is None:
                continue
            client = SdkClient(
                tenant.id, tenant.sdk_client.app_key.value(), tenant.sdk_client.app_secret.value()
            )
            if client.app_key in by_key:
                raise ValueError(
                    f"tenants {by_key[client.app_key].tenant!r} and {tenant.id!r} have the same "
                    "sdk_client.app_key; each tenant needs its own"
                )
            by_key[client.app_key] = client
        self._by_key = by_key
        self._by_tenant = {c.tenant: c for c in by_key.values()}
        self._answers = answers

    @property
    def enabled(self) -> bool:
        return bool(self._by_key)

    def platform_answers(self, tenant: str) -> bool:
        """Whether `tenant`'s SDK calls are answered in the platform's terms."""
        return self._answers.get(tenant, "platform") == "platform"

    # -- tokens ------------------------------------------------------------------------------

    async def token_endpoint(self, request: web.Request) -> web.Response:
        """`POST /accessToken`: the platform's client_credentials grant, answered as it does
        (HTTP 200 either way)."""
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if form.get("grant_type") != "client_credentials":
            return _token_error(
                WRONG_GRANT_TYPE, "grant_type不支持（网关只发放client_credentials令牌）"
            )
        client = self._by_key.get(client_id) if isinstance(client_id, str) else None
        if client is None:
            return _token_error(UNKNOWN_CLIENT_ID, "client_id不存在")
        if not isinstance(client_secret, str) or not hmac.compare_digest(
            client_secret.encode(), client.app_secret.encode()
        ):
            return _token_error(WRONG_CLIENT_SECRET, "client_secret错误")
        token = await self.issue_token(client.tenant)
        log.info("gateway token issued to an SDK client", tenant=client.tenant)
        return web.json_response({"access_token": token, "expires_in": TOKEN_LIFETIME})

    async def issue_token(self, tenant: str) -> str:
        """A fresh token of `tenant`, valid `TOKEN_LIFETIME` seconds."""
        client = self._by_tenant[tenant]
        expires = int(self._clock.wall()) + TOKEN_LIFETIME
        payload = _b64(f"{expires}:{secrets.token_hex(8)}:{tenant}".encode())
        return f"{payload}.{_b64(await self._mac(client, payload))}"

    async def token_tenant(self, token: str | None) -> str:
        """The tenant a live gateway token was issued to; raises `SdkRefused` (070301)."""
        invalid = SdkRefused(TOKEN_INVALID, "accessToken无效或已过期")
        if not token or token.count(".") != 1:
            raise invalid
        payload, mac = token.split(".")
        try:
            expires_text, _, tenant = _unb64(payload).decode().split(":", 2)
            expires = int(expires_text)
            presented = _unb64(mac)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise invalid from None
        client = self._by_tenant.get(tenant)
        if client is None or not hmac.compare_digest(presented, await self._mac(client, payload)):
            raise invalid
        if self._clock.wall() >= expires:
            raise invalid
        return tenant

    async def _mac(self, client: SdkClient, payload: str) -> bytes:
        install = await self._install()
        credentials = f"{client.tenant}\n{client.app_key}\n{client.app_secret}".encode()
        key = hmac.new(install, credentials, hashlib.sha256).digest()
        return hmac.new(key, payload.encode(), hashlib.sha256).digest()[:_MAC_BYTES]

    async def _install(self) -> bytes:
        """The per-install key: read from the store once, made there the first time (under the
        store's lock, so replicas starting together agree on one)."""
        if self._install_key is not None:
            return self._install_key
        async with self._install_lock:
            if self._install_key is None:
                async with self._store.exclusive(INSTALL_KEY_ROW):
                    row = await self._store.load_token(INSTALL_KEY_ROW)
                    if row is None:
                        row = StoredToken(secrets.token_hex(32), self._clock.wall(), _FOREVER)
                        await self._store.save_token(INSTALL_KEY_ROW, row)
                        log.info("made the key gateway tokens of SDK clients are signed with")
                self._install_key = bytes.fromhex(row.value)
            return self._install_key

    # -- calls -------------------------------------------------------------------------------

    async def authenticate(
        self,
        *,
        path: str,
        query: MultiMapping[str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> str:
        """The tenant an SDK-signed call comes from; raises `SdkRefused` otherwise."""
        bad = SdkRefused(SIGNATURE_REFUSED, "签名校验失败")
        params: dict[str, str] = {}
        for name in SDK_QUERY_PARAMS:
            values = query.getall(name, [])
            if len(values) != 1 or not values[0]:
                raise bad
            params[name] = values[0]
        client = self._by_key.get(params["appkey"])
        if client is None:
            raise bad
        timestamp = params["timestamp"]
        if not timestamp.isdigit() or abs(int(timestamp) - self._clock.wall()) > self._window:
            raise SdkRefused(
                SIGNATURE_REFUSED,
                f"签名校验失败：timestamp与网关时间相差超过{self._window:.0f}秒，请检查服务器时间",
            )
        message = signature_message(
            path,
            app_key=client.app_key,
            senid=params["senid"],
            nonce=params["nonce"],
            timestamp=timestamp,
            body=body,
        )
        sent = headers.get(SIGN_HEADER, "")
        if message is None or not hmac.compare_digest(
            sent.encode(), signature(client.app_secret, message).encode()
        ):
            raise bad
        if not self._replays.first_time((client.app_key, params["senid"], params["nonce"])):
            raise SdkRefused(SIGNATURE_REFUSED, "签名校验失败：senid与nonce已使用过（重放）")
        owner = await self.token_tenant(headers.get(TOKEN_HEADER))
        if owner != client.tenant:
            raise SdkRefused(CALLER_MISMATCH, "调用方与令牌不匹配")
        return client.tenant


def _token_error(code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, dumps=_dumps)
