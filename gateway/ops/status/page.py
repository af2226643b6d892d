"""`StatusPage`: the `/status` handler, the `/status/feed.json` feed, and the lifetime of the
history and the incident line behind them."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from gateway.clock import Clock, iso_utc
from gateway.ops.metrics import Metrics
from gateway.ops.status.facts import (
    CountedOutbox,
    DispatcherState,
    StatusFacts,
    outage_counters,
)
from gateway.ops.status.history import (
    SAMPLE_SECONDS,
    WATCH_SECONDS,
    StatusHistory,
    history_sampler,
)
from gateway.ops.status.incident import AuditLog, IncidentBoard
from gateway.ops.status.render import REFRESH_SECONDS, render
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.probe import UpstreamHealth

#: The feed's own headers: anyone's page may read it (public, read-only data), and caches may
#: keep it as long as the status page takes to refresh.
FEED_HEADERS: Final = {
    "Cache-Control": f"public, max-age={REFRESH_SECONDS}",
    "Access-Control-Allow-Origin": "*",
}


class StatusPage:
    """Serves `/status` as HTML, `/status?format=json` as the same facts for scripts, and
    `feed` (`/status/feed.json`): the incident line and the outages, for other pages to embed.

    It watches `breakers` for outages from the moment it is built; between `start()` and
    `stop()` it samples the gateway into its history every `interval` seconds (on `clock`) and,
    given the store's `audit` log, reads the incident line from it every `watch_interval`
    seconds, so that a line set on another replica shows here within that time. Stop it before
    the store closes. `reads_endpoint` (with a backup endpoint configured) says which address
    of the platform answers reads now.
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
        audit: AuditLog | None = None,
        reads_endpoint: Callable[[], str] | None = None,
        interval: float = SAMPLE_SECONDS,
        watch_interval: float = WATCH_SECONDS,
    ) -> None:
        self.history = StatusHistory(
            clock, interval=interval, counters=outage_counters(metrics, dispatcher)
        )
        self.incidents = IncidentBoard(audit)
        breakers.add_listener(self.history.transition)
        self._clock = clock
        self._facts = StatusFacts(
            outbox=outbox,
            breakers=breakers,
            health=health,
            dispatcher=dispatcher,
            metrics=metrics,
            started_at=started_at,
            clock=clock,
            history=self.history,
            incidents=self.incidents,
            reads_endpoint=reads_endpoint,
        )
        self._sampler = history_sampler(
            self.history,
            self._facts.sample,
            clock,
            watch=self.incidents.follow if audit is not None else None,
            watch_interval=watch_interval,
        )

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

    def feed_document(self) -> dict[str, Any]:
        """The feed (docs/admin-api.md, "The public status feed"): the incident line shown now, the
        recent lines, and the platform's outages with what was queued and delivered."""
        return {
            "now": iso_utc(self._clock.wall()),
            "incident": self.incidents.current(),
            "incidents": self.incidents.incidents(),
            "outages": self.history.outage_log(),
        }

    async def handle(self, request: web.Request) -> web.Response:
        facts = await self.facts()
        if request.query.get("format") == "json":
            return web.json_response(facts)
        return web.Response(text=render(facts), content_type="text/html", charset="utf-8")

    async def feed(self, _request: web.Request) -> web.Response:
        return web.json_response(self.feed_document(), headers=FEED_HEADERS, dumps=_dumps)


#: Chinese lines as written, not as `\u` escapes (the body is UTF-8).
_dumps = functools.partial(json.dumps, ensure_ascii=False)
