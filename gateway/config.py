"""Configuration: YAML validated at start (docs/design.md#configuration).

Errors name the key and the problem; an unknown key is an error, never silently ignored.
Secrets are never literal in the file: `{env: NAME}` or `{file: PATH}`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.jsonpointer import JsonPointer
from gateway.keyhash import parse_key_hash
from gateway.quantities import parse_duration

#: Environment variables that override the file, and the key each one sets.
ENV_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "GATEWAY_LISTEN": ("listen",),
    "GATEWAY_ADMIN_LISTEN": ("admin", "listen"),
    "GATEWAY_STORE_URL": ("store_url",),
    "GATEWAY_UPSTREAM_URL": ("upstream", "url"),
    "GATEWAY_UPSTREAM_BACKUP_URL": ("upstream", "backup_url"),
    "GATEWAY_TOKEN_URL": ("upstream", "auth", "token_url"),
    # For benches and containers: quieter (or louder) without editing the file.
    "GATEWAY_LOG_LEVEL": ("log", "level"),
}
ADMIN_TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"  # noqa: S105 — the name of a variable, not a secret
CONFIG_PATH_ENV = "GATEWAY_CONFIG"


def _parse_duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


def _parse_pointer(value: Any) -> Any:
    if isinstance(value, str):
        return JsonPointer(value)
    return value


#: A duration in seconds; YAML may say `15`, `15s`, `250ms`, `72h`.
Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]
#: The same, where 0 (none) is allowed.
SecondsOrNone = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
Pointer = Annotated[JsonPointer, BeforeValidator(_parse_pointer)]


def _parse_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


Listen = Annotated[str, BeforeValidator(lambda v: _parse_listen(v) if isinstance(v, str) else v)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class SecretRef(_Model):
    """Where a secret lives: an environment variable or a file. Resolved once at load."""

    env: str | None = None
    file: Path | None = None
    _value: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _not_literal(cls, data: Any) -> Any:
        if isinstance(data, str | int | float):
            raise ValueError(
                "secrets are never literal in the file: write {env: VARIABLE} or {file: /path}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def resolve(self, environ: Mapping[str, str]) -> str | None:
        """Read the secret; returns the problem as text, or None when it resolved."""
        if self.env is not None:
            value = environ.get(self.env)
            if not value:
                return f"{self.describe()} is not set"
        else:
            assert self.file is not None
            try:
                value = self.file.read_text().strip()
            except OSError as exc:
                return f"cannot read {self.describe()}: {exc.strerror}"
            if not value:
                return f"{self.describe()} is empty"
        self._value = value
        return None

    def value(self) -> str:
        """The resolved secret (only after `load_config`)."""
        if self._value is None:
            raise ConfigError([f"secret from {self.describe()} was never resolved"])
        return self._value


class TenantUpstreamConfig(_Model):
    """A merchant who authorized the gateway's service-provider (ISV) application: its calls
    carry its own access token and its own tax number (docs/design.md#token).

    The token comes once from the merchant's authorization `code` (single-use: once a token is
    stored the code is never sent again, so the key may be removed) and is then renewed with the
    refresh token the platform answered."""

    #: The merchant's tax number: `taxNum` when the code is exchanged, `userTax` on every call.
    user_tax: SecretRef
    grant: Literal["authorization_code"] = "authorization_code"
    #: The code the platform gave on the merchant's authorization (to `redirect_uri`).
    code: SecretRef | None = None
    #: The application's authorization callback, exactly as configured on the platform.
    redirect_uri: str = Field(min_length=1)
    #: The merchant's user id, sent as `client_id` when the token is renewed; only needed when
    #: the platform's token answer does not name it (`userId`).
    user_id: str | None = Field(default=None, min_length=1)

    @field_validator("redirect_uri")
    @classmethod
    def _absolute_uri(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+\S*$", value):
            raise ValueError(
                "expected the application's authorization callback as an absolute http(s) URL, "
                f"e.g. https://isv.example.com/nuonuo/callback, got {value!r}"
            )
        return value


class TenantLimitsConfig(_Model):
    """Limits on one tenant's requests; over them it gets `429` with `Retry-After`."""

    #: Requests per second on average (token bucket); unset: no rate limit.
    rate: float | None = Field(default=None, gt=0)
    #: Requests at once above the average rate (the bucket's size); default: `rate`, at least 1.
    burst: int | None = Field(default=None, ge=1)
    #: Requests of this tenant being served at once; unset: no limit.
    concurrency: int | None = Field(default=None, ge=1, le=100_000)


class TenantCallbackConfig(_Model):
    """Where the tenant hears that a queued submission became final (docs/callbacks.md)."""

    #: HTTPS, or HTTP to a loopback address (a receiver on the same host).
    url: str
    #: The HMAC-SHA256 key the events are signed with; the receiver holds it too.
    secret: SecretRef
    #: One POST at most this long.
    timeout: Seconds = 10.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback)
        ):
            raise ValueError(
                "expected an https:// URL (http:// only to a loopback address), "
                f"e.g. https://erp.example.com/invoice-events, got {value!r}"
            )
        return value


