"""The `nuonuo-hmac` scheme: a durable access token plus an HMAC-SHA1 signature on every call.

Tokens come from the platform's token endpoint (`upstream.auth.token_url`, a host of its own),
which allows only ~50 calls per 30 days. So each token is kept in the store (a restart reuses
it), refreshed at `refresh_at` of its lifetime by one request in flight (single-flight), a
rejected token triggers at most one forced refresh per `min_refresh_interval`, and every token
call goes through a `TokenGuard` (`token_guard.py`): the endpoint's refusals are told apart
(configuration error, quota used up, other failure), and hourly and daily caps hold whatever it
answers. While no token may be asked for, requests fail at once with `TokenUnavailable` naming
the cause, and no call is made. `keeper.py` does all that for one identity.

The identities: the gateway's own application (`upstream.auth`: client_credentials, its
`user_tax`), and each tenant with `upstream` of its own, a merchant who authorized the gateway's
service-provider application (`grants.AuthorizationCode`): its calls are signed with its own
token and carry its own tax number as `userTax`, and its token calls have a guard of their own,
so one merchant's refused quota or withdrawn authorization holds no other's calls back. A
request names its tenant (`UpstreamRequest.tenant`); one without, or of a tenant without an
identity of its own, is signed as the gateway's application.

The platform refuses a signature it cannot check (070601), and says to check the server's clock
for it: it refuses a signed `timestamp` more than 300 s off its own. When it does, the scheme
learns the offset from that answer's `Date` header and from then on signs with the platform's
time (wall clock + offset), as AWS SDKs correct clock skew; the offset is learned only from such
rejections, never from every answer. When the refused time already agreed with the platform's,
the clock was not the cause (the app secret is the usual suspect) and nothing is resent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp
import structlog
from multidict import CIMultiDict

from gateway.clock import Clock
from gateway.config import NuonuoHmacAuthConfig, TenantConfig
from gateway.errors import NotFound
from gateway.headers import parse_http_date
from gateway.upstream.auth.grants import AuthorizationCode, ClientCredentials, Grant
from gateway.upstream.auth.keeper import TokenKeeper
from gateway.upstream.auth.signature import SIGNED_QUERY_PARAMS, new_nonce, new_senid, sign
from gateway.upstream.auth.token_guard import TokenGuard, TokenStatus
from gateway.upstream.auth.tokens import StoredToken, TokenStore
from gateway.upstream.models import UpstreamRequest, UpstreamResponse

log = structlog.get_logger("gateway.upstream.auth")

#: Headers the scheme owns; a client's own values are replaced, never forwarded.
SIGNED_HEADERS = ("accessToken", "userTax", "X-Nuonuo-Sign")
#: `Date` has whole seconds: clock differences below this are noise, not skew.
CLOCK_RESOLUTION = 2.0


class NuonuoHmacAuth:
    def __init__(
        self,
        config: NuonuoHmacAuthConfig,
        *,
        base_url: str,
        session: aiohttp.ClientSession,
        tokens: TokenStore,
        clock: Clock,
        tenants: Sequence[TenantConfig] = (),
    ) -> None:
        self._config = config
        self._app_key = config.app_key.value()
        self._app_secret = config.app_secret.value()
        self._user_tax = config.user_tax.value()
        self._token_url = config.token_endpoint(base_url)
        self._session = session
        self._store = tokens
        self._clock = clock
        self._store_key = f"nuonuo-hmac:{self._app_key}"
        grant = ClientCredentials(
            token_url=self._token_url, app_key=self._app_key, app_secret=self._app_secret
        )
        self._own = self._keeper(None, self._store_key, grant)
        #: Tenants with a platform identity of their own: their keeper and their `userTax`.
        self._tenants: dict[str, tuple[TokenKeeper, str]] = {}
        for index, tenant in enumerate(tenants):
            upstream = tenant.upstream
            if upstream is None:
                continue
            user_tax = upstream.user_tax.value()
            merchant = AuthorizationCode(
                tenant=tenant.id,
                key=f"tenants[{index}]",
                token_url=self._token_url,
                app_key=self._app_key,
                app_secret=self._app_secret,
                user_tax=user_tax,
                code=upstream.code.value() if upstream.code is not None else None,
                redirect_uri=upstream.redirect_uri,
                user_id=upstream.user_id,
            )
            keeper = self._keeper(tenant.id, f"{self._store_key}:{tenant.id}", merchant)
            self._tenants[tenant.id] = (keeper, user_tax)
        self._clock_offset = 0.0

    def _keeper(self, tenant: str | None, store_key: str, grant: Grant) -> TokenKeeper:
        config = self._config
        guard = TokenGuard(
            config.token_calls,
            quota_cooldown=config.quota_cooldown,
            credentials=grant.credentials,
            clock=self._clock,
            advice=grant.advice,
        )
        return TokenKeeper(
            tenant=tenant,
            store_key=store_key,
            grant=grant,
            guard=guard,
            token_url=self._token_url,
            refresh_at=config.refresh_at,
            min_refresh_interval=config.min_refresh_interval,
            token_timeout=config.token_timeout,
            session=self._session,
            tokens=self._store,
            clock=self._clock,
        )

    @property
    def token(self) -> StoredToken | None:
        """The gateway's own application's token."""
        return self._own.token

    @property
    def token_url(self) -> str:
        return self._token_url

    @property
    def clock_offset(self) -> float:
        return self._clock_offset

    async def load(self) -> None:
        """Read every identity's stored token and record of token calls (once)."""
        await self._own.load()
        for keeper, _ in self._tenants.values():
            await keeper.load()

    def token_status(self) -> TokenStatus:
        return self._own.status()

    def tenant_tokens(self) -> Mapping[str, TokenStatus]:
        return {tenant: keeper.status() for tenant, (keeper, _) in self._tenants.items()}

    async def refresh_token(self, tenant: str | None = None) -> TokenStatus:
        """An operator says: ask the platform for a new token now (for `tenant`'s own identity,
        or the gateway's application). Ends a configuration-error or quota hold and the back-off
        first; the hourly and daily caps still hold. Raises `TokenUnavailable` when no token
        came, `NotFound` for a tenant without an identity of its own."""
        return await self._identity(tenant, strict=True)[0].refresh_by_operator()

    def _identity(self, tenant: str | None, *, strict: bool = False) -> tuple[TokenKeeper, str]:
        """The keeper and `userTax` that sign `tenant`'s calls."""
        if tenant is not None:
            found = self._tenants.get(tenant)
            if found is not None:
                return found
            if strict:
                known = ", ".join(sorted(self._tenants)) or "none"
                raise NotFound(
                    f"tenant {tenant!r} has no platform identity of its own (tenants[].upstream); "
                    f"tenants that have one: {known}"
                )
        return self._own, self._user_tax

    async def prepare(self, request: UpstreamRequest) -> UpstreamRequest:
        keeper, user_tax = self._identity(request.tenant)
        token = await keeper.usable_token()
        senid, nonce, timestamp = new_senid(), new_nonce(), str(int(self._platform_time()))
        query = [(k, v) for k, v in request.query if k not in SIGNED_QUERY_PARAMS]
        query += [
            ("senid", senid),
            ("nonce", nonce),
            ("timestamp", timestamp),
            ("appkey", self._app_key),
        ]
        headers = CIMultiDict(request.headers)
        for name in SIGNED_HEADERS:
            headers.popall(name, None)
        headers["accessToken"] = token.value
        headers["userTax"] = user_tax
        headers["X-Nuonuo-Sign"] = sign(
            app_secret=self._app_secret,
            app_key=self._app_key,
            senid=senid,
            nonce=nonce,
            timestamp=timestamp,
            body=request.body,
        )
        headers.setdefault("Content-Type", "application/json")
        return request.with_changes(query=query, headers=headers)

    async def credentials_rejected(self, request: UpstreamRequest) -> None:
        keeper, _ = self._identity(request.tenant)
        await keeper.rejected(request.headers.get("accessToken"))

    async def clock_rejected(self, response: UpstreamResponse) -> bool:
        platform_now = parse_http_date(response.headers.get("Date"))
        if platform_now is None:
            log.warning(
                "the platform refused the signature and sent no usable Date header; cannot "
                "correct for a clock difference. Check NTP on this host, then the app secret",
                date=response.headers.get("Date"),
            )
            return False
        offset = platform_now - self._clock.wall()
        if abs(offset - self._clock_offset) >= CLOCK_RESOLUTION:
            self._clock_offset = offset
            if abs(offset) < CLOCK_RESOLUTION:
                log.info("the gateway's clock agrees with the platform's again", offset_s=offset)
            else:
                direction = "ahead of" if offset < 0 else "behind"
                log.warning(
                    f"the gateway's clock is {abs(offset):.0f} s {direction} the platform's; "
                    "signing with the platform's time — fix NTP on this host",
                    offset_s=round(offset, 3),
                )
        rejected = _signed_time(response.request)
        # Only a resend signed with a time that differs from the refused one can pass (requests
        # signed before another one learned the offset still can).
        if rejected is None or abs(self._platform_time() - rejected) >= CLOCK_RESOLUTION:
            return True
        log.warning(
            "the platform refused the signature although it was signed with the platform's own "
            "time: the clock is not the cause. Check that upstream.auth.app_secret is the "
            "application's secret on the platform",
            offset_s=round(self._clock_offset, 3),
        )
        return False

    def _platform_time(self) -> float:
        return self._clock.wall() + self._clock_offset


def _signed_time(request: UpstreamRequest | None) -> float | None:
    """The `timestamp` a signed request carried, or None."""
    if request is None:
        return None
    for name, value in request.query:
        if name == "timestamp" and value.isdigit():
            return float(value)
    return None
