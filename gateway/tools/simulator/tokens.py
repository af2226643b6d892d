"""Access tokens handed out by `/accessToken`, and what makes one stop working."""

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


class TokenStore:
    """Issued tokens. Each call to `/accessToken` issues a new one; older ones stay valid until
    they expire, as on the real platform."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        #: Tokens issued since start (or the last reset); the token quota counts these.
        self.issued = 0

    def issue(self, now: float, ttl_s: float) -> Token:
        """A fresh 32-hex-digit token valid for `ttl_s` seconds from monotonic time `now`."""
        token = Token(value=secrets.token_hex(16), issued_at=now, expires_at=now + ttl_s)
        self._tokens[token.value] = token
        self.issued += 1
        return token

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

    def revoke_all(self) -> int:
        """Revoke every token issued so far; returns how many were still usable."""
        revoked = 0
        for token in self._tokens.values():
            revoked += not token.revoked
            token.revoked = True
        return revoked

    def clear(self) -> None:
        self._tokens.clear()
        self.issued = 0
