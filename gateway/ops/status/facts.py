"""What `/status` shows, gathered from the parts of the running gateway it is handed, as
JSON-ready data: whether the platform is up or down and since when, the circuits, the outbox
counts and the age of the oldest queued submission, the dispatcher, the failed platform calls
of the last hour in plain words, the history for the charts, and the incident line on-call set.

Nothing here reads a payload, a tenant's key or any other secret: only counters, states and
times.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import Counter

from gateway import __version__
from gateway.clock import Clock, iso_utc
from gateway.errors import StoreError
from gateway.ops.metrics import Metrics
from gateway.ops.status.history import TROUBLED, Counters, Sample, StatusHistory
from gateway.ops.status.incident import IncidentBoard
from gateway.outbox.store import OutboxCounts
from gateway.outbox.submissions import SubmissionState
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.probe import UpstreamHealth

#: States of submissions the platform does not have yet, as far as the gateway knows.
WAITING = (SubmissionState.QUEUED, SubmissionState.DELIVERING, SubmissionState.UNKNOWN)

#: Failure classes (`gateway.resilience.failures.FailureClass`) as a person would say them.
FAILURE_WORDS = {
    "refused": "platform refused connections",
    "connect_timeout": "platform did not accept connections in time",
    "token_unavailable": "could not get an access token from the platform",
    "timeout": "answer lost in transit (no answer in time)",
    "connection_lost": "answer lost in transit (connection dropped)",
    "truncated": "answer lost in transit (cut off)",
    "unparsable": "platform's answer unreadable",
    "http_5xx": "platform server error",
    "http_429": "platform rate-limiting the gateway",
    "busy": "platform busy",
    "quota": "platform quota used up",
    "auth": "platform rejected the gateway's credentials",
    "clock_skew": "platform refused the gateway's signature (check the clock, then the secret)",
    "http_4xx": "platform rejected the request",
    "permanent": "invoice data refused by the platform",
    "duplicate": "order number already used on the platform",
    "circuit_open": "not sent: circuit open",
}


class CountedOutbox(Protocol):
    """The one thing the page asks of the outbox store (`OutboxStore` provides it)."""

    async def counts(self) -> OutboxCounts: ...


class DeliveryStats(Protocol):
    """The dispatcher's running totals the page counts outages with."""

    @property
    def delivered(self) -> int: ...


class DispatcherState(Protocol):
    """What the page shows of the dispatcher (`Dispatcher` provides it)."""

    @property
    def paused(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def stats(self) -> DeliveryStats: ...


def outage_counters(metrics: Metrics, dispatcher: DispatcherState) -> Callable[[], Counters]:
    """Reads this replica's totals for `StatusHistory`: submissions queued (202) and delivered
    from the outbox since start."""

    def read() -> Counters:
        queued = sum(_totals(metrics.enqueued, "operation").values())
        return Counters(queued=queued, delivered=float(dispatcher.stats.delivered))

    return read


def failure_words(failure_class: str) -> str:
    """A failure class as a person would say it (unknown classes with spaces for `_`)."""
    return FAILURE_WORDS.get(failure_class, failure_class.replace("_", " "))


class StatusFacts:
    """Reads the gateway's parts into the facts the page shows; `history` supplies the last
    hour, and its breaker transitions tell when the platform went down."""

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
        history: StatusHistory,
        incidents: IncidentBoard,
        reads_endpoint: Callable[[], str] | None = None,
    ) -> None:
        self._incidents = incidents
        self._reads_endpoint = reads_endpoint
        self._outbox = outbox
        self._breakers = breakers
        self._health = health
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._started_at = started_at
        self._clock = clock
        self._history = history

    async def sample(self) -> Sample:
        """The gateway's counters now (not added to the history)."""
        waiting: int | None
        try:
            counts = await self._outbox.counts()
            waiting = sum(counts.by_state.get(state, 0) for state in WAITING)
        except StoreError:
            waiting = None
        failures = _totals(self._metrics.upstream_attempts, "result")
        failures.pop("success", None)
        return Sample(
            at=self._clock.wall(),
            outcomes=_totals(self._metrics.requests, "outcome"),
            failures=failures,
            waiting=waiting,
        )

    async def gather(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (`/status?format=json` serves it as is)."""
        history = self._history
        latest = await self.sample()
        now = latest.at
        outbox: dict[str, Any]
        try:
            counts = await self._outbox.counts()
            oldest = counts.oldest_queued_at
            outbox = {
                "counts": {state.value: counts.by_state.get(state, 0) for state in SubmissionState},
                "waiting": sum(counts.by_state.get(state, 0) for state in WAITING),
                "oldest_queued_age_s": round(now - oldest, 1) if oldest is not None else None,
            }
        except StoreError as exc:
            outbox = {"error": str(exc)}
        platform = self._health.snapshot()
        circuits = self._breakers.snapshot()
        return {
            "version": __version__,
            "now": iso_utc(now),
            "up_since": iso_utc(self._started_at),
            "incident": self._incidents.current(),
            "availability": self._availability(now, platform, circuits),
            "platform": platform,
            # Which address of the platform answers reads: `primary`, or `backup` while the
            # primary is down (only with a backup endpoint configured; else null).
            "reads_endpoint": self._reads_endpoint() if self._reads_endpoint else None,
            "circuits": circuits,
            "dispatcher": {
                "paused": self._dispatcher.paused,
                "in_flight": self._dispatcher.in_flight,
            },
            "outbox": outbox,
            "errors": [
                {**entry, "words": failure_words(entry["class"])}
                for entry in history.failures(latest)
            ],
            "history": {
                "window_s": history.window,
                "interval_s": history.interval,
                "minutes": history.minutes(latest),
                "depth": history.depth(latest),
                "outages": history.outages(now),
            },
        }

    def _availability(
        self, now: float, platform: Mapping[str, object], circuits: Iterable[Mapping[str, object]]
    ) -> dict[str, Any]:
        """Whether the platform is up, down, or held by on-call, and since when."""
        circuits = list(circuits)
        states = {str(c["state"]) for c in circuits}
        history = self._history
        since: float | None
        troubled = [c for c in circuits if CircuitState(str(c["state"])) in TROUBLED]
        # Before any transition was seen (or after a restart), the breakers' own times.
        first = min(
            (t for c in troubled if (t := _parse_iso(c["since"])) is not None), default=None
        )
        if CircuitState.FORCED_OPEN.value in states:
            state, since = "held", history.down_since or first
        elif troubled:
            state, since = "down", history.down_since or first
        elif platform.get("status") == "down":
            state, since = "down", _parse_iso(platform.get("since"))
        else:
            state = "up"
            since = history.up_since or (
                _parse_iso(platform.get("since")) if platform.get("status") == "up" else None
            )
            since = since or self._started_at
        return {
            "state": state,
            "since": iso_utc(since) if since is not None else None,
            "since_ago_s": round(now - since, 1) if since is not None else None,
        }


def _totals(counter: Counter, label: str) -> dict[str, float]:
    """A labelled counter's values summed by one label."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def _parse_iso(text: object) -> float | None:
    """Unix seconds, to the second, of an ISO 8601 UTC time as `iso_utc` or a breaker's
    snapshot writes it (None if `text` is not one)."""
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None
