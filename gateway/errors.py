"""The gateway's one exception tree.

    GatewayError
    ├── ConfigError                 the configuration file or environment is wrong
    ├── ClientRequestError          the client's request cannot be served as sent (4xx)
    │   ├── Unauthenticated         missing or unknown X-Api-Key            401
    │   ├── BadRequest              malformed body, unsafe path, ...        400
    │   │   ├── JsonLimitExceeded   JSON deeper / with more values than `limits.*` 400
    │   │   └── InvalidIdempotencyKey  Idempotency-Key too long or bad characters 400
    │   ├── RequestTimeout          body not received within `limits.read_timeout` 408
    │   ├── PayloadTooLarge         body over `limits.max_body_bytes`       413
    │   ├── OperationNotAllowed     unmatched request while unmatched=reject 404
    │   ├── NotFound                no such submission (for this tenant)    404
    │   ├── RequestInFlight         same idempotency key, first still running 409
    │   ├── ActionNotAllowed        on-call action not possible in this state 409
    │   └── IdempotencyKeyReused    same idempotency key, different body    422
    ├── UpstreamError               talking to the invoice platform failed
    │   ├── UpstreamUnreachable     never reached it (refused, DNS, TLS): provably not sent
    │   ├── UpstreamTimeout         no answer in time; `sent` says whether the request left
    │   └── UpstreamProtocolError   the request was sent, the answer did not arrive whole
    │       ├── AnswerTruncated     the body was cut off
    │       └── ConnectionLost      the connection dropped before an answer
    ├── UpstreamAuthError           the upstream's auth scheme could not produce credentials
    │   └── TokenUnavailable        the token endpoint failed or refused (request not sent)
    ├── CircuitOpen                 the circuit is open: the call was not sent (fail fast)
    └── StoreError                  the durable store cannot read or write

Third-party errors (aiohttp, sqlite3, pydantic) are translated where they enter,
so callers only ever catch these.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the key and the problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class ClientRequestError(GatewayError):
    """A request the gateway refuses to serve; maps to a problem+json 4xx."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class Unauthenticated(ClientRequestError):
    status = 401
    slug = "unauthenticated"
    title = "Missing or unknown API key"


class BadRequest(ClientRequestError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class JsonLimitExceeded(BadRequest):
    """A JSON body nested deeper, or holding more values, than `limits` allow (never parsed)."""

    slug = "json-limit-exceeded"
    title = "JSON body too deeply nested or too large"


class InvalidIdempotencyKey(BadRequest):
    slug = "invalid-idempotency-key"
    title = "Invalid Idempotency-Key header"


class RequestTimeout(ClientRequestError):
    status = 408
    slug = "request-timeout"
    title = "Request body not received in time"


class PayloadTooLarge(ClientRequestError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class OperationNotAllowed(ClientRequestError):
    status = 404
    slug = "unknown-operation"
    title = "Unknown operation"


class NotFound(ClientRequestError):
    status = 404
    slug = "not-found"
    title = "Not found"


class RequestInFlight(ClientRequestError):
    status = 409
    slug = "request-in-flight"
    title = "The first request with this idempotency key is still in flight"


class ActionNotAllowed(ClientRequestError):
    status = 409
    slug = "action-not-allowed"
    title = "Not possible in the submission's current state"


class IdempotencyKeyReused(ClientRequestError):
    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency key reused with a different body"


class UpstreamError(GatewayError):
    """The invoice platform could not be talked to."""

    #: True when the request may have reached the upstream (its effect is unknown).
    sent: bool = True


class UpstreamUnreachable(UpstreamError):
    """Connecting failed (refused, DNS, TLS): the request provably never left."""

    sent = False


class UpstreamTimeout(UpstreamError):
    """No complete answer within the timeout."""

    def __init__(self, message: str, *, sent: bool) -> None:
        self.sent = sent
        super().__init__(message)


class UpstreamProtocolError(UpstreamError):
    """The request was sent but the answer was cut off or unreadable."""


class AnswerTruncated(UpstreamProtocolError):
    """The answer's body was cut off (fewer bytes than announced, or a broken chunk)."""


class ConnectionLost(UpstreamProtocolError):
    """The connection dropped after the request left and before an answer arrived."""


class UpstreamAuthError(GatewayError):
    """The upstream auth scheme could not authenticate a request."""


class TokenUnavailable(UpstreamAuthError):
    """No access token could be obtained; the request was not sent.

    `cause` says why in one word (`failure`: this token call failed; `config_error`, `quota`,
    `backoff`, `hourly_cap`, `daily_cap`: token calls are held back, see
    `gateway.upstream.auth.token_guard`). `retry_after` is how many seconds until a token call
    may be made again, when that is known (never for a hold only an operator or a new
    configuration ends).
    """

    def __init__(
        self, message: str, *, cause: str = "failure", retry_after: float | None = None
    ) -> None:
        self.cause = cause
        self.retry_after = None if retry_after is None else max(0.0, retry_after)
        super().__init__(message)


class CircuitOpen(GatewayError):
    """The circuit breaker refused the call without sending it; fail fast.

    `retry_after` is how many seconds until the breaker lets a trial call through (a hint for
    the client's `Retry-After`; never negative).
    """

    def __init__(self, message: str, *, retry_after: float, breaker: str = "upstream") -> None:
        self.retry_after = max(0.0, retry_after)
        self.breaker = breaker
        super().__init__(message)


class StoreError(GatewayError):
    """The durable store failed; nothing was acknowledged."""
