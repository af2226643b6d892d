"""`StatusPage`: the `/status` handler and the lifetime of the history behind it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.clock import Clock
from gateway.ops.metrics import Metrics
from gateway.ops.status.facts import CountedOutbox, DispatcherState, StatusFacts
from gateway.ops.status.history import SAMPLE_SECONDS, StatusHistory, history_sampler
from gateway.ops.status.render import render
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.probe import UpstreamHealth


class StatusPage:
    """Serves `/status` as HTML, and `/status?format=json` as the same facts for scripts.

    It watches `breakers` for outages from the moment it is built; between `start()` and
    `stop()` it samples the gateway into its history every `interval` seconds (on `clock`).
    Stop it before the store closes.
    """

    def __init__(
        self,
        *,
        outbox: CountedOutbox,
        breakers: BreakerRegistry,
        health: UpstreamHealth,
        dispatcher: DispatcherState,
        metrics: Metrics,
        started_at: float,
        clock: Clock,
        interval: float = SAMPLE_SECONDS,
    ) -> None:
        self.history = StatusHistory(clock, interval=interval)
        breakers.add_listener(self.history.transition)
        self._facts = StatusFacts(
            outbox=outbox,
            breakers=breakers,
            health=health,
            dispatcher=dispatcher,
            metrics=metrics,
            started_at=started_at,
            clock=clock,
            history=self.history,
        )
        self._sampler = history_sampler(self.history, self._facts.sample, clock)

    @property
    def running(self) -> bool:
        """Whether the background sampling is on."""
        return self._sampler.running

    def start(self) -> None:
        """Start sampling in the background (idempotent)."""
        self._sampler.start()

    async def stop(self) -> None:
        """Stop sampling; returns once the background task has ended."""
        await self._sampler.stop()

    async def facts(self) -> dict[str, Any]:
        """What the page shows now, JSON-ready."""
        return await self._facts.gather()

    async def handle(self, request: web.Request) -> web.Response:
        facts = await self.facts()
        if request.query.get("format") == "json":
            return web.json_response(facts)
        return web.Response(text=render(facts), content_type="text/html", charset="utf-8")
