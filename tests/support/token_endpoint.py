"""A platform token endpoint for tests: any object with `handle` and `url`, served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer


class TokenEndpointState(Protocol):
    url: str

    async def handle(self, request: web.Request) -> web.StreamResponse: ...


Endpoint = TypeVar("Endpoint", bound=TokenEndpointState)


@asynccontextmanager
async def serving(state: Endpoint) -> AsyncIterator[Endpoint]:
    """`state.handle` served as `POST /accessToken` on a free local port; `state.url` is set
    to the server's base URL while it runs."""
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]] = state.handle
    app = web.Application()
    app.router.add_post("/accessToken", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("")).rstrip("/")
    try:
        yield state
    finally:
        await server.close()
