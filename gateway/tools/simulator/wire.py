"""What goes on the wire: answers, and the ways a connection can break instead of answering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer decided by the platform, not yet sent (so a fault can still break it)."""

    body: bytes
    status: int = 200
    content_type: str = JSON_CONTENT_TYPE
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Mapping[str, Any], *, status: int = 200) -> Reply:
        # ensure_ascii=False: the platform sends Chinese text as UTF-8, not \\u escapes.
        return cls(json.dumps(payload, ensure_ascii=False).encode(), status=status)

    @classmethod
    def http_error(cls, status: int, headers: Mapping[str, str] | None = None) -> Reply:
        """A bare HTTP error as a load balancer in front of the platform would send it."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return cls(
            f"{status} {phrase}\n".encode(),
            status=status,
            content_type="text/plain;charset=UTF-8",
            headers=headers or {},
        )


def send(reply: Reply) -> web.Response:
    """The reply as an ordinary, complete HTTP response."""
    response = web.Response(body=reply.body, status=reply.status, headers=dict(reply.headers))
    response.content_type = reply.content_type.split(";", 1)[0]
    response.charset = "UTF-8"
    return response


def abort(transport: asyncio.Transport) -> None:
    """Close a connection with a TCP RST: the peer sees 'connection reset', not an orderly close."""
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns close into an RST instead of an orderly FIN.
        with contextlib.suppress(OSError):  # the peer is gone already; aborting is what is left
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def reset(request: web.Request) -> web.Response:
    """Abort the request's connection without answering.

    aiohttp still wants a response object from the handler; it is never written.
    """
    if request.transport is not None:
        abort(request.transport)
    return web.Response(status=499)


async def send_truncated(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Send the status line, headers and half the body of `reply`, then close the connection.

    `Content-Length` announces the whole body, so the client sees a payload cut short.
    """
    response = web.StreamResponse(status=reply.status, headers=dict(reply.headers))
    response.content_type = reply.content_type.split(";", 1)[0]
    response.charset = "UTF-8"
    response.content_length = len(reply.body)
    await response.prepare(request)
    await response.write(reply.body[: len(reply.body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response
