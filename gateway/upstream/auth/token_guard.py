"""When the `nuonuo-hmac` scheme may ask the platform for an access token: a guard over a quota
of about 50 token calls per 30 days (docs/design.md#token).

The token endpoint's own answer decides what comes next (`classify_answer`):

    answer                                   result        the next token call
    an access token                          success       at `refresh_at` of its lifetime
    070304 / 070305 / 070307                 config_error  none until the configuration changes
                                                           (a restart with other credentials) or
                                                           an operator asks (`token refresh`)
    070306 (the token quota is used up)      quota         none until an operator asks, or
                                                           after `quota_cooldown`
    anything else: unreachable, HTTP 5xx,    failure       after a back-off, `backoff.base` times
    not JSON, another code                                 `multiplier` per further failure

and whatever the answers, at most `token_calls.per_hour` and `per_day` calls. While something
holds the next call back (`Hold`), a caller gets `TokenUnavailable` naming it at once, without a
call. The calls of the last 30 days, the platform's standing refusal and the back-off are one
small JSON record (`TokenGuard.dump`/`restore`) the scheme keeps in the token store, so a restart,
or a crash loop, carries on where the last process stopped.

Time is the injected clock's wall time: the record outlives the process, and a monotonic clock
does not.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from gateway.clock import Clock, iso_utc
from gateway.config import TokenCallsConfig
from gateway.errors import TokenUnavailable
from gateway.upstream.auth.tokens import StoredToken

HOUR: Final = 3600.0
DAY: Final = 24 * HOUR
#: The platform's quota window; the guard remembers calls this long.
QUOTA_WINDOW: Final = 30 * DAY
#: The platform's token answer when it does not say how long the token lives.
DEFAULT_EXPIRES_IN: Final = 86_400.0


class TokenCallResult(StrEnum):
    """What one call to the token endpoint came to (the `result` label of its metric)."""

    SUCCESS = "success"
    CONFIG_ERROR = "config_error"
    QUOTA = "quota"
    FAILURE = "failure"


class HoldCause(StrEnum):
    """Why no token call may be made now."""

    CONFIG_ERROR = "config_error"
    QUOTA = "quota"
    BACKOFF = "backoff"
    HOURLY_CAP = "hourly_cap"
    DAILY_CAP = "daily_cap"

    @property
    def operator_may_end(self) -> bool:
        """Whether `invoice-gateway token refresh` ends it (only time ends caps and back-off)."""
        return self in (HoldCause.CONFIG_ERROR, HoldCause.QUOTA)


#: Refusals of the token endpoint that say the configuration is wrong, and what to fix.
CONFIG_ERROR_CODES: Final[Mapping[str, str]] = {
    "070304": "upstream.auth.app_key (NUONUO_APP_KEY): the platform knows no application with "
    "this client_id",
    "070305": "upstream.auth.app_secret (NUONUO_APP_SECRET): not the secret of this application",
    "070307": "upstream.auth.app_key (NUONUO_APP_KEY): this application's type may not get tokens "
    "with client_credentials; use the key of a self-use (自用型) application",
}
#: The refusal that says the token quota (~50 calls per 30 days) is used up.
QUOTA_CODES: Final = frozenset({"070306"})


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """One token call, classified: the token it brought, or why not."""

    result: TokenCallResult
    token: StoredToken | None = None
    #: The platform's `error` code, when it gave one.
    code: str | None = None
    #: What the endpoint said or what went wrong, in words (never the token or a secret).
    detail: str = ""
    #: With a token for a merchant (service-provider grants): what renews it, and whose it is.
    refresh_token: str | None = None
    user_id: str | None = None


def classify_answer(
    status: int, text: str, *, now: float, refusal_is_config_error: bool = False
) -> TokenAnswer:
    """The token endpoint's answer (HTTP `status`, body `text`) at wall time `now`, classified.

    `expires_in` may be a string (as the platform sends it) or a number. With
    `refusal_is_config_error` (a merchant's code or refresh token was sent), any coded refusal
    but the quota's is a configuration error: what was refused will not pass when sent again."""
    try:
        answer = json.loads(text)
    except ValueError:
        return TokenAnswer(
            TokenCallResult.FAILURE,
            detail=f"the token endpoint answered HTTP {status} with a body that is not JSON",
        )
    if not isinstance(answer, dict):
        return TokenAnswer(
            TokenCallResult.FAILURE,
            detail=f"the token endpoint answered HTTP {status} with JSON that is not an object",
        )
    value = answer.get("access_token")
    if value and isinstance(value, str) and status < 300:
        try:
            expires_in = float(answer.get("expires_in", DEFAULT_EXPIRES_IN))
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        if not math.isfinite(expires_in):
            expires_in = DEFAULT_EXPIRES_IN
        token = StoredToken(value=value, obtained_at=now, expires_in=max(expires_in, 1.0))
        refresh, user_id = answer.get("refresh_token"), answer.get("userId")
        return TokenAnswer(
            TokenCallResult.SUCCESS,
            token=token,
            refresh_token=str(refresh) if refresh else None,
            user_id=str(user_id) if user_id else None,
        )
    code = answer.get("error")
    code = str(code) if code is not None else None
    said = f"HTTP {status}, error {code}: {answer.get('error_description')}"
    if code in QUOTA_CODES:
        return TokenAnswer(TokenCallResult.QUOTA, code=code, detail=said)
    if code in CONFIG_ERROR_CODES or (refusal_is_config_error and code and status < 500):
        return TokenAnswer(TokenCallResult.CONFIG_ERROR, code=code, detail=said)
    refused = f"the token endpoint refused ({said})"
    return TokenAnswer(TokenCallResult.FAILURE, code=code, detail=refused)


@dataclass(frozen=True, slots=True)
class Hold:
    """Why no token call may be made now: since when, until when (None: until an operator or a
    new configuration ends it), and `reason`, in words that say what to do."""

    cause: HoldCause
    since: float
    until: float | None
    reason: str

    def error(self, now: float) -> TokenUnavailable:
        """What a caller wanting a token now gets."""
        retry_after = None
        if self.until is not None and not self.cause.operator_may_end:
            retry_after = self.until - now
        return TokenUnavailable(self.reason, cause=self.cause.value, retry_after=retry_after)

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause.value,
            "since": iso_utc(self.since),
            "until": iso_utc(self.until) if self.until is not None else None,
            "operator_may_end": self.cause.operator_may_end,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """The platform's standing refusal (a configuration error or the quota), as recorded."""

    result: TokenCallResult
    code: str
    at: float
    detail: str
    #: The fingerprint of the configuration it refused (`TokenGuard` `credentials`).
    credentials: str


@dataclass
class _Record:
    """What outlives the process (the JSON of `TokenGuard.dump`)."""

    calls: list[float] = field(default_factory=list)
    #: Failed calls in a row, and when the last one was: the back-off.
    failures: int = 0
    last_failure_at: float | None = None
    last_failure: str = ""
    refusal: Refusal | None = None


class TokenGuard:
    """Decides whether a token call may be made now, and records each one.

    `credentials` fingerprints the configuration the calls are made with (token URL, app key and
    secret): a configuration error recorded under other credentials no longer holds. `advice`
    words the hold after a configuration error (what to fix); unset, it names the keys of
    `upstream.auth`.
    """

    def __init__(
        self,
        limits: TokenCallsConfig,
        *,
        quota_cooldown: float,
        credentials: str,
        clock: Clock,
        advice: Callable[[Refusal], str] | None = None,
    ) -> None:
        self._limits = limits
        self._quota_cooldown = quota_cooldown
        self._credentials = credentials
        self._clock = clock
        self._advice = advice or _credentials_advice
        self._record = _Record()
        #: This process's token calls by result (counters for the metrics).
        self.results: Counter[TokenCallResult] = Counter()

    @property
    def limits(self) -> TokenCallsConfig:
        return self._limits

    def hold(self) -> Hold | None:
        """What holds the next token call back now, if anything; the longest-lasting time-bound
        cause when several do."""
        now = self._clock.wall()
        refusal = self._record.refusal
        if refusal is not None and refusal.result is TokenCallResult.CONFIG_ERROR:
            return Hold(
                HoldCause.CONFIG_ERROR, since=refusal.at, until=None, reason=self._advice(refusal)
            )
        if refusal is not None and refusal.result is TokenCallResult.QUOTA:
            until = refusal.at + self._quota_cooldown
            if now < until:
                return Hold(
                    HoldCause.QUOTA,
                    since=refusal.at,
                    until=until,
                    reason=(
                        f"the platform's token quota is used up ({refusal.detail}); no token is "
                        "asked for until an operator runs `invoice-gateway token refresh` or "
                        f"until {iso_utc(until)} (upstream.auth.quota_cooldown)"
                    ),
                )
        holds = [h for h in (self._cap_hold(now), self._backoff_hold(now)) if h is not None]
        return max(holds, key=lambda h: h.until or math.inf) if holds else None

    def check(self) -> None:
        """Raise `TokenUnavailable` naming the hold, if a token call may not be made now."""
        hold = self.hold()
        if hold is not None:
            raise hold.error(self._clock.wall())

    def record(self, answer: TokenAnswer) -> Hold | None:
        """Count a token call made now and what it came to; returns the hold that follows."""
        now = self._clock.wall()
        record = self._record
        record.calls = [*self._recent(now, QUOTA_WINDOW), now]
        self.results[answer.result] += 1
        if answer.result is TokenCallResult.FAILURE:
            record.failures += 1
            record.last_failure_at, record.last_failure = now, answer.detail
            record.refusal = None
        else:
            record.failures, record.last_failure_at = 0, None
            record.refusal = None
            if answer.result is not TokenCallResult.SUCCESS:
                record.refusal = Refusal(
                    answer.result, answer.code or "", now, answer.detail, self._credentials
                )
        return self.hold()

    def release(self) -> Hold | None:
        """An operator says: ask again now. Ends a configuration-error or quota hold and the
        back-off (never the hourly and daily caps); returns the hold it ended, if any."""
        ended = self.hold()
        self._record.refusal = None
        self._record.failures, self._record.last_failure_at = 0, None
        if ended is None or ended.cause in (HoldCause.HOURLY_CAP, HoldCause.DAILY_CAP):
            return None
        return ended

    def calls_within(self, seconds: float) -> int:
        """Token calls made in the last `seconds` (at most 30 days are remembered)."""
        return len(self._recent(self._clock.wall(), seconds))

    def dump(self) -> str:
        """The record as JSON, for the token store."""
        record = self._record
        refusal = record.refusal
        return json.dumps(
            {
                "calls": self._recent(self._clock.wall(), QUOTA_WINDOW),
                "failures": record.failures,
                "last_failure_at": record.last_failure_at,
                "last_failure": record.last_failure,
                "refusal": None
                if refusal is None
                else {
                    "result": refusal.result.value,
                    "code": refusal.code,
                    "at": refusal.at,
                    "detail": refusal.detail,
                    "credentials": refusal.credentials,
                },
            },
            separators=(",", ":"),
        )

    def restore(self, text: str) -> list[str]:
        """Take up the record `dump` wrote (by an earlier process). A configuration error and a
        back-off recorded under other credentials are dropped. Returns what was dropped, in
        words; raises ValueError when `text` is not such a record."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        calls = [float(t) for t in data.get("calls", [])]
        failures = int(data.get("failures", 0))
        last_failure_at = data.get("last_failure_at")
        refusal = None
        if isinstance(raw := data.get("refusal"), dict):
            refusal = Refusal(
                TokenCallResult(raw["result"]),
                str(raw["code"]),
                float(raw["at"]),
                str(raw["detail"]),
                str(raw["credentials"]),
            )
        dropped = []
        if refusal is not None and refusal.credentials != self._credentials:
            if refusal.result is TokenCallResult.CONFIG_ERROR:
                dropped.append(f"the configuration error {refusal.code} (the credentials changed)")
                refusal = None
            if failures:
                dropped.append("the back-off (the credentials changed)")
                failures, last_failure_at = 0, None
        self._record = _Record(
            calls=sorted(calls),
            failures=failures,
            last_failure_at=float(last_failure_at) if last_failure_at is not None else None,
            last_failure=str(data.get("last_failure", "")) if failures else "",
            refusal=refusal,
        )
        return dropped

    # -- holds that time ends ---------------------------------------------------------------

    def _recent(self, now: float, seconds: float) -> list[float]:
        return [t for t in self._record.calls if now - seconds < t <= now]

    def _cap_hold(self, now: float) -> Hold | None:
        limits = self._limits
        for cause, window, cap, key, span in (
            (HoldCause.DAILY_CAP, DAY, limits.per_day, "per_day", "24 hours"),
            (HoldCause.HOURLY_CAP, HOUR, limits.per_hour, "per_hour", "hour"),
        ):
            recent = self._recent(now, window)
            if len(recent) >= cap:
                # The call that has to leave the window for the count to drop below the cap.
                until = recent[-cap] + window
                return Hold(
                    cause,
                    since=recent[-1],
                    until=until,
                    reason=(
                        f"{len(recent)} token calls in the last {span} reached "
                        f"upstream.auth.token_calls.{key} ({cap}), which protects the platform's "
                        f"token quota; the next token call at {iso_utc(until)}"
                    ),
                )
        return None

    def _backoff_hold(self, now: float) -> Hold | None:
        record = self._record
        if not record.failures or record.last_failure_at is None:
            return None
        backoff = self._limits.backoff
        wait = min(backoff.cap, backoff.base * backoff.multiplier ** (record.failures - 1))
        until = record.last_failure_at + wait
        if now >= until:
            return None
        calls = "call" if record.failures == 1 else f"{record.failures} calls in a row"
        return Hold(
            HoldCause.BACKOFF,
            since=record.last_failure_at,
            until=until,
            reason=(
                f"the last token {calls} failed ({record.last_failure or 'no detail'}); the "
                f"next token call at {iso_utc(until)} (upstream.auth.token_calls.backoff)"
            ),
        )


def _credentials_advice(refusal: Refusal) -> str:
    """The hold's words after the platform refused the application's own credentials."""
    fix = CONFIG_ERROR_CODES.get(refusal.code, "upstream.auth")
    return (
        f"the token endpoint refused the gateway's credentials ({refusal.detail}); no token is "
        f"asked for until the configuration changes. Fix {fix} and restart the gateway (or, once "
        "fixed on the platform, run `invoice-gateway token refresh`)"
    )


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """The scheme's access token as metrics, the admin API and the CLI show it: when it was
    obtained and expires (never its value), the token calls made, and what holds the next one
    back."""

    token_url: str
    obtained_at: float | None
    expires_at: float | None
    calls_last_hour: int
    calls_last_day: int
    calls_last_30_days: int
    per_hour: int
    per_day: int
    #: This process's token calls by result (`TokenCallResult` values, every one present).
    results: Mapping[str, int]
    hold: Hold | None
    #: How tokens are obtained: `client_credentials` (the gateway's own application) or
    #: `authorization_code` (a merchant of a service-provider application, then refreshed).
    grant: str = "client_credentials"

    @classmethod
    def of(
        cls,
        guard: TokenGuard,
        token: StoredToken | None,
        *,
        token_url: str,
        grant: str = "client_credentials",
        hold: Hold | None = None,
    ) -> TokenStatus:
        """The status from `guard`'s record; `hold`, when the guard holds nothing, is what else
        holds the next call back (a merchant's authorization that is used up)."""
        return cls(
            token_url=token_url,
            obtained_at=token.obtained_at if token is not None else None,
            expires_at=token.obtained_at + token.expires_in if token is not None else None,
            calls_last_hour=guard.calls_within(HOUR),
            calls_last_day=guard.calls_within(DAY),
            calls_last_30_days=guard.calls_within(QUOTA_WINDOW),
            per_hour=guard.limits.per_hour,
            per_day=guard.limits.per_day,
            results={result.value: guard.results[result] for result in TokenCallResult},
            hold=guard.hold() or hold,
            grant=grant,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "token_url": self.token_url,
            "grant": self.grant,
            "token": None
            if self.obtained_at is None or self.expires_at is None
            else {"obtained_at": iso_utc(self.obtained_at), "expires_at": iso_utc(self.expires_at)},
            "calls": {
                "last_hour": self.calls_last_hour,
                "last_day": self.calls_last_day,
                "last_30_days": self.calls_last_30_days,
                "per_hour": self.per_hour,
                "per_day": self.per_day,
            },
            "results": dict(self.results),
            "hold": self.hold.to_json() if self.hold is not None else None,
        }
