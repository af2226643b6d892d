"""Access tokens handed out by `/accessToken`, and what makes one stop working.

Two kinds of caller get tokens, as on the platform: the application itself (client_credentials:
a token for the one seller the simulator was started with), and, for a service-provider (ISV)
application, each merchant who authorized it (authorization_code: the merchant's code, spent
once, gives a token tied to the merchant's tax number and a refresh token; refresh_token, with
the merchant's user id as client_id, gives the next pair). A merchant's token is good only with
that merchant's tax number as `userTax`.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass


class TokenState(enum.Enum):
    VALID = "valid"
    UNKNOWN = "unknown"  # never issued here (or forgotten by a reset)
    EXPIRED = "expired"  # older than its lifetime
    REVOKED = "revoked"  # revoked early by a `token_expiry` fault


@dataclass(slots=True)
class Token:
    value: str
    issued_at: float
    expires_at: float
    revoked: bool = False
    #: The merchant (tax number) the token was issued for; None: the application's own.
    merchant: str | None = None


def user_id_of(tax_num: str) -> str:
    """The user id the simulated platform gives the merchant with tax number `tax_num`."""
    return f"U{tax_num}"


class TokenStore:
    """Issued tokens. Each call to `/accessToken` issues a new one; older ones stay valid until
    they expire, as on the real platform."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        #: Refresh tokens not yet used, and whose (tax number) each is.
        self._refresh: dict[str, str] = {}
        #: Authorization codes already exchanged.
        self._spent_codes: set[str] = set()
        #: Tokens issued since start (or the last reset); the token quota counts these.
        self.issued = 0

    def issue(self, now: float, ttl_s: float, *, merchant: str | None = None) -> Token:
        """A fresh 32-hex-digit token valid for `ttl_s` seconds from monotonic time `now`, for
        `merchant` (a tax number) or the application itself."""
        token = Token(
            value=secrets.token_hex(16), issued_at=now, expires_at=now + ttl_s, merchant=merchant
        )
        self._tokens[token.value] = token
        self.issued += 1
        return token

    def spend_code(self, code: str) -> bool:
        """Exchange an authorization code: True the first time, False ever after."""
        if code in self._spent_codes:
            return False
        self._spent_codes.add(code)
        return True

    def new_refresh_token(self, merchant: str) -> str:
        value = secrets.token_hex(16)
        self._refresh[value] = merchant
        return value

    def take_refresh_token(self, value: str, user_id: str) -> str | None:
        """Use up refresh token `value` presented with `user_id`: the merchant's tax number, or
        None when it is unknown, already used, or not that user's (then it is left as it was)."""
        merchant = self._refresh.get(value)
        if merchant is None or user_id_of(merchant) != user_id:
            return None
        del self._refresh[value]
        return merchant

    def check(self, value: str, now: float) -> TokenState:
        """Whether `value` may be used at monotonic time `now`."""
        token = self._tokens.get(value)
        if token is None:
            return TokenState.UNKNOWN
        if token.revoked:
            return TokenState.REVOKED
        if now >= token.expires_at:
            return TokenState.EXPIRED
        return TokenState.VALID

    def merchant_of(self, value: str) -> str | None:
        """The merchant a token was issued for (None: the application's own, or unknown)."""
        token = self._tokens.get(value)
        return token.merchant if token is not None else None

    def revoke_all(self) -> int:
        """Revoke every token issued so far; returns how many were still usable."""
        revoked = 0
        for token in self._tokens.values():
            revoked += not token.revoked
            token.revoked = True
        return revoked

    def clear(self) -> None:
        self._tokens.clear()
        self._refresh.clear()
        self._spent_codes.clear()
        self.issued = 0
