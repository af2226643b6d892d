"""One identity's access token: kept in the store, renewed by one call in flight, every call
through its own `TokenGuard` (docs/design.md#token).

The `nuonuo-hmac` scheme has one keeper for the gateway's own application and one per tenant
with a platform identity of its own (a merchant of a service-provider application), so one
merchant's refused quota or withdrawn authorization never holds another's calls back. What a
keeper keeps sits in the token store under its `store_key`:

    {store_key}               the access token
    {store_key}:token-calls   the guard's record: the calls of 30 days, a standing refusal
    {store_key}:grant         what the grant keeps (a merchant's refresh token, the code spent)

the last two as token-shaped rows whose value is their JSON: the store needs nothing new.

Replicas sharing a store share the token: a refresh runs under the store's lock on
`store_key` (`TokenStore.exclusive`), and first reads what is stored. A token another replica
renewed meanwhile is taken up instead of asking the platform again, and the record of token
calls read there counts every replica's calls against the caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import aiohttp
import structlog

from gateway.clock import Clock, iso_utc
from gateway.errors import StoreError, TokenUnavailable
from gateway.upstream.auth.grants import Grant
from gateway.upstream.auth.token_guard import (
    QUOTA_WINDOW,
    Hold,
    HoldCause,
    TokenAnswer,
    TokenCallResult,
    TokenGuard,
    TokenStatus,
    classify_answer,
)
from gateway.upstream.auth.tokens import StoredToken, TokenStore

log = structlog.get_logger("gateway.upstream.auth")


class TokenKeeper:
    """The token of one identity (`tenant`, or None for the gateway's own application)."""

    def __init__(
        self,
        *,
        tenant: str | None,
        store_key: str,
        grant: Grant,
        guard: TokenGuard,
        token_url: str,
        refresh_at: float,
        min_refresh_interval: float,
        token_timeout: float,
        session: aiohttp.ClientSession,
        tokens: TokenStore,
        clock: Clock,
    ) -> None:
        self.tenant = tenant
        self._store_key = store_key
        self._record_key = f"{store_key}:token-calls"
        self._grant_key = f"{store_key}:grant"
        self._grant = grant
        self._guard = guard
        self._token_url = token_url
        self._refresh_at = refresh_at
        self._min_refresh_interval = min_refresh_interval
        self._token_timeout = token_timeout
        self._session = session
        self._store = tokens
        self._clock = clock
        self._log = log.bind(tenant=tenant) if tenant is not None else log
        self._token: StoredToken | None = None
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._refresh: asyncio.Task[StoredToken] | None = None
        self._last_forced = -math.inf
        #: When the record of token calls this process holds was written (by it, or by the
        #: process whose record it took up): an older one in the store is not taken up.
        self._record_at = -math.inf

    @property
    def token(self) -> StoredToken | None:
        return self._token

    async def load(self) -> None:
        """Read the stored token, the record of token calls and the grant's state (once; later
        calls do nothing)."""
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            record = grant = None
            try:
                self._token = await self._store.load_token(self._store_key)
                record = await self._store.load_token(self._record_key)
                grant = await self._store.load_token(self._grant_key)
            except StoreError as exc:
                self._log.warning("cannot read the stored upstream token", error=str(exc))
            if record is not None:
                self._record_at = record.obtained_at
                try:
                    dropped = self._guard.restore(record.value)
                except (ValueError, KeyError, TypeError) as exc:
                    self._log.warning(
                        "the stored record of token calls is unreadable; counting afresh",
                        error=str(exc),
                    )
                else:
                    for what in dropped:
                        self._log.info(f"no longer holding token calls back for {what}")
            if grant is not None:
                try:
                    self._grant.restore(grant.value)
                except (ValueError, KeyError, TypeError) as exc:
                    self._log.warning("the stored state of the grant is unreadable", error=str(exc))
            self._loaded = True
            hold = self.hold()
            if hold is not None:
                self._log.warning(
                    "token calls are held back (as recorded before this start)",
                    cause=hold.cause.value,
                    until=iso_utc(hold.until) if hold.until is not None else None,
                    reason=hold.reason,
                )

    def hold(self) -> Hold | None:
        """What holds the next token call back now: the guard's hold, else the grant's."""
        return self._guard.hold() or self._grant.hold(self._clock.wall())

    def status(self) -> TokenStatus:
        return TokenStatus.of(
            self._guard,
            self._token,
            token_url=self._token_url,
            grant=self._grant.name,
            hold=self._grant.hold(self._clock.wall()),
        )

    async def refresh_by_operator(self) -> TokenStatus:
        """An operator says: ask for a new token now. Ends a configuration-error or quota hold
        and the back-off first; the hourly and daily caps still hold. Raises `TokenUnavailable`
        when no token came."""
        await self.load()
        ended = self._guard.release()
        if ended is not None:
            self._log.warning("token calls released by an operator", ended=ended.cause.value)
            await self._save_record()
        if self._grant.release():
            await self._save_grant()
        await self._single_flight_refresh(force=True)
        return self.status()

    async def usable_token(self) -> StoredToken:
        """A token that has not expired: the stored one (renewed in the background once
        `refresh_at` of its lifetime has passed), else a new one."""
        await self.load()
        token = self._token
        now = self._clock.wall()
        if token is None or token.age_fraction(now) >= 1.0:
            if self._refresh is None:
                self._check()  # held back: say why at once, with no task and no call
            return await self._single_flight_refresh()
        if (
            token.age_fraction(now) >= self._refresh_at
            and self._refresh is None
            and self.hold() is None
        ):
            # Still valid: renew in the background and keep serving with the current one.
            self._start_refresh()
        return token

    async def rejected(self, value: str | None) -> None:
        """The platform said the token `value` is invalid: renew it once (at most once per
        `min_refresh_interval`)."""
        current = self._token
        if current is None or value != current.value:
            return  # already renewed since that request was signed
        if self._refresh is not None:
            # A renewal is already running (ours or a near-expiry one): wait for it too.
            await self._single_flight_refresh()
            return
        now = self._clock.monotonic()
        if now - self._last_forced < self._min_refresh_interval:
            self._log.warning(
                "upstream rejected the token again; not refreshing before the minimum interval",
                min_refresh_interval=self._min_refresh_interval,
            )
            return
        self._check()  # held back: the resend would carry the rejected token again
        self._last_forced = now
        await self._single_flight_refresh()

    def _check(self) -> None:
        hold = self.hold()
        if hold is not None:
            raise hold.error(self._clock.wall())

    def _start_refresh(self, *, force: bool = False) -> asyncio.Task[StoredToken]:
        if self._refresh is None:
            name = "token-refresh" if self.tenant is None else f"token-refresh:{self.tenant}"
            task = asyncio.create_task(self._shared_refresh(force=force), name=name)
            self._refresh = task
            task.add_done_callback(self._refresh_done)
        return self._refresh

    def _refresh_done(self, task: asyncio.Task[StoredToken]) -> None:
        self._refresh = None
        if not task.cancelled():
            task.exception()  # logged where it happened; retrieved so nobody else must

    async def _single_flight_refresh(self, *, force: bool = False) -> StoredToken:
        # Shielded: one caller giving up must not cancel the refresh everyone else awaits.
        return await asyncio.shield(self._start_refresh(force=force))

    async def _shared_refresh(self, *, force: bool) -> StoredToken:
        """One refresh across every process on the store: under its lock, take up a token
        another one renewed meanwhile (unless an operator `force`s a new one), else ask."""
        async with contextlib.AsyncExitStack() as held:
            try:
                await held.enter_async_context(self._store.exclusive(self._store_key))
            except StoreError as exc:
                # The store is down: refreshing alone beats serving no reads at all; the
                # caps of this process still hold.
                self._log.warning(
                    "cannot take the store's token lock; refreshing without it", error=str(exc)
                )
            if not force and (renewed := await self._renewed_elsewhere()) is not None:
                return renewed
            return await self._fetch_and_store()

    async def _renewed_elsewhere(self) -> StoredToken | None:
        """What the store holds now: the record of token calls is taken up (other replicas'
        calls count too), and so is a fresh token other than ours, which is returned."""
        try:
            stored = await self._store.load_token(self._store_key)
            record = await self._store.load_token(self._record_key)
        except StoreError:
            return None
        if record is not None and record.obtained_at > self._record_at:
            # Written since ours (by another replica): its calls and refusal count here too.
            # Never an older one: it could bring back a hold this process just released.
            self._record_at = record.obtained_at
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self._guard.restore(record.value)
        current = self._token
        if stored is None or (current is not None and stored.value == current.value):
            return None
        if stored.age_fraction(self._clock.wall()) >= self._refresh_at:
            return None
        self._token = stored
        self._log.info("took up the upstream token another gateway renewed")
        return stored

    async def _fetch_and_store(self) -> StoredToken:
        self._check()
        answer = await self._ask_platform(self._grant.form())
        # The grant learns first: the guard's hold is worded by what it learned.
        learned = self._grant.took(answer, self._clock.wall())
        hold = self._guard.record(answer)
        if learned:
            await self._save_grant()
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
            self._log.error(
                "cannot store the new upstream token; a restart will fetch another", error=str(exc)
            )
        self._log.info(
            "upstream token refreshed",
            grant=self._grant.name,
            expires_in=token.expires_in,
            token_calls_30d=self._guard.calls_within(QUOTA_WINDOW),
        )
        return token

    async def _ask_platform(self, form: dict[str, str]) -> TokenAnswer:
        """One call to the token endpoint, classified; never raises for what the call met."""
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
        return classify_answer(
            status,
            text,
            now=self._clock.wall(),
            refusal_is_config_error=self._grant.refusal_is_config_error(),
        )

    def _log_refusal(self, answer: TokenAnswer) -> None:
        hold = self._guard.hold()
        until = iso_utc(hold.until) if hold is not None and hold.until is not None else None
        fields: dict[str, Any] = {"token_url": self._token_url, "code": answer.code, "until": until}
        if answer.result is TokenCallResult.FAILURE:
            self._log.warning("upstream token refresh failed", error=answer.detail, **fields)
        elif hold is not None and hold.cause in (HoldCause.CONFIG_ERROR, HoldCause.QUOTA):
            # The reason says what to fix, or what the operator can do.
            self._log.error(hold.reason, **fields)

    async def _save_record(self) -> None:
        record = StoredToken(self._guard.dump(), self._clock.wall(), QUOTA_WINDOW)
        self._record_at = record.obtained_at
        try:
            await self._store.save_token(self._record_key, record)
        except StoreError as exc:
            self._log.error(
                "cannot store the record of token calls; a restart will count from what was "
                "stored before",
                error=str(exc),
            )

    async def _save_grant(self) -> None:
        state = self._grant.dump()
        if state is None:
            return
        # Kept as long as the record of token calls: a merchant's refresh token outlives many
        # access tokens.
        row = StoredToken(state, self._clock.wall(), QUOTA_WINDOW)
        try:
            await self._store.save_token(self._grant_key, row)
        except StoreError as exc:
            self._log.error(
                "cannot store the grant's state (the refresh token); a restart will need a new "
                "authorization",
                error=str(exc),
            )