class TenantSdkClientConfig(_Model):
    """The tenant's ERP calling through the vendor's SDK (docs/sdk-clients.md): it signs each
    call with this `app_key`/`app_secret` pair (X-Nuonuo-Sign) and gets its access token from
    the gateway's `/accessToken`. A pair of the gateway's own, never the platform's."""

    app_key: SecretRef
    app_secret: SecretRef
    #: `true`: when neither secret's environment variable is set, the tenant simply has no SDK
    #: client (the default profile's demo tenant is written so, so a gateway without them
    #: starts); one set without the other is still an error.
    optional: bool = False

    def unset(self, environ: Mapping[str, str]) -> bool:
        """Optional, and neither secret's environment variable set."""
        refs = (self.app_key, self.app_secret)
        return self.optional and all(r.env is not None and not environ.get(r.env) for r in refs)


class TenantConfig(_Model):
    """A client of the gateway, identified by the API key it sends in `X-Api-Key`.

    At most one key here: `api_key` (a secret reference, hashed at start), `api_key_hash` (a
    salted hash, `scrypt$…` or `pbkdf2-sha256$…`) or the legacy unsalted `api_key_sha256`.
    Keys managed with `invoice-gateway tenant` live in the store and are valid as well."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    api_key: SecretRef | None = None
    api_key_hash: str | None = None
    #: Legacy: an unsalted SHA-256 of the key; prefer `api_key_hash`.
    api_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: This tenant's limits; unset: `limits.tenant`.
    limits: TenantLimitsConfig | None = None
    #: The tenant's own identity at the platform (a merchant of a service-provider application);
    #: unset, its calls use `upstream.auth` (the gateway's own application).
    upstream: TenantUpstreamConfig | None = None
    #: Events about its queued submissions becoming final; unset: none are sent.
    callback: TenantCallbackConfig | None = None
    #: Its ERP calls as the vendor's SDK does (signed calls, tokens from the gateway); unset:
    #: only `X-Api-Key` calls.
    sdk_client: TenantSdkClientConfig | None = None
    #: How SDK-signed calls are answered: `platform` (the platform's `{code, describe, result}`
    #: even for what the gateway says itself) or `gateway` (202 and problem+json, as for
    #: `X-Api-Key` calls, which always get those).
    answers: Literal["platform", "gateway"] = "platform"

    @field_validator("api_key_hash")
    @classmethod
    def _key_hash(cls, value: str | None) -> str | None:
        if value is not None:
            parse_key_hash(value)
        return value

    @model_validator(mode="after")
    def _one_key(self) -> TenantConfig:
        given = [self.api_key, self.api_key_hash, self.api_key_sha256]
        if sum(key is not None for key in given) > 1:
            raise ValueError("give at most one of 'api_key', 'api_key_hash' or 'api_key_sha256'")
        return self


class TokenCallsConfig(_Model):
    """Limits on calls to the token endpoint, which allows only ~50 per 30 days
    (docs/design.md#token). Every call counts, whatever its answer; the counts are kept in the
    store, so a restart does not reset them."""

    per_hour: int = Field(default=5, ge=1)
    per_day: int = Field(default=20, ge=1)
    #: Wait between token calls after a failure (unreachable, 5xx, an unknown refusal): `base`,
    #: multiplied by `multiplier` after each further failure, at most `cap`.
    backoff: BackoffConfig = Field(default_factory=lambda: BackoffConfig(base=30.0, cap=900.0))

    @model_validator(mode="after")
    def _day_holds_the_hour(self) -> TokenCallsConfig:
        if self.per_day < self.per_hour:
            raise ValueError(
                f"per_day ({self.per_day}) must be at least per_hour ({self.per_hour})"
            )
        return self


class NuonuoHmacAuthConfig(_Model):
    """Access token + HMAC-SHA1 signature of every call (docs/design.md#platform-contract)."""

    scheme: Literal["nuonuo-hmac"]
    app_key: SecretRef
    app_secret: SecretRef
    user_tax: SecretRef
    #: The token endpoint, an absolute URL: the platform serves tokens from a host of its own.
    #: Unset, `upstream.url` + `token_path`.
    token_url: str | None = None
    token_path: str = "/accessToken"  # noqa: S105 — a URL path, not a secret
    #: Refresh the token once this fraction of its lifetime has passed.
    refresh_at: float = Field(default=0.9, gt=0, lt=1)
    #: Never force more than one token refresh per this interval (protects the ~50/30 days quota).
    min_refresh_interval: Seconds = 30.0
    token_timeout: Seconds = 10.0
    #: After the platform says the token quota is used up (070306), the next token call waits for
    #: an operator (`invoice-gateway token refresh`) or this long, whichever comes first.
    quota_cooldown: Seconds = 6 * 3600.0
    token_calls: TokenCallsConfig = Field(default_factory=TokenCallsConfig)

    @field_validator("token_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(
                "expected an absolute http(s) URL without query or fragment, "
                f"e.g. https://open.nuonuo.com/accessToken, got {value!r}"
            )
        return value

    def token_endpoint(self, upstream_url: str) -> str:
        """Where tokens are asked for: `token_url`, else `token_path` below `upstream_url`."""
        if self.token_url is not None:
            return self.token_url
        return upstream_url.rstrip("/") + self.token_path


class NoAuthConfig(_Model):
    scheme: Literal["none"]


AuthConfig = Annotated[NuonuoHmacAuthConfig | NoAuthConfig, Field(discriminator="scheme")]


#: Failure classes a policy may retry. Verdicts (permanent, duplicate, http_4xx) never are,
#: and `auth` has its own rule: one token renewal, one resend.
RetryableClassName = Literal[
    "refused",
    "connect_timeout",
    "token_unavailable",
    "timeout",
    "connection_lost",
    "truncated",
    "unparsable",
    "http_5xx",
    "http_429",
    "busy",
    "quota",
]


class BusinessCodesConfig(_Model):
    """Business codes in HTTP 200 answers, and what each means (docs/design.md#business-codes).
    The defaults are the reference platform's published codes, and its duplicate code."""

    #: Where the code is in the answer's JSON body.
    pointer: Pointer = Field(default_factory=lambda: JsonPointer("/code"))
    success: list[str] = Field(default_factory=lambda: ["E0000"])
    #: The platform is busy: try again (`busy`).
    retryable: list[str] = Field(default_factory=lambda: ["040102"])
    #: Retryable for a `read` (asking again is harmless), a verdict for anything else: the
    #: platform failed while billing or processing, and a submission is not sent twice blindly.
    retryable_for_reads: list[str] = Field(default_factory=lambda: ["0202", "0203"])
    #: The access token was refused: renewed once, resent once.
    auth: list[str] = Field(default_factory=lambda: ["070301"])
    #: The signature was refused, which the platform says to check the clock for: re-signed
    #: once with the platform's time; if that does not help, not sent (the gateway's setup,
    #: never the invoice).
    clock_skew: list[str] = Field(default_factory=lambda: ["070601"])
    #: The platform declines to act now: a daily quota, a paid API out of calls.
    quota: list[str] = Field(default_factory=lambda: ["070201", "070204"])
    permanent: list[str] = Field(default_factory=lambda: ["0200", "0201"])
    #: Verdicts on the gateway's own setup, not on the request (the API is not enabled for the
    #: application, the caller does not match the token, no such API): `permanent`, logged as
    #: an error that says so and counted in `gateway_upstream_configuration_errors_total`.
    configuration: list[str] = Field(default_factory=lambda: ["070302", "070401", "070501"])
    duplicate: list[str] = Field(default_factory=lambda: ["E9106"])
    #: Codes in none of the lists: a verdict for the client, not a platform failure.
    unknown: Literal["permanent", "busy"] = "permanent"

    #: The lists, in the order a code is looked up.
    LISTS: ClassVar[tuple[str, ...]] = (
        "success",
        "retryable",
        "retryable_for_reads",
        "auth",
        "clock_skew",
        "quota",
        "permanent",
        "configuration",
        "duplicate",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> BusinessCodesConfig:
        seen: dict[str, str] = {}
        for name in self.LISTS:
            for code in getattr(self, name):
                if code in seen:
                    raise ValueError(f"code {code!r} is listed under both {seen[code]} and {name}")
                seen[code] = name
        return self

    def listed(self) -> list[str]:
        """Every code in one of the lists (each has a metric label of its own)."""
        return [code for name in self.LISTS for code in getattr(self, name)]


class BackoffConfig(_Model):
    """Exponential back-off with full jitter: sleep uniformly in [0, min(cap, base * 2**n)]."""

    base: Seconds = 0.1
    cap: Seconds = 2.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)


class RetryPolicyConfig(_Model):
    """How one operation is retried; unset fields fall back to `resilience.defaults`."""

    #: The whole attempt sequence, back-off sleeps included, fits inside this.
    deadline: Seconds | None = None
    attempts: int | None = Field(default=None, ge=1, le=20)
    backoff: BackoffConfig | None = None
    retry_on: list[RetryableClassName] | None = None
    #: Longest wait honoured from a `Retry-After` header.
    retry_after_cap: Seconds | None = None


class RetryBudgetConfig(_Model):
    """Retries may add at most `ratio` of the requests seen in `window`, plus `min_retries`."""

    ratio: float = Field(default=0.2, ge=0.0, le=1.0)
    min_retries: int = Field(default=10, ge=0)
    window: Seconds = 10.0


class BreakerConfig(_Model):
    """Circuit breaking per upstream (or per operation, with `scope: operation`)."""

    scope: Literal["upstream", "operation"] = "upstream"
    #: Consecutive failures that open the circuit.
    failure_threshold: int = Field(default=5, ge=1)
    #: Failure fraction over `window` that opens it (once `min_calls` calls were seen).
    failure_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    window: Seconds = 30.0
    min_calls: int = Field(default=20, ge=1)
    #: How long it stays open before trial calls are let through.
    reset_timeout: Seconds = 15.0
    #: Trial calls in flight at once while half-open.
    half_open_max_calls: int = Field(default=1, ge=1)
    #: Successful trials that close it again.
    success_threshold: int = Field(default=1, ge=1)
    #: A successful call slower than this counts as a failure.
    slow_call: Seconds = 5.0


class ProbeConfig(_Model):
    """An active health check: one configured operation sent every `interval`."""

    operation: str
    body: Any = Field(default_factory=dict)
    interval: Seconds = 10.0
    timeout: Seconds = 3.0
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)


def _default_policies() -> dict[str, RetryPolicyConfig]:
    """Reads retry whatever failed; submits only what provably was not processed."""
    not_processed: list[RetryableClassName] = [
        "refused",
        "connect_timeout",
        "token_unavailable",
        "busy",
        "http_429",
        "http_5xx",
    ]
    return {
        "read": RetryPolicyConfig(
            deadline=10.0,
            attempts=4,
            backoff=BackoffConfig(),
            retry_on=[*not_processed, "timeout", "connection_lost", "truncated", "unparsable"],
            retry_after_cap=5.0,
        ),
        "submit": RetryPolicyConfig(
            deadline=10.0,
            attempts=3,
            backoff=BackoffConfig(),
            retry_on=not_processed,
            retry_after_cap=5.0,
        ),
        "passthrough": RetryPolicyConfig(
            deadline=15.0, attempts=1, backoff=BackoffConfig(), retry_on=[], retry_after_cap=5.0
        ),
    }


class PolicyDefaults(_Model):
    """Retry policy per operation kind; a partial override keeps the other fields' defaults."""

    read: RetryPolicyConfig = Field(default_factory=lambda: _default_policies()["read"])
    submit: RetryPolicyConfig = Field(default_factory=lambda: _default_policies()["submit"])
    passthrough: RetryPolicyConfig = Field(
        default_factory=lambda: _default_policies()["passthrough"]
    )

    @model_validator(mode="before")
    @classmethod
    def _merge(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        defaults = _default_policies()
        merged = dict(value)
        for kind, policy in value.items():
            if isinstance(policy, dict) and kind in defaults:
                merged[kind] = {**defaults[kind].model_dump(exclude_none=True), **policy}
        return merged

    def for_kind(self, kind: str) -> RetryPolicyConfig:
        policy: RetryPolicyConfig = getattr(self, kind)
        return policy


class ResilienceConfig(_Model):
    """Retries, budgets, circuit breaking and health probing (docs/design.md#resilience)."""

    #: An operation's own `policy` overrides these field by field.
    defaults: PolicyDefaults = Field(default_factory=PolicyDefaults)
    retry_budget: RetryBudgetConfig = Field(default_factory=RetryBudgetConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    probe: ProbeConfig | None = None


_UPSTREAM_URL = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$")


def _upstream_url(value: str) -> str:
    if not _UPSTREAM_URL.match(value):
        raise ValueError(
            "expected an http(s) URL without query or fragment, "
            f"e.g. https://sdk.example.com, got {value!r}"
        )
    return value.rstrip("/")


class UpstreamConfig(_Model):
    """The invoice platform the gateway fronts; the only hosts it ever talks to are `url`
    and, when set, `backup_url` (docs/configuration.md#backup-endpoint)."""

    url: str
    #: Another address of the same platform (same credentials, same token). Reads go there
    #: while the primary is down or a read provably never left for it; submissions only for
    #: operations with `failover: submissions`. Unset: no failover.
    backup_url: str | None = None
    connect_timeout: Seconds = 3.0
    timeout: Seconds = 15.0
    pool_size: int = Field(default=100, ge=1, le=10_000)
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    auth: AuthConfig = Field(default_factory=lambda: NoAuthConfig(scheme="none"))
    business_codes: BusinessCodesConfig = Field(default_factory=BusinessCodesConfig)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _upstream_url(value)

    @field_validator("backup_url")
    @classmethod
    def _backup_http_url(cls, value: str | None) -> str | None:
        return None if value is None else _upstream_url(value)

    @model_validator(mode="after")
    def _backup_differs(self) -> UpstreamConfig:
        backup = self.backup_url
        if backup is None:
            return self
        if backup.lower() == self.url.lower():
            raise ValueError(
                f"backup_url must be another address than url (both are {self.url!r}); unset "
                "it to turn failover off"
            )
        if self.url.startswith("https://") and not backup.startswith("https://"):
            raise ValueError(
                f"backup_url must use https like url does (got {backup!r}): the same signed "
                "calls and token go there"
            )
        return self


class BodyMatch(_Model):
    """The JSON body has `equals` at `pointer` (or any value there, when `equals` is omitted)."""

    pointer: Pointer
    equals: Any = None


class MatchConfig(_Model):
    method: str | None = None
    #: Exact path, or a prefix ending in `*`.
    path: str | None = None
    #: Header name → exact value (names are case-insensitive).
    headers: dict[str, str] = Field(default_factory=dict)
    body: list[BodyMatch] = Field(default_factory=list)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z]+$", value):
            raise ValueError(f"not an HTTP method: {value!r}")
        return value.upper() if value else value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"a path starts with '/' (got {value!r})")
        return value


class ReconcileConfig(_Model):
    """How to learn the result of a submission whose answer was lost (docs/design.md#exactly-once).

    `lookup-first` (the default): the dispatcher looks the business key up with `lookup` (a
    read operation) before anything is resent; found → delivered with what was found; a resend
    only once `absent_lookups` lookups, the last at least `settle` after the first, found
    nothing. `resend`: resend with the same business key and take the platform's duplicate code
    as proof of the earlier attempt, then look it up — only for platforms known to deduplicate.
    """

    strategy: Literal["lookup-first", "resend"] = "lookup-first"
    #: How long the platform may take to list an invoice it accepted: a "not found" proves
    #: absence only this long after the first one (set it above the platform's lookup lag).
    settle: Seconds = 30.0
    #: "Not found" answers needed (spanning `settle`) before a possibly-sent one is resent.
    absent_lookups: int = Field(default=2, ge=2, le=10)
    #: The read operation that finds the result by business key.
    lookup: str
    #: Its body; every string equal to "{business_key}" is replaced by the submission's key.
    body: Any
    #: Where, in the lookup's answer, the entry for this submission is.
    result_pointer: Pointer = Field(default_factory=lambda: JsonPointer("/result/0"))
    #: The answer a client retrying with the same key gets once the submission is reconciled
    #: (its own answer was lost): a JSON template in which a string "{business_key}" or
    #: "{lookup:/pointer}" (a value of the entry the lookup found) is filled in. Without it the
    #: client gets the submission's status view. Never the platform's duplicate-code answer.
    answer: Any = None


class IssuanceStatusesConfig(_Model):
    """The lookup's status values that end an issuance, by what they mean; any other value
    means it is still going on (Nuonuo: `20` issuing, `21` signing, `31` cancelling)."""

    done: list[str] = Field(default_factory=lambda: ["2"])
    failed: list[str] = Field(default_factory=lambda: ["22"])
    signing_failed: list[str] = Field(default_factory=lambda: ["24"])
    cancelled: list[str] = Field(default_factory=lambda: ["3"])

    @model_validator(mode="after")
    def _disjoint(self) -> IssuanceStatusesConfig:
        lists = {"done": self.done, "failed": self.failed, "signing_failed": self.signing_failed}
        lists["cancelled"] = self.cancelled
        seen: dict[str, str] = {}
        for name, values in lists.items():
            for value in values:
                if value in seen:
                    raise ValueError(f"status {value!r} is in both {seen[value]!r} and {name!r}")
                seen[value] = name
        return self


class IssuanceConfig(_Model):
    """How to follow an accepted submission to the end of its issuance
    (docs/design.md#issuance-lifecycle): the platform's success only says "accepted, issuing";
    `lookup` (a read operation) is asked, for many invoices at once, until each is final.

    The lookup's body is `body` plus `{by: [numbers…]}` (at most `batch` numbers); each number
    is the value at `serial_pointer` in the submission's answer, or its business key when
    `serial_pointer` is not set. In the lookup's answer the entries are a list at
    `entries_pointer`, each found by its number at `entry_serial_pointer`.
    """

    lookup: str
    #: The lookup body's field that takes the list of numbers (Nuonuo: `serialNos`).
    by: str = Field(min_length=1)
    #: Extra fields of the lookup's body, sent as they are.
    body: dict[str, Any] = Field(default_factory=dict)
    #: In the submission's answer: the number the platform gave it (None: the business key).
    serial_pointer: Pointer | None = None
    #: In the lookup's answer: the list of entries.
    entries_pointer: Pointer = Field(default_factory=lambda: JsonPointer("/result"))
    #: In each entry: its number, its status, and what it says about the invoice.
    entry_serial_pointer: Pointer = Field(default_factory=lambda: JsonPointer("/serialNo"))
    status_pointer: Pointer = Field(default_factory=lambda: JsonPointer("/status"))
    invoice_number_pointer: Pointer | None = None
    invoice_code_pointer: Pointer | None = None
    pdf_url_pointer: Pointer | None = None
    fail_cause_pointer: Pointer | None = None
    statuses: IssuanceStatusesConfig = Field(default_factory=IssuanceStatusesConfig)
    #: Time between two lookups of one invoice.
    interval: Seconds = 5.0
    #: Numbers per lookup (the platform takes at most 50).
    batch: int = Field(default=50, ge=1, le=50)
    #: The share of `outbox.dispatcher.rate` these lookups may use (they also take their
    #: tokens from the dispatcher's bucket, so lookups and deliveries together keep its rate).
    rate_share: float = Field(default=0.1, gt=0, le=1)
    #: After this long since delivery, an invoice still not final is no longer looked up.
    give_up_after: Seconds = 24 * 3600.0


class OperationConfig(_Model):
    """One upstream operation the gateway recognises, and its kind (docs/design.md#outcomes)."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: Literal["submit", "read", "passthrough"]
    match: MatchConfig
    #: Where the business key (e.g. the order number) is in the body; used for idempotency.
    business_key: Pointer | None = None
    #: Messages with the same value here are delivered in acceptance order.
    ordering_key: Pointer | None = None
    #: Overrides of `resilience.defaults[kind]` for this operation.
    policy: RetryPolicyConfig = Field(default_factory=RetryPolicyConfig)
    #: For submits: how to resolve a lost answer. Without it such submissions wait for on-call.
    reconcile: ReconcileConfig | None = None
    #: For submits: how to follow an accepted one to the end of its issuance. Without it the
    #: platform's acceptance is the end of the story.
    issuance: IssuanceConfig | None = None
    #: `submissions`: this submit operation may go to `upstream.backup_url` under the rules
    #: reads follow. Only safe when the backup shares the primary's ledger (the same order-number
    #: deduplication): otherwise one invoice could be issued at both. Unset: reads fail over,
    #: submissions never do (docs/configuration.md#backup-endpoint).
    failover: Literal["submissions"] | None = None

    @model_validator(mode="after")
    def _failover_for_submits(self) -> OperationConfig:
        if self.failover is not None and self.kind != "submit":
            raise ValueError(
                f"failover: 'submissions' is for 'submit' operations, not {self.kind!r} ones "
                "(reads fail over without it; passthroughs never do)"
            )
        return self


class DispatcherConfig(_Model):
    """The background delivery of queued submissions."""

    #: Submissions in flight to the platform at once.
    concurrency: int = Field(default=8, ge=1, le=1000)
    #: Deliveries per second at most (token bucket), so a recovering platform is not flattened.
    rate: float = Field(default=50.0, gt=0)
    burst: int = Field(default=10, ge=1)
    #: How often to look for due submissions when there is no sign of new work.
    poll_interval: Seconds = 0.5
    #: Submissions claimed per look.
    batch: int = Field(default=64, ge=1, le=1000)


class OutboxConfig(_Model):
    """The durable outbox (docs/design.md#outbox)."""

    #: How long a claimed or in-flight submission stays leased before it is presumed abandoned.
    lease: Seconds = 60.0
    #: Delivery attempts before a submission is `dead`.
    max_attempts: int = Field(default=100, ge=1)
    #: Age after which an undelivered submission is `dead`.
    max_age: Seconds = 72 * 3600.0
    #: Per-submission back-off between delivery attempts (full jitter).
    backoff: BackoffConfig = Field(default_factory=lambda: BackoffConfig(base=1.0, cap=300.0))
    #: Delivered, failed and discarded submissions (and their idempotency keys) are kept this long.
    retention: Seconds = 72 * 3600.0
    #: How often retention and lease-expiry sweeps run.
    sweep_interval: Seconds = 60.0
    dispatcher: DispatcherConfig = Field(default_factory=DispatcherConfig)
    #: SQLite `synchronous` pragma: FULL (default) fsyncs every commit.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: Concurrent writes share a commit; `window` is how long a commit waits for company.
    group_commit: bool = True
    commit_window: Seconds = 0.001
    commit_batch_cap: int = Field(default=256, ge=1, le=10_000)


class CallbacksConfig(_Model):
    """Sending callback events (docs/callbacks.md): at least once, in their own durable queue."""

    #: How often the queue is looked at when nothing woke it.
    poll_interval: Seconds = 1.0
    #: Events sent at once, across tenants.
    concurrency: int = Field(default=4, ge=1, le=256)
    #: An event being sent is leased this long; then another replica may send it again.
    lease: Seconds = 60.0
    backoff: BackoffConfig = Field(default_factory=lambda: BackoffConfig(base=1.0, cap=600.0))
    #: An event not taken by its receiver within this long is `dead` (on-call can replay it).
    max_age: Seconds = 72 * 3600.0


class EncryptionConfig(_Model):
    """Encryption at rest of stored bodies and answers (docs/encryption.md).

    The current key seals new writes: `key` ({env|file}), `key_file` (a path, the same as
    `key: {file: PATH}`), else the variable `GATEWAY_ENCRYPTION_KEY`; none of them: no
    encryption. `previous_keys` only open what older keys sealed (rotation). Each key is 32
    random bytes, base64."""

    key: SecretRef | None = None
    previous_keys: list[SecretRef] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _key_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key_file" in data:
            data = dict(data)
            if data.get("key") is not None:
                raise ValueError("give either 'key' or 'key_file', not both")
            data["key"] = {"file": data.pop("key_file")}
        return data


class StoreConfig(_Model):
    """How the gateway uses its store (`store_url`; docs/design.md#store)."""

    #: `auto`: bring the schema up to date at start (several replicas starting at once take a
    #: lock and migrate once). `manual`: refuse to start on an older schema until
    #: `invoice-gateway migrate` has run. Either way a newer schema than this gateway knows is
    #: refused.
    migrate: Literal["auto", "manual"] = "auto"
    #: PostgreSQL: connections this replica keeps open (one more listens for wake-ups).
    pool_size: int = Field(default=10, ge=1, le=500)
    #: PostgreSQL: how long to wait for a connection (to the server, or free in the pool).
    connect_timeout: Seconds = 5.0
    #: PostgreSQL: how long one statement may run before it fails with `StoreError`.
    command_timeout: Seconds = 10.0
    #: PostgreSQL: prepared statements; set false behind PgBouncer in transaction mode.
    prepared_statements: bool = True
    #: PostgreSQL: a direct address (not through a pooler) for LISTEN; default `store_url`.
    listen_url: str | None = None
    #: Encryption at rest (docs/encryption.md).
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)

    @field_validator("listen_url")
    @classmethod
    def _listen_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"expected postgresql://..., got {value!r}")
        return value


