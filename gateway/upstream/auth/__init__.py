"""Upstream auth schemes: how the gateway proves itself to the invoice platform.

A scheme is one class implementing `UpstreamAuth`; `build_auth` picks it from the config. The
`nuonuo-hmac` scheme (`nuonuo.py`) keeps one token per identity (`keeper.py`): the gateway's own
application's, and one per tenant that is a merchant of a service-provider application, each
obtained by its grant (`grants.py`) and guarded against the platform's token quota
(`token_guard.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.errors import ActionNotAllowed

if TYPE_CHECKING:
    import aiohttp

    from gateway.clock import Clock
    from gateway.config import AuthConfig, TenantConfig
    from gateway.upstream.auth.token_guard import TokenStatus
    from gateway.upstream.auth.tokens import TokenStore
    from gateway.upstream.models import UpstreamRequest, UpstreamResponse

__all__ = ["NoAuth", "UpstreamAuth", "build_auth"]


class UpstreamAuth(Protocol):
    async def load(self) -> None:
        """Read what the scheme keeps in the store (its token, its token calls); called at start,
        and at first use by itself when nobody did."""
        ...

    async def prepare(self, request: UpstreamRequest) -> UpstreamRequest:
        """The request with fresh credentials; called for every attempt, never cached."""
        ...

    async def credentials_rejected(self, request: UpstreamRequest) -> None:
        """The upstream said the credentials `request` carried are invalid: renew them once."""
        ...

    async def clock_rejected(self, response: UpstreamResponse) -> bool:
        """The upstream refused the signature of `response.request`, for which its clock may be
        the cause: learn its clock from `response`. True when requests are now signed with a
        time different enough for a resend to pass; False when nothing was learned (no usable
        `Date` header) or the refused time already agreed with the upstream's."""
        ...

    @property
    def clock_offset(self) -> float:
        """Seconds added to the local wall clock when signing: the upstream's time minus ours."""
        ...

    def token_status(self) -> TokenStatus | None:
        """The access token, the token calls and what holds the next one back; None for a
        scheme without tokens."""
        ...

    def tenant_tokens(self) -> Mapping[str, TokenStatus]:
        """The same for each tenant with a platform identity of its own, by tenant id."""
        ...

    async def refresh_token(self, tenant: str | None = None) -> TokenStatus:
        """An operator's order: ask for a new token now (`tenant`'s own, or the gateway's),
        ending a hold only an operator may end. Raises `TokenUnavailable` when no token came,
        `ActionNotAllowed` for a scheme without tokens, `NotFound` for a tenant without an
        identity of its own."""
        ...


class NoAuth:
    """For upstreams that need no authentication."""

    async def load(self) -> None:
        return None

    async def prepare(self, request: UpstreamRequest) -> UpstreamRequest:
        return request

    async def credentials_rejected(self, request: UpstreamRequest) -> None:
        return None

    async def clock_rejected(self, response: UpstreamResponse) -> bool:
        return False

    @property
    def clock_offset(self) -> float:
        return 0.0

    def token_status(self) -> TokenStatus | None:
        return None

    def tenant_tokens(self) -> Mapping[str, TokenStatus]:
        return {}

    async def refresh_token(self, tenant: str | None = None) -> TokenStatus:
        raise ActionNotAllowed("the upstream's auth scheme (upstream.auth.scheme) has no token")


def build_auth(
    config: AuthConfig,
    *,
    base_url: str,
    session: aiohttp.ClientSession,
    tokens: TokenStore,
    clock: Clock,
    tenants: Sequence[TenantConfig] = (),
) -> UpstreamAuth:
    """The auth scheme `config` names; `tenants` with a platform identity of their own get
    tokens of their own."""
    from gateway.config import NuonuoHmacAuthConfig
    from gateway.upstream.auth.nuonuo import NuonuoHmacAuth

    if isinstance(config, NuonuoHmacAuthConfig):
        return NuonuoHmacAuth(
            config,
            base_url=base_url,
            session=session,
            tokens=tokens,
            clock=clock,
            tenants=tenants,
        )
    return NoAuth()
