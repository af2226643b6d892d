"""Whether a failed request may have reached the platform, told by real sockets: the pool's
connector marks a send as connected once it has a connection, and that decides between "never
left" (safe to resend or fail over) and "may have left" (reconcile first)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.errors import ConnectionLost, UpstreamTimeout, UpstreamUnreachable
from gateway.upstream.auth import NoAuth
from gateway.upstream.client import MarkingConnector, UpstreamClient
from gateway.upstream.models import UpstreamRequest
from tests.support.processes import free_port

REQUEST = UpstreamRequest(
    method="POST", path="/open/v1/services", query=(), headers=CIMultiDict(), body=b"{}"
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=MarkingConnector(limit=10)) as opened:
        yield opened


def client(
    session: aiohttp.ClientSession, port: int, *, connect_timeout: float = 5
) -> UpstreamClient:
    return UpstreamClient(
        session,
        f"http://127.0.0.1:{port}",
        NoAuth(),
        timeout=5,
        connect_timeout=connect_timeout,
        max_response_bytes=1024,
    )


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections, reads, never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener.getsockname()[1]
    listener.close()


async def test_an_answer_that_never_comes_may_have_been_acted_on(
    session: aiohttp.ClientSession,
) -> None:
    """Connected, request written, no answer within the time limit: sent."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamTimeout) as caught:
            await client(session, port).send(REQUEST, time_limit=0.3)
        assert caught.value.sent is True
        assert accepted  # it really connected
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_never_left(session: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamUnreachable):
        await client(session, free_port()).send(REQUEST, time_limit=1)


async def test_a_connection_closed_without_an_answer_is_lost_not_unreachable(
    session: aiohttp.ClientSession,
) -> None:
    """Connected, then closed by the server before any answer: the request may have arrived."""

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionLost):
            await client(session, port).send(REQUEST, time_limit=2)
    finally:
        server.close()
        await server.wait_closed()


async def test_time_running_out_while_connecting_never_left(session: aiohttp.ClientSession) -> None:
    """A listener whose accept queue is full drops new connection attempts, so connecting hangs;
    the request's time runs out before any connection: not sent (resending is safe)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        # Fill the accept queue (never accepted): further SYNs are dropped.
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        with pytest.raises(UpstreamTimeout) as caught:
            await client(session, port, connect_timeout=5).send(REQUEST, time_limit=0.5)
        assert caught.value.sent is False
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