class LimitsConfig(_Model):
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: A JSON body the gateway parses (classification, business and ordering keys): nesting
    #: deeper, or more values (array elements and object members), gets 400 unparsed.
    max_json_depth: int = Field(default=64, ge=2, le=1000)
    max_json_values: int = Field(default=100_000, ge=100, le=10_000_000)
    #: The request line and each header line, in bytes; one header more than `max_headers`.
    max_header_bytes: int = Field(default=8190, ge=1024, le=65536)
    max_headers: int = Field(default=100, ge=16, le=1000)
    #: A request's head must arrive within this of the connection opening (or of the previous
    #: answer on a kept-alive connection: idle connections close after it too), its body within
    #: this of the head.
    read_timeout: Seconds = 30.0
    #: Client connections open at once; one more is answered 503 and closed.
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    #: Every tenant's limits unless it has `tenants[].limits` of its own.
    tenant: TenantLimitsConfig | None = None


class LogConfig(_Model):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ShutdownConfig(_Model):
    """What SIGTERM does (docs/operations.md): /readyz fails at once; requests are still served
    for `drain_delay` (so a load balancer stops sending first), then the listener closes; what
    is in flight — requests and deliveries — finishes within `grace_period` of the signal. What
    has not finished by then, or at a second SIGTERM, is cut off: every acknowledged
    submission is already on disk, and a delivery cut off is reconciled."""

    drain_delay: SecondsOrNone = 0.0
    grace_period: Seconds = 25.0

    @model_validator(mode="after")
    def _delay_within_grace(self) -> ShutdownConfig:
        if self.drain_delay >= self.grace_period:
            raise ValueError(
                f"drain_delay ({self.drain_delay:g} s) must be shorter than grace_period "
                f"({self.grace_period:g} s): in-flight work needs time after the listener closes"
            )
        return self


class AdminTokenConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["viewer", "operator"]
    token: SecretRef


class AdminConfig(_Model):
    listen: Listen = "127.0.0.1:8081"
    tokens: list[AdminTokenConfig] = Field(default_factory=list)


class GatewayConfig(_Model):
    """The whole validated configuration."""

    listen: Listen = "0.0.0.0:8080"
    store_url: str = "sqlite:///./data/gateway.db"
    store: StoreConfig = Field(default_factory=StoreConfig)
    #: What to do with a request that matches no operation.
    unmatched: Literal["passthrough", "reject"] = "passthrough"
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    tenants: list[TenantConfig] = Field(min_length=1)
    upstream: UpstreamConfig
    operations: list[OperationConfig] = Field(default_factory=list)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value.startswith(("postgresql://", "postgres://")):
            return value
        if not (value.startswith("sqlite:///") and len(value) > len("sqlite:///")):
            raise ValueError(
                f"expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        for label, names in (
            ("operations", [op.name for op in self.operations]),
            ("tenants", [t.id for t in self.tenants]),
            ("admin.tokens", [t.name for t in self.admin.tokens]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{label}: duplicate names {dupes}")
        by_name = {op.name: op for op in self.operations}
        for i, tenant in enumerate(self.tenants):
            if tenant.upstream is not None and not isinstance(
                self.upstream.auth, NuonuoHmacAuthConfig
            ):
                raise ValueError(
                    f"tenants[{i}].upstream: a tenant's own platform identity needs "
                    "upstream.auth.scheme nuonuo-hmac (the service-provider application's key "
                    "and secret)"
                )
        probe = self.resilience.probe
        if probe is not None and probe.operation not in by_name:
            raise ValueError(
                f"resilience.probe.operation: {probe.operation!r} is not one of 'operations'"
            )
        for i, op in enumerate(self.operations):
            if op.failover is not None and self.upstream.backup_url is None:
                raise ValueError(
                    f"operations[{i}].failover: 'submissions' needs upstream.backup_url (or "
                    "GATEWAY_UPSTREAM_BACKUP_URL)"
                )
            if op.issuance is not None:
                follower = by_name.get(op.issuance.lookup)
                if follower is None or follower.kind != "read" or op.kind != "submit":
                    raise ValueError(
                        f"operations[{i}].issuance.lookup: {op.issuance.lookup!r} must name a "
                        "'read' operation (and issuance is only for 'submit' operations)"
                    )
                if op.issuance.serial_pointer is None and op.business_key is None:
                    raise ValueError(
                        f"operations[{i}].issuance: needs a serial_pointer or a business_key "
                        "to look the invoice up by"
                    )
            if op.reconcile is None:
                continue
            lookup = by_name.get(op.reconcile.lookup)
            if lookup is None or lookup.kind != "read":
                raise ValueError(
                    f"operations[{i}].reconcile.lookup: {op.reconcile.lookup!r} must name a "
                    "'read' operation"
                )
            if op.business_key is None:
                raise ValueError(
                    f"operations[{i}].reconcile: needs a business_key to look the result up by"
                )
        return self

    def sqlite_path(self) -> Path:
        return Path(self.store_url.removeprefix("sqlite:///"))

    def secrets(self) -> list[tuple[str, SecretRef]]:
        """Every secret reference with the dotted key it sits at."""
        found: list[tuple[str, SecretRef]] = []
        for i, tenant in enumerate(self.tenants):
            if tenant.api_key is not None:
                found.append((f"tenants[{i}].api_key", tenant.api_key))
            if tenant.upstream is not None:
                found.append((f"tenants[{i}].upstream.user_tax", tenant.upstream.user_tax))
                if tenant.upstream.code is not None:
                    found.append((f"tenants[{i}].upstream.code", tenant.upstream.code))
            if tenant.callback is not None:
                found.append((f"tenants[{i}].callback.secret", tenant.callback.secret))
            if tenant.sdk_client is not None:
                found.append((f"tenants[{i}].sdk_client.app_key", tenant.sdk_client.app_key))
                found.append((f"tenants[{i}].sdk_client.app_secret", tenant.sdk_client.app_secret))
        auth = self.upstream.auth
        if isinstance(auth, NuonuoHmacAuthConfig):
            for field in ("app_key", "app_secret", "user_tax"):
                found.append((f"upstream.auth.{field}", getattr(auth, field)))
        for i, admin_token in enumerate(self.admin.tokens):
            found.append((f"admin.tokens[{i}].token", admin_token.token))
        encryption = self.store.encryption
        if encryption.key is not None:
            found.append(("store.encryption.key", encryption.key))
        for i, previous in enumerate(encryption.previous_keys):
            found.append((f"store.encryption.previous_keys[{i}]", previous))
        return found


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("nuonuo-hmac", "none") and out.endswith("auth"):
            continue  # pydantic adds the union tag to the location; the reader never wrote it
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names valid at the parent of `loc`, for 'did you mean' hints."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        current = None
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            for inner in (candidate, *getattr(candidate, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    current = inner
                    break
            if current is not None:
                break
    return list(getattr(current, "model_fields", {}))


def _explain(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        key = _dotted(error["loc"])
        if error["type"] == "extra_forbidden":
            name = str(error["loc"][-1])
            hint = difflib.get_close_matches(name, _known_keys(GatewayConfig, error["loc"]), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(f"{key}: unknown key{suggestion}")
        elif error["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append(
                f"{key}: {message} (got {error.get('input')!r})"
                if error["type"] not in ("value_error", "assertion_error")
                else f"{key}: {message}"
            )
    return problems


def _unset_env_secrets(raw: Any, environ: Mapping[str, str], key: str = "") -> list[str]:
    """Secrets named by unset variables, found without a valid model, so one run lists all."""
    if isinstance(raw, dict):
        if set(raw) == {"env"} and isinstance(raw["env"], str):
            return (
                []
                if environ.get(raw["env"])
                else [f"{key}: environment variable {raw['env']} is not set"]
            )
        if raw.get("optional") is True:
            return []  # an optional section (sdk_client): its variables may well be unset
        return [
            problem
            for name, value in raw.items()
            for problem in _unset_env_secrets(value, environ, f"{key}.{name}" if key else str(name))
        ]
    if isinstance(raw, list):
        return [
            problem
            for index, value in enumerate(raw)
            for problem in _unset_env_secrets(value, environ, f"{key}[{index}]")
        ]
    return []


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for variable, path in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if not value:
            continue
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    if environ.get(ADMIN_TOKEN_ENV):
        admin = raw.setdefault("admin", {})
        if isinstance(admin, dict):
            tokens = admin.setdefault("tokens", [])
            if isinstance(tokens, list):
                tokens.append(
                    {"name": "env", "role": "operator", "token": {"env": ADMIN_TOKEN_ENV}}
                )


def parse_config(raw: Any, environ: Mapping[str, str], *, source: str = "config") -> GatewayConfig:
    """Validate an already-parsed YAML document, apply env overrides, resolve secrets."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys"])
    raw = dict(raw)
    _apply_env_overrides(raw, environ)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc) + _unset_env_secrets(raw, environ)) from None
    config = _without_unset_sdk_clients(config, environ)
    problems = [
        f"{key}: {problem}"
        for key, ref in config.secrets()
        if (problem := ref.resolve(environ)) is not None
    ] or _shared_sdk_app_keys(config)
    if problems:
        raise ConfigError(problems)
    return config


def _shared_sdk_app_keys(config: GatewayConfig) -> list[str]:
    """Tenants whose `sdk_client.app_key` is another's (once the secrets are resolved): an SDK
    call's `appkey` must name one tenant."""
    owner: dict[str, int] = {}
    problems = []
    for i, tenant in enumerate(config.tenants):
        if tenant.sdk_client is None:
            continue
        key = tenant.sdk_client.app_key.value()
        if key in owner:
            problems.append(
                f"tenants[{i}].sdk_client.app_key: the same key as tenants[{owner[key]}]'s; "
                "each tenant needs an SDK key pair of its own"
            )
        owner.setdefault(key, i)
    return problems


def _without_unset_sdk_clients(config: GatewayConfig, environ: Mapping[str, str]) -> GatewayConfig:
    """`config` without the optional `sdk_client` sections whose variables are all unset."""
    if not any(t.sdk_client is not None and t.sdk_client.unset(environ) for t in config.tenants):
        return config
    tenants = [
        t.model_copy(update={"sdk_client": None})
        if t.sdk_client is not None and t.sdk_client.unset(environ)
        else t
        for t in config.tenants
    ]
    return config.model_copy(update={"tenants": tenants})


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, except that a key written twice in one mapping is recorded in
    `repeated` (its dotted key and the lines of every occurrence) instead of the last one
    silently winning. A merge key (`<<`) is not a repetition: the keys it brings in may be
    overridden, as YAML says."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        #: (line of the first occurrence, problem) per repeated key, in construction order.
        self.repeated: list[tuple[int, str]] = []
        self._paths: dict[int, str] = {}

    def construct_document(self, node: yaml.Node) -> Any:
        self._paths = _node_paths(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, list[int]] = {}
        names: dict[Any, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it with its own message
            # Keys compare as the values they load as (`1` and `"1"` differ, `on` and `true`
            # do not): exactly the ones of which a dict would keep only the last.
            lines.setdefault(key, []).append(key_node.start_mark.line + 1)
            names.setdefault(key, _key_text(key_node))
        parent = self._paths.get(id(node), "")
        for key, seen in lines.items():
            if len(seen) > 1:
                times = "twice" if len(seen) == 2 else f"{len(seen)} times"
                at = ", ".join(map(str, seen[:-1])) + f" and {seen[-1]}"
                self.repeated.append(
                    (
                        seen[0],
                        f"{_child(parent, names[key])}: written {times}, at lines {at}; a key may "
                        "appear once in a mapping (YAML would silently keep only the last)",
                    )
                )
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _key_text(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    return f"<the key at line {node.start_mark.line + 1}>"


def _child(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _node_paths(root: yaml.Node) -> dict[int, str]:
    """The dotted key (`operations[0].reconcile`) of every node, by `id`, in document order (a
    node reached again through an alias keeps its first key)."""
    paths: dict[int, str] = {}
    pending: list[tuple[yaml.Node, str]] = [(root, "")]
    while pending:
        node, path = pending.pop()
        if id(node) in paths:
            continue
        paths[id(node)] = path
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            children = [(value, _child(path, _key_text(key))) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        pending.extend(reversed(children))
    return paths


def parse_yaml(text: str, *, source: str = "config") -> Any:
    """The YAML document in `text` as `yaml.safe_load` reads it, except that a key written twice
    in one mapping is an error, never last-wins. Raises `ConfigError` naming each problem."""
    loader = _UniqueKeyLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]
        ) from None
    finally:
        loader.dispose()
    if loader.repeated:
        raise ConfigError([problem for _, problem in sorted(loader.repeated)])
    return raw


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, validate and resolve the configuration at `path`."""
    environ = os.environ if environ is None else environ
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file: {exc.strerror}"]) from None
    return parse_config(parse_yaml(text, source=str(path)), environ, source=str(path))
