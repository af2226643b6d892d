"""`/admin/v1/dispatcher…` and `/admin/v1/circuit…`: pause delivery, steer the breakers.

Each change is written to the audit log *before* it is made, so nothing happens unrecorded
(if the store cannot record it, the answer is 503 and nothing changed).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from gateway.ops.admin.middleware import current_actor
from gateway.ops.admin.params import json_body, text_field
from gateway.outbox.dispatcher import Dispatcher
from gateway.outbox.oncall import OnCall
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.probe import UpstreamHealth


class ControlRoutes:
    def __init__(
        self,
        oncall: OnCall,
        dispatcher: Dispatcher,
        breakers: BreakerRegistry,
        health: UpstreamHealth,
    ) -> None:
        self._oncall = oncall
        self._dispatcher = dispatcher
        self._breakers = breakers
        self._health = health

    # -- dispatcher ---------------------------------------------------------------------------

    async def dispatcher(self, _request: web.Request) -> web.Response:
        return web.json_response(self._dispatcher_view())

    async def pause(self, request: web.Request) -> web.Response:
        reason = await _reason(request)
        await self._oncall.record(
            current_actor(), "dispatcher-pause", reason, was_paused=self._dispatcher.paused
        )
        self._dispatcher.pause()
        return web.json_response(self._dispatcher_view())

    async def resume(self, request: web.Request) -> web.Response:
        reason = await _reason(request)
        await self._oncall.record(
            current_actor(), "dispatcher-resume", reason, was_paused=self._dispatcher.paused
        )
        self._dispatcher.resume()
        return web.json_response(self._dispatcher_view())

    def _dispatcher_view(self) -> dict[str, Any]:
        return {
            "paused": self._dispatcher.paused,
            "running": self._dispatcher.running,
            "in_flight": self._dispatcher.in_flight,
            "stats": asdict(self._dispatcher.stats),
        }

    # -- circuit ------------------------------------------------------------------------------

    async def circuit(self, _request: web.Request) -> web.Response:
        return web.json_response(self._circuit_view())

    async def open(self, request: web.Request) -> web.Response:
        """Refuse every upstream call until reset (the probe and the timeout do not end it)."""
        reason = await self._audit_circuit(request, "circuit-open")
        self._breakers.force_open(reason)
        return web.json_response(self._circuit_view())

    async def close(self, request: web.Request) -> web.Response:
        """Let every call through, counting nothing, until reset."""
        reason = await self._audit_circuit(request, "circuit-close")
        self._breakers.force_close(reason)
        return web.json_response(self._circuit_view())

    async def reset(self, request: web.Request) -> web.Response:
        """Back to normal, closed, counters cleared."""
        reason = await self._audit_circuit(request, "circuit-reset")
        self._breakers.reset(f"by operator reset: {reason}")
        return web.json_response(self._circuit_view())

    async def _audit_circuit(self, request: web.Request, action: str) -> str:
        actor = current_actor()
        reason = await _reason(request)
        before = {str(b["name"]): b["state"] for b in self._breakers.snapshot()}
        await self._oncall.record(actor, action, reason, before=before)
        return f"{actor.name}: {reason}" if reason else actor.name

    def _circuit_view(self) -> dict[str, Any]:
        return {"breakers": self._breakers.snapshot(), "health": self._health.snapshot()}


async def _reason(request: web.Request) -> str | None:
    return text_field(await json_body(request, ("reason",)), "reason")
