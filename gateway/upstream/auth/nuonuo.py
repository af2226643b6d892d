"""The `nuonuo-hmac` scheme: a durable access token plus an HMAC-SHA1 signature on every call.

Tokens come from the platform's token endpoint (`upstream.auth.token_url`, a host of its own),
which allows only ~50 calls per 30 days. So the token is kept in the store (a restart reuses it),
refreshed at `refresh_at` of its lifetime by one request in flight (single-flight), a rejected
token triggers at most one forced refresh per `min_refresh_interval`, and every token call goes
through the `TokenGuard` (`token_guard.py`): the endpoint's refusals are told apart
(configuration error, quota used up, other failure), and hourly and daily caps hold whatever it
answers. While no token may be asked for, requests fail at once with `TokenUnavailable` naming
the cause, and no call is made.

The platform refuses a signature it cannot check (070601), and says to check the server's clock
for it: it refuses a signed `timestamp` more than 300 s off its own. When it does, the scheme
learns the offset from that answer's `Date` header and from then on signs with the platform's
time (wall clock + offset), as AWS SDKs correct clock skew; the offset is learned only from such
rejections, never from every answer. When the refused time already agreed with the platform's,
the clock was not the cause (the app secret is the usual suspect) and nothing is resent.
"""

from __future__ import annotations

import asyncio
import hashlib
import math

import aiohttp
import structlog
from multidict import CIMultiDict

