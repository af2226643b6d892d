"""What the simulated platform saw, for tests and drills to assert on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class Counters:
    """Counts since start (or the last `/_sim/reset`). `GET /_sim/ledger` shows them as JSON.

    The rejection counters count calls the platform refused for the caller's own mistakes; a
    correct gateway keeps all of them at zero however much the platform fails around it.
    """

    #: Requests to `/accessToken` (every one, faulted or not).
    token_calls: int = 0
    #: Tokens actually issued (what the token quota counts).
    tokens_issued: int = 0
    #: Requests per operation: the `method` header, or "accessToken" for the token endpoint.
    calls: Counter[str] = field(default_factory=Counter)
    #: Answered 070601: wrong signature, or malformed `senid`/`nonce`.
    rejected_signature: int = 0
    #: Answered 070601 too: `timestamp` missing or more than 300 s off the platform's clock.
    stale_timestamp: int = 0
    #: Answered 070301 because the token was missing, unknown or expired.
    bad_token: int = 0
    #: Answered 070301 because a `token_expiry` fault had revoked the token (expected under that
    #: fault, until the caller fetches a new token).
    revoked_token: int = 0
    #: Answered 070603.
    unknown_app_key: int = 0
    #: Answered 070303.
    wrong_user_tax: int = 0
    #: Answered 070501 (no such API).
    unknown_method: int = 0
    #: Answered 070302 (the API is switched off: `disabled_apis`).
    api_not_enabled: int = 0
    #: Answered 0201.
    invalid_request: int = 0
    #: Token requests refused for their form: 070304 (client_id), 070305 (client_secret),
    #: 070307 (grant_type).
    bad_credentials: int = 0
    #: Merchant tokens (service-provider grants): codes exchanged, refresh tokens used, and
    #: either refused (an unknown, spent or withdrawn authorization: 070308 / 070309).
    codes_exchanged: int = 0
    refreshes: int = 0
    merchant_grants_refused: int = 0
    #: Answered 070401: a merchant's token with another tax number as `userTax`.
    caller_mismatch: int = 0
    #: Token requests to the API listener while tokens have a listener of their own
    #: (`--token-listen`): answered 404. A gateway that asks the wrong host shows up here.
    token_calls_to_api_host: int = 0
    #: Fault rules fired, per kind (`refuse`: listener closures and calls dropped during one).
    faults_hit: Counter[str] = field(default_factory=Counter)

    def clear(self) -> None:
        for name, value in Counters().to_fields().items():
            setattr(self, name, value)

    def to_fields(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: counters as numbers, `calls` and `faults_hit` as objects."""
        return {
            name: dict(value) if isinstance(value, Counter) else value
            for name, value in self.to_fields().items()
        }
