"""Who is calling the admin API, and whether they may (docs/admin-api.md).

Bearer tokens from `admin.tokens[]`, each with a role. A presented token is hashed with SHA-256
and its digest compared, in constant time, with the digest of *every* configured token, so
neither the timing nor the order of the list tells an attacker anything.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from gateway.config import ADMIN_TOKEN_ENV, AdminTokenConfig
from gateway.errors import ClientRequestError
from gateway.outbox.oncall import Actor

#: `WWW-Authenticate` on every 401 (RFC 6750).
CHALLENGE = 'Bearer realm="invoice-gateway-admin"'


class Role(StrEnum):
    """What a token may do; an operator may do everything a viewer may."""

    VIEWER = "viewer"
    OPERATOR = "operator"

    def allows(self, needed: Role) -> bool:
        return self is Role.OPERATOR or needed is Role.VIEWER


class AdminUnauthenticated(ClientRequestError):
    """No token, an unknown token, or no tokens configured at all."""

    status = 401
    slug = "unauthenticated"
    title = "Missing or unknown admin token"

    def __init__(self, detail: str, *, presented: bool) -> None:
        super().__init__(detail)
        self.challenge = CHALLENGE + (', error="invalid_token"' if presented else "")


class Forbidden(ClientRequestError):
    status = 403
    slug = "forbidden"
    title = "This token's role may not do that"


@dataclass(frozen=True, slots=True)
class _Known:
    name: str
    role: Role
    digest: bytes


class AdminTokens:
    """The configured tokens, kept only as SHA-256 digests."""

    def __init__(self, tokens: Iterable[AdminTokenConfig]) -> None:
        self._known = tuple(_Known(t.name, Role(t.role), _digest(t.token.value())) for t in tokens)

    def __len__(self) -> int:
        return len(self._known)

    def authenticate(self, authorization: str | None) -> Actor:
        """The actor an `Authorization` header value belongs to; `AdminUnauthenticated` if none."""
        if not self._known:
            raise AdminUnauthenticated(
                "the admin API has no tokens configured, so it refuses every request. Add "
                "admin.tokens[] ({name, role: viewer|operator, token: {env: VARIABLE}}) to the "
                f"configuration, or set {ADMIN_TOKEN_ENV} for one operator token, and restart",
                presented=False,
            )
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AdminUnauthenticated(
                "send an admin token: Authorization: Bearer <token>", presented=False
            )
        presented = _digest(token)
        found: _Known | None = None
        for known in self._known:  # no early exit: every request compares against all of them
            if hmac.compare_digest(presented, known.digest):
                found = known
        if found is None:
            raise AdminUnauthenticated(
                "this token is not one of the configured admin tokens", presented=True
            )
        return Actor(found.name, found.role.value)


def authorize(actor: Actor, needed: Role, what: str) -> None:
    """Raise `Forbidden` unless `actor`'s role allows `what`."""
    if not Role(actor.role).allows(needed):
        raise Forbidden(
            f"{what} needs the {needed.value} role; token {actor.name!r} has {actor.role}"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
