"""The last hour of the gateway, kept in memory for the `/status` charts.

Sample          the gateway's counters at one moment
StatusHistory   samples in a ring buffer, and when the platform was down (from the circuit
                breakers' transitions); answers per-minute outcomes, queue depth, failures
                by class and outages over the window
history_sampler the background task adding a `Sample` every `interval` seconds
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.clock import SAMPLING_SHARE, Clock, Periodic
from gateway.resilience.breaker import CircuitState

#: How often the history is sampled, and how much of it the page shows.
SAMPLE_SECONDS = 10.0
WINDOW_SECONDS = 3600.0
#: Client outcomes (the `X-Gateway-Outcome` values), bottom to top in the chart.
OUTCOMES = ("forwarded", "replayed", "queued", "rejected")
#: Circuit states in which the platform counts as down.
TROUBLED = frozenset({CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.FORCED_OPEN})


@dataclass(frozen=True, slots=True)
class Sample:
    """The gateway's counters at one moment; the history charts the differences."""

    at: float
    #: Client requests since start, by outcome.
    outcomes: Mapping[str, float] = field(default_factory=dict)
    #: Failed calls to the platform since start, by failure class.
    failures: Mapping[str, float] = field(default_factory=dict)
    #: Submissions the platform does not have yet; None when the store could not be read.
    waiting: int | None = None


@dataclass(slots=True)
class Outage:
    """When the platform went down, and came back (None while it is down)."""

    start: float
    end: float | None = None


class StatusHistory:
    """The last `window` seconds in memory: samples in a ring buffer, and the times the
    platform was down (from the circuit breakers' transitions)."""

    def __init__(
        self, clock: Clock, *, interval: float = SAMPLE_SECONDS, window: float = WINDOW_SECONDS
    ) -> None:
        self.interval = interval
        self.window = window
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=math.ceil(window / interval) + 2)
        self._troubled: set[str] = set()
        self._outages: deque[Outage] = deque()
        self.down_since: float | None = None
        self.up_since: float | None = None

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        horizon = sample.at - self.window
        while self._outages and (end := self._outages[0].end) is not None and end < horizon:
            self._outages.popleft()

    def transition(self, breaker: str, _old: CircuitState, new: CircuitState, _reason: str) -> None:
        """A `TransitionListener`: the platform is down from the first breaker leaving `closed`
        for open (half-open trials included) until every breaker is closed again."""
        if new in TROUBLED:
            self._troubled.add(breaker)
        else:
            self._troubled.discard(breaker)
        now = self._clock.wall()
        if self._troubled and self.down_since is None:
            self.down_since = now
            self._outages.append(Outage(now))
        elif not self._troubled and self.down_since is not None:
            self.down_since = None
            self.up_since = now
            if self._outages:
                self._outages[-1].end = now

    def minutes(self, latest: Sample) -> list[dict[str, Any]]:
        """Client outcomes per minute over the window, oldest first, ending at `latest`."""
        slots = math.ceil(self.window / 60)
        buckets = [dict.fromkeys(OUTCOMES, 0) for _ in range(slots)]
        previous: Mapping[str, float] = {}
        for sample in [*self._samples, latest]:
            slot = int((latest.at - sample.at) // 60)
            if 0 <= slot < slots:
                for outcome in OUTCOMES:
                    delta = sample.outcomes.get(outcome, 0.0) - previous.get(outcome, 0.0)
                    buckets[slot][outcome] += max(0, round(delta))
            previous = sample.outcomes
        return [{"ago_s": 60.0 * (slot + 1), **buckets[slot]} for slot in reversed(range(slots))]

    def depth(self, latest: Sample) -> list[dict[str, Any]]:
        """Submissions waiting at each sample in the window, oldest first."""
        return [
            {"ago_s": round(latest.at - sample.at, 1), "waiting": sample.waiting}
            for sample in [*self._samples, latest]
            if sample.waiting is not None and latest.at - sample.at <= self.window
        ]

    def failures(self, latest: Sample) -> list[dict[str, Any]]:
        """Failed platform calls in the window by class, most frequent first, with how long
        ago each class was last seen (to the sampling interval)."""
        horizon = latest.at - self.window
        baseline: Mapping[str, float] = {}
        last_seen: dict[str, float] = {}
        previous: Mapping[str, float] = {}
        for sample in [*self._samples, latest]:
            if sample.at <= horizon:
                baseline = sample.failures
            for name, total in sample.failures.items():
                if total > previous.get(name, 0.0):
                    last_seen[name] = sample.at
            previous = sample.failures
        found = []
        for name, total in latest.failures.items():
            count = round(total - baseline.get(name, 0.0))
            if count > 0:
                found.append(
                    {
                        "class": name,
                        "count": count,
                        "last_seen_ago_s": round(latest.at - last_seen.get(name, latest.at), 1),
                    }
                )
        return sorted(found, key=lambda entry: (-entry["count"], entry["class"]))

    def outages(self, now: float) -> list[dict[str, Any]]:
        """Outages in the window, oldest first, as seconds ago (`end_ago_s` None while on)."""
        return [
            {
                "start_ago_s": round(now - outage.start, 1),
                "end_ago_s": round(now - outage.end, 1) if outage.end is not None else None,
            }
            for outage in self._outages
            if outage.end is None or now - outage.end <= self.window
        ]


def history_sampler(
    history: StatusHistory, sample: Callable[[], Awaitable[Sample]], clock: Clock
) -> Periodic:
    """The background task adding `sample()` to `history` every `history.interval` seconds (on
    `clock`) between `start()` and `stop()`. A sample that fails is logged and skipped."""

    async def add() -> None:
        history.add(await sample())

    return Periodic(
        "status-sampler",
        add,
        interval=history.interval,
        clock=clock,
        failure="cannot sample the gateway for /status",
        max_share=SAMPLING_SHARE,
    )
