"""The transport models: a request as it will be sent, and the answer as it came.

A leaf module: the client, the auth schemes and the failure classifier all speak these, and it
imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from multidict import CIMultiDict, CIMultiDictProxy


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request as it will be sent, relative to the upstream's base URL."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: CIMultiDict[str]
    body: bytes
    operation: str = "unmatched"
    #: The tenant the request is sent for: the auth scheme signs it with that tenant's own
    #: platform identity, when it has one (None: the gateway's own, e.g. the health probe).
    tenant: str | None = None

    def with_changes(
        self,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        headers: CIMultiDict[str] | None = None,
    ) -> UpstreamRequest:
        return replace(
            self,
            query=tuple(query) if query is not None else self.query,
            headers=headers if headers is not None else self.headers,
        )


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    elapsed: float = 0.0
    #: The request as sent (signed), so a rejected credential can be renewed.
    request: UpstreamRequest | None = None