from gateway.clock import Clock, iso_utc
from gateway.config import NuonuoHmacAuthConfig
from gateway.errors import StoreError, TokenUnavailable
from gateway.headers import parse_http_date
from gateway.upstream.auth.signature import SIGNED_QUERY_PARAMS, new_nonce, new_senid, sign
from gateway.upstream.auth.token_guard import (
    QUOTA_WINDOW,
    HoldCause,
    TokenAnswer,
    TokenCallResult,
    TokenGuard,
    TokenStatus,
    classify_answer,
)
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
    ) -> None:
        self._app_key = config.app_key.value()
        self._app_secret = config.app_secret.value()
        self._user_tax = config.user_tax.value()
        self._token_url = config.token_endpoint(base_url)
        self._refresh_at = config.refresh_at
        self._min_refresh_interval = config.min_refresh_interval
        self._token_timeout = config.token_timeout
        self._session = session
        self._store = tokens
        self._clock = clock
        self._store_key = f"nuonuo-hmac:{self._app_key}"
        #: The guard's record lives in the token store beside the token, as a token-shaped row
        #: whose value is its JSON: the store needs nothing new.
        self._record_key = f"{self._store_key}:token-calls"
        self._guard = TokenGuard(
            config.token_calls,
            quota_cooldown=config.quota_cooldown,
            credentials=_fingerprint(self._token_url, self._app_key, self._app_secret),
            clock=clock,
        )
        self._token: StoredToken | None = None
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._refresh: asyncio.Task[StoredToken] | None = None
        self._last_forced = -math.inf
        self._clock_offset = 0.0

    @property
    def token(self) -> StoredToken | None:
        return self._token

    @property
    def token_url(self) -> str:
        return self._token_url

    @property
    def clock_offset(self) -> float:
        return self._clock_offset

    async def load(self) -> None:
        """Read the stored token and the record of token calls (once; later calls do nothing)."""
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            try:
                self._token = await self._store.load_token(self._store_key)
                record = await self._store.load_token(self._record_key)
            except StoreError as exc:
                log.warning("cannot read the stored upstream token", error=str(exc))
                record = None
            if record is not None:
                try:
                    dropped = self._guard.restore(record.value)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning(
                        "the stored record of token calls is unreadable; counting afresh",
                        error=str(exc),
                    )
                else:
                    for what in dropped:
                        log.info(f"no longer holding token calls back for {what}")
            self._loaded = True
            hold = self._guard.hold()
            if hold is not None:
                log.warning(
                    "token calls are held back (as recorded before this start)",
                    cause=hold.cause.value,
                    until=iso_utc(hold.until) if hold.until is not None else None,
                    reason=hold.reason,
                )

    def token_status(self) -> TokenStatus:
        return TokenStatus.of(self._guard, self._token, token_url=self._token_url)

    async def refresh_token(self) -> TokenStatus:
        """An operator says: ask the platform for a new token now. Ends a configuration-error or
        quota hold and the back-off first; the hourly and daily caps still hold. Raises
        `TokenUnavailable` when no token came."""
        await self.load()
        ended = self._guard.release()
        if ended is not None:
            log.warning("token calls released by an operator", ended=ended.cause.value)
            await self._save_record()
        await self._single_flight_refresh()
        return self.token_status()

    async def prepare(self, request: UpstreamRequest) -> UpstreamRequest:
        token = await self._usable_token()
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
        headers["userTax"] = self._user_tax
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
        rejected = request.headers.get("accessToken")
        current = self._token
        if current is None or rejected != current.value:
            return  # already renewed since that request was signed
        if self._refresh is not None:
            # A renewal is already running (ours or a near-expiry one): wait for it too.
            await self._single_flight_refresh()
            return
        now = self._clock.monotonic()
        if now - self._last_forced < self._min_refresh_interval:
            log.warning(
                "upstream rejected the token again; not refreshing before the minimum interval",
                min_refresh_interval=self._min_refresh_interval,
            )
            return
        self._guard.check()  # held back: the resend would carry the rejected token again
        self._last_forced = now
        await self._single_flight_refresh()

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

    async def _usable_token(self) -> StoredToken:
        await self.load()
        token = self._token
        now = self._clock.wall()
        if token is None or token.age_fraction(now) >= 1.0:
            if self._refresh is None:
                self._guard.check()  # held back: say why at once, with no task and no call
            return await self._single_flight_refresh()
        if (
            token.age_fraction(now) >= self._refresh_at
            and self._refresh is None
            and self._guard.hold() is None
        ):
            # Still valid: renew in the background and keep serving with the current one.
            self._start_refresh()
        return token

    def _start_refresh(self) -> asyncio.Task[StoredToken]:
        if self._refresh is None:
            task = asyncio.create_task(self._fetch_and_store(), name="token-refresh")
            self._refresh = task
            task.add_done_callback(self._refresh_done)
        return self._refresh

    def _refresh_done(self, task: asyncio.Task[StoredToken]) -> None:
        self._refresh = None
        if not task.cancelled():
            task.exception()  # logged where it happened; retrieved so nobody else must

    async def _single_flight_refresh(self) -> StoredToken:
        # Shielded: one caller giving up must not cancel the refresh everyone else awaits.
        return await asyncio.shield(self._start_refresh())

    async def _fetch_and_store(self) -> StoredToken:
        self._guard.check()
        answer = await self._ask_platform()
        hold = self._guard.record(answer)
        await self._save_record()
        token = answer.token
        if token is None:
            self._log_refusal(answer)
            if hold is not None:
                raise hold.error(self._clock.wall())
            raise TokenUnavailable(answer.detail)
        self._token = token
        try:
            await self._store.save_token(self._store_key, token)
        except StoreError as exc:
            log.error(
                "cannot store the new upstream token; a restart will fetch another", error=str(exc)
            )
        log.info(
            "upstream token refreshed",
            expires_in=token.expires_in,
            token_calls_30d=self._guard.calls_within(QUOTA_WINDOW),
        )
        return token

    async def _ask_platform(self) -> TokenAnswer:
        """One call to the token endpoint, classified; never raises for what the call met."""
        form = {
            "client_id": self._app_key,
            "client_secret": self._app_secret,
            "grant_type": "client_credentials",
        }
        try:
            async with self._session.post(
                self._token_url,
                data=form,
                timeout=aiohttp.ClientTimeout(total=self._token_timeout),
                allow_redirects=False,
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            return TokenAnswer(
                TokenCallResult.FAILURE, detail=f"cannot reach the token endpoint: {exc!r}"
            )
        return classify_answer(status, text, now=self._clock.wall())

    def _log_refusal(self, answer: TokenAnswer) -> None:
        hold = self._guard.hold()
        until = iso_utc(hold.until) if hold is not None and hold.until is not None else None
        fields = {"token_url": self._token_url, "code": answer.code, "until": until}
        if answer.result is TokenCallResult.FAILURE:
            log.warning("upstream token refresh failed", error=answer.detail, **fields)
        elif hold is not None and hold.cause in (HoldCause.CONFIG_ERROR, HoldCause.QUOTA):
            # The reason says what to fix, or what the operator can do.
            log.error(hold.reason, **fields)

    async def _save_record(self) -> None:
        record = StoredToken(self._guard.dump(), self._clock.wall(), QUOTA_WINDOW)
        try:
            await self._store.save_token(self._record_key, record)
        except StoreError as exc:
            log.error(
                "cannot store the record of token calls; a restart will count from what was "
                "stored before",
                error=str(exc),
            )


def _fingerprint(token_url: str, app_key: str, app_secret: str) -> str:
    """Tells configurations apart without keeping the secret: a truncated SHA-256."""
    digest = hashlib.sha256(f"{token_url}\n{app_key}\n{app_secret}".encode()).hexdigest()
    return digest[:16]


def _signed_time(request: UpstreamRequest | None) -> float | None:
    """The `timestamp` a signed request carried, or None."""
    if request is None:
        return None
    for name, value in request.query:
        if name == "timestamp" and value.isdigit():
            return float(value)
    return None
