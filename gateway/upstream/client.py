"""The one connection pool to the invoice platform, and the translation of its failures.

Every request goes to the configured upstream's base URL and nowhere else: the client's
path is checked (`upstream_path`) so it cannot climb out of the base path, and the host is
never taken from the client.
"""

from __future__ import annotations

import asyncio
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import aiohttp
from aiohttp.connector import Connection
from yarl import URL

from gateway.config import UpstreamConfig
from gateway.errors import (
    AnswerTruncated,
    BadRequest,
    ConnectionLost,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.upstream.models import UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from gateway.upstream.auth import UpstreamAuth

_SEGMENT_FORBIDDEN = re.compile(r"[\\\x00-\x1f]")
#: Upstream URLs kept built, one per path (`UpstreamClient.url_for`).
_CACHED_URLS = 256


def upstream_path(raw_path: str) -> tuple[str, str]:
    """Split a client's raw request target into (path, query), refusing escapes.

    Dot segments (also percent-encoded, also double-encoded), backslashes and control
    characters are rejected, so the path always stays below the upstream's base path.
    """
    if not raw_path.startswith("/"):
        raise BadRequest(
            "the request target must be a path starting with '/'; this is not an open proxy"
        )
    path, _, query = raw_path.partition("?")
    for segment in path.split("/"):
        decoded = segment
        for _ in range(3):
            decoded = unquote(decoded)
        if decoded in (".", "..") or _SEGMENT_FORBIDDEN.search(decoded) or "/" in decoded:
            raise BadRequest(
                f"the request path {path!r} contains a dot segment, an encoded slash or a "
                "control character; send the plain path of the operation"
            )
    return path, query


class _SendState:
    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


#: The send in progress in this task, told by the connector when it has a connection.
_SENDING: ContextVar[_SendState | None] = ContextVar("gateway_upstream_sending", default=None)


class MarkingConnector(aiohttp.TCPConnector):
    """The pool's connector: it marks the send in progress as connected the moment it hands
    over a connection (new or reused), so a failure can say whether the request may have
    left. (aiohttp's request tracing says the same, but costs every request a dozen signal
    dispatches; this costs one context variable lookup.)"""

    async def connect(self, *args: Any, **kwargs: Any) -> Connection:
        connection = await super().connect(*args, **kwargs)
        # A connection exists: from here on the request may reach the platform.
        state = _SENDING.get()
        if state is not None:
            state.connected = True
        return connection


class Upstream(Protocol):
    """What the resilience pipeline needs of a transport; tests pass a fake."""

    @property
    def auth(self) -> UpstreamAuth: ...

    async def send(
        self, request: UpstreamRequest, *, time_limit: float | None = None
    ) -> UpstreamResponse: ...


class UpstreamClient:
    """Sends `UpstreamRequest`s to the configured base URL through one pooled session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        auth: UpstreamAuth,
        *,
        timeout: float,
        connect_timeout: float,
        max_response_bytes: int,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._auth = auth
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_response_bytes = max_response_bytes
        self._urls: dict[str, URL] = {}

    @classmethod
    def from_config(
        cls,
        session: aiohttp.ClientSession,
        config: UpstreamConfig,
        auth: UpstreamAuth,
        *,
        base_url: str | None = None,
    ) -> UpstreamClient:
        """A client with `config`'s timeouts and limits, to `base_url` (default `config.url`;
        the backup endpoint passes `config.backup_url`)."""
        return cls(
            session,
            base_url or config.url,
            auth,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            max_response_bytes=config.max_response_bytes,
        )

    @property
    def auth(self) -> UpstreamAuth:
        return self._auth

    def url_for(self, request: UpstreamRequest) -> URL:
        url = self._urls.get(request.path)
        if url is None:
            url = URL(self._base + request.path, encoded=True)
            if len(self._urls) < _CACHED_URLS:  # the operations' few paths, not every odd one
                self._urls[request.path] = url
        if request.query:
            url = url.with_query(request.query)
        return url

    async def send(
        self, request: UpstreamRequest, *, time_limit: float | None = None
    ) -> UpstreamResponse:
        """Authenticate (freshly, every call) and send `request`.

        Raises `UpstreamUnreachable` (provably not sent), `UpstreamTimeout` (`sent` tells),
        `UpstreamProtocolError`, or the auth scheme's `UpstreamAuthError`.
        """
        signed = await self._auth.prepare(request)
        return await self._send_prepared(signed, time_limit=time_limit)

    async def _send_prepared(
        self, request: UpstreamRequest, *, time_limit: float | None
    ) -> UpstreamResponse:
        state = _SendState()
        loop = asyncio.get_running_loop()
        started = loop.time()
        client_timeout = aiohttp.ClientTimeout(
            total=time_limit or self._timeout, sock_connect=self._connect_timeout
        )
        url = self.url_for(request)
        sending = _SENDING.set(state)
        try:
            async with self._session.request(
                request.method,
                url,
                headers=request.headers,
                data=request.body if request.body else None,
                timeout=client_timeout,
                allow_redirects=False,
            ) as response:
                body = await self._read_limited(response)
                return UpstreamResponse(
                    status=response.status,
                    headers=response.headers,
                    body=body,
                    elapsed=loop.time() - started,
                    request=request,
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to the upstream timed out: {exc}", sent=False
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"cannot connect to the upstream: {exc.os_error}") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(
                "the upstream did not answer in time", sent=state.connected
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise AnswerTruncated(f"the upstream's answer was cut off: {exc}") from exc
        except aiohttp.ClientError as exc:
            if not state.connected:
                raise UpstreamUnreachable(f"cannot reach the upstream: {exc}") from exc
            raise ConnectionLost(f"the connection to the upstream failed: {exc!r}") from exc
        finally:
            _SENDING.reset(sending)

    async def _read_limited(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_response_bytes
        chunks: list[bytes] = []
        size = 0
        while chunk := await response.content.readany():
            size += len(chunk)
            if size > limit:
                raise UpstreamProtocolError(f"the upstream answer exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
