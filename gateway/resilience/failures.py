"""Failure classification: every failed attempt gets exactly one `FailureClass`.

The class decides whether a retry is safe, whether the circuit breaker counts it, and what
the client is told; metrics and logs carry its value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from gateway.clock import Clock
from gateway.config import BusinessCodesConfig
from gateway.errors import (
    AnswerTruncated,
    GatewayError,
    TokenUnavailable,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.headers import parse_retry_after
from gateway.jsonpointer import MISSING, JsonPointer
from gateway.upstream.models import UpstreamResponse


class FailureClass(StrEnum):
    # Never reached the platform: a resend is always safe.
    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect_timeout"
    TOKEN_UNAVAILABLE = "token_unavailable"  # noqa: S105 — a failure class, not a secret
    # Reached the platform, refused before it read the request: as good as not sent.
    CLOCK_SKEW = "clock_skew"  # our signature refused, re-signing with its clock did not help
    # Reached the platform, answer lost: the outcome is unknown.
    TIMEOUT = "timeout"
    CONNECTION_LOST = "connection_lost"
    TRUNCATED = "truncated"
    UNPARSABLE = "unparsable"
    # The platform answered, declining to act now.
    HTTP_5XX = "http_5xx"
    HTTP_429 = "http_429"
    BUSY = "busy"
    QUOTA = "quota"
    AUTH = "auth"
    # The platform answered with a final verdict.
    HTTP_4XX = "http_4xx"
    PERMANENT = "permanent"
    DUPLICATE = "duplicate"
    # The gateway did not try: the circuit is open.
    CIRCUIT_OPEN = "circuit_open"

    @property
    def sent(self) -> bool:
        """Whether the request may have reached the platform."""
        return self not in _NOT_SENT

    @property
    def answer_lost(self) -> bool:
        """Whether the platform may have acted without the gateway learning the result."""
        return self in _ANSWER_LOST

    @property
    def trips_breaker(self) -> bool:
        """Whether this says something about the platform's health (not the request's)."""
        return self not in _HEALTHY_ANSWERS


_NOT_SENT = frozenset(
    {
        FailureClass.REFUSED,
        FailureClass.CONNECT_TIMEOUT,
        FailureClass.TOKEN_UNAVAILABLE,
        FailureClass.CLOCK_SKEW,
        FailureClass.CIRCUIT_OPEN,
    }
)
_ANSWER_LOST = frozenset(
    {
        FailureClass.TIMEOUT,
        FailureClass.CONNECTION_LOST,
        FailureClass.TRUNCATED,
        FailureClass.UNPARSABLE,
    }
)
#: A client mistake, a verdict, a rejected token or clock, or a quota say nothing about platform
#: health.
_HEALTHY_ANSWERS = frozenset(
    {
        FailureClass.HTTP_4XX,
        FailureClass.PERMANENT,
        FailureClass.DUPLICATE,
        FailureClass.AUTH,
        FailureClass.CLOCK_SKEW,
        FailureClass.QUOTA,
        FailureClass.TOKEN_UNAVAILABLE,
        FailureClass.CIRCUIT_OPEN,
    }
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt came to: success, or a failure with its class."""

    failure: FailureClass | None
    response: UpstreamResponse | None = None
    code: str | None = None
    error: GatewayError | None = None
    #: Seconds the platform (or the open circuit) asks callers to wait, when it says.
    retry_after: float | None = None
    #: The code is a verdict on the gateway's own setup (`business_codes.configuration`), not
    #: on the request: someone must change the configuration before such calls can pass.
    misconfigured: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None


class FailureClassifier:
    """Classifies upstream answers (HTTP status and business code) and transport errors."""

    def __init__(self, codes: BusinessCodesConfig, clock: Clock) -> None:
        self._clock = clock
        self._pointer: JsonPointer = codes.pointer
        #: What a code means to any operation; `_for_reads` overrides it for reads.
        self._by_code: dict[str, FailureClass | None] = {}
        for code in codes.success:
            self._by_code[code] = None
        for classes, failure in (
            (codes.retryable, FailureClass.BUSY),
            (codes.retryable_for_reads, FailureClass.PERMANENT),
            (codes.auth, FailureClass.AUTH),
            (codes.clock_skew, FailureClass.CLOCK_SKEW),
            (codes.quota, FailureClass.QUOTA),
            (codes.permanent, FailureClass.PERMANENT),
            (codes.configuration, FailureClass.PERMANENT),
            (codes.duplicate, FailureClass.DUPLICATE),
        ):
            for code in classes:
                self._by_code[code] = failure
        self._for_reads: dict[str, FailureClass | None] = dict.fromkeys(
            codes.retryable_for_reads, FailureClass.BUSY
        )
        self._misconfigured = frozenset(codes.configuration)
        self._unknown_code = FailureClass(codes.unknown)

    def of_response(self, response: UpstreamResponse, *, read: bool = False) -> Verdict:
        """The verdict on one answer; `read` says whether it answers a `read` operation (some
        codes are retryable only for reads)."""
        status = response.status
        if status >= 300:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock.wall())
            if status == 429:
                failure = FailureClass.HTTP_429
            elif status >= 500:
                failure = FailureClass.HTTP_5XX
            elif status >= 400:
                failure = FailureClass.HTTP_4XX
            else:
                failure = FailureClass.PERMANENT
            return Verdict(failure, response, retry_after=retry_after)
        try:
            document = json.loads(response.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            # Announced JSON that does not parse was cut short; other bodies are opaque.
            content_type = response.headers.get("Content-Type", "").lower()
            if "json" in content_type:
                return Verdict(FailureClass.UNPARSABLE, response)
            return Verdict(None, response)
        code = self._pointer.resolve(document)
        if code is MISSING or code is None:
            # No business code: a plain HTTP success.
            return Verdict(None, response)
        code = str(code)
        by_code = self._for_reads if read and code in self._for_reads else self._by_code
        return Verdict(
            by_code.get(code, self._unknown_code),
            response,
            code=code,
            misconfigured=code in self._misconfigured,
        )

    @staticmethod
    def of_error(error: GatewayError) -> Verdict:
        if isinstance(error, TokenUnavailable):
            # Held back until a known time (token back-off, hourly cap): that is when to retry.
            return Verdict(
                FailureClass.TOKEN_UNAVAILABLE, error=error, retry_after=error.retry_after
            )
        if isinstance(error, UpstreamUnreachable):
            failure = FailureClass.REFUSED
        elif isinstance(error, UpstreamTimeout):
            failure = FailureClass.TIMEOUT if error.sent else FailureClass.CONNECT_TIMEOUT
        elif isinstance(error, AnswerTruncated):
            failure = FailureClass.TRUNCATED
        elif isinstance(error, UpstreamProtocolError):
            failure = FailureClass.CONNECTION_LOST
        elif isinstance(error, UpstreamError):
            failure = FailureClass.CONNECTION_LOST if error.sent else FailureClass.REFUSED
        else:
            failure = FailureClass.TOKEN_UNAVAILABLE
        return Verdict(failure, error=error)
