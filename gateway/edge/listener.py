"""The client listener's connection-level limits (`limits.*`, docs/configuration.md).

- request line and header size, header count: aiohttp's HTTP parser (`max_line_size`,
  `max_field_size`, `max_headers`); over them the parser answers 400 and closes;
- a request head that does not arrive within `limits.read_timeout` of the connection opening
  (or of the previous answer on a kept-alive connection): aiohttp's keep-alive timer, armed when
  the connection opens and not moved by arriving bytes, closes the connection (slowloris);
- the body: `Proxy` reads it within `limits.read_timeout` (408);
- connections open at once: `GatedTCPSite` admits `limits.max_connections`; one more is answered
  `503 too-many-connections` at once and closed (nothing waits in the gateway for a slot).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from aiohttp import web

from gateway.config import LimitsConfig
from gateway.edge.problem import CONTENT_TYPE, PROBLEM_TYPE_BASE

log = structlog.get_logger("gateway.edge.listener")

#: How long a refused connection may go on sending before it is closed.
_REFUSAL_LINGER = 2.0


def runner_args(limits: LimitsConfig) -> dict[str, Any]:
    """Keyword arguments for the client listener's `web.AppRunner` (its request handlers)."""
    return {
        "keepalive_timeout": limits.read_timeout,
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
    }


def _refusal(max_connections: int) -> bytes:
    body = json.dumps(
        {
            "type": PROBLEM_TYPE_BASE + "too-many-connections",
            "title": "Too many connections",
            "status": 503,
            "detail": f"the gateway has {max_connections} client connections open "
            "(limits.max_connections); nothing was read or sent. Retry after Retry-After, on "
            "a connection kept alive",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refusal(asyncio.Protocol):
    """Answers a connection over the limit with 503 and closes it; what it sends is discarded
    (read until it stops, for a short while, so the answer is not lost to a reset)."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not an `asyncio.Transport` subclass on uvloop.
        transport = cast(asyncio.Transport, transport)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._closer = asyncio.get_running_loop().call_later(_REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closer is not None:
            self._closer.cancel()


class _Gated(asyncio.Protocol):
    """One accepted connection: served by a request handler when the gate admits it, refused
    otherwise. Decided when the connection is made, so every admission has its release."""

    __slots__ = ("_admitted", "_gate", "_inner")

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._inner: asyncio.Protocol = _Refusal(b"")
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._admitted = self._gate.admit()
        self._inner = self._gate.factory() if self._admitted else self._gate.refusal()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self._gate.release()
        self._inner.connection_lost(exc)


class ConnectionGate:
    """The protocol factory of a listener that serves at most `max_connections` at once."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], max_connections: int) -> None:
        self.factory = factory
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        self._answer = _refusal(max_connections)
        self._warned_at = float("-inf")

    def __call__(self) -> asyncio.Protocol:
        return _Gated(self)

    def admit(self) -> bool:
        if self.open < self.max_connections:
            self.open += 1
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= 10.0:  # at most one line per 10 s, however many
            self._warned_at = now
            log.warning(
                "client connection refused: limits.max_connections reached",
                max_connections=self.max_connections,
                refused_total=self.refused,
            )
        return False

    def release(self) -> None:
        self.open -= 1

    def refusal(self) -> asyncio.Protocol:
        return _Refusal(self._answer)


class GatedTCPSite(web.TCPSite):
    """A TCP site whose connections pass a `ConnectionGate` first."""

    __slots__ = ("_max_connections", "gate")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._max_connections = max_connections
        self.gate: ConnectionGate | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self.gate = ConnectionGate(server, self._max_connections)
        self._server = await asyncio.get_running_loop().create_server(
            self.gate,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
