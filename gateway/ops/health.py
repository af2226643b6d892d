"""`/healthz` (the process answers) and `/readyz` (the store is writable).

An upstream outage does not make the gateway unready: it can still accept submissions into the
outbox. Only a store that cannot write does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from aiohttp import web

from gateway import __version__
from gateway.errors import StoreError

#: How long a `/readyz` store check is reused, so probes cannot load the store.
READY_CACHE_SECONDS = 1.0


class WritableStore(Protocol):
    async def check_writable(self) -> None:
        """Raise `StoreError` unless a write transaction can be started right now."""
        ...


class Health:
    """`/healthz` (the process answers) and `/readyz` (the store is writable)."""

    def __init__(self, store: WritableStore) -> None:
        self._store = store
        self._checked_at = -READY_CACHE_SECONDS
        self._problem: str | None = None
        self._lock = asyncio.Lock()
        #: Set when the gateway is stopping: `/readyz` fails from then on, so load balancers
        #: stop sending here while what is in flight finishes.
        self.stopping = False

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(self, _request: web.Request) -> web.Response:
        if self.stopping:
            return web.json_response(
                {"status": "stopping", "detail": "the gateway is shutting down"}, status=503
            )
        async with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= READY_CACHE_SECONDS:
                try:
                    await self._store.check_writable()
                    self._problem = None
                except StoreError as exc:
                    self._problem = str(exc)
                self._checked_at = now
        if self._problem:
            return web.json_response({"status": "unready", "store": self._problem}, status=503)
        return web.json_response({"status": "ready", "store": "writable"})
