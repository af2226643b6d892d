"""The last hour of the gateway, kept in memory for the `/status` charts.

Sample          the gateway's counters at one moment
StatusHistory   samples in a ring buffer, and when the platform was down (from the circuit
                breakers' transitions); answers per-minute outcomes, queue depth, failures
                by class and outages over the window; keeps the outages of the last day with
                the submissions queued during each and delivered from the outbox after it
                (`outage_log`, for the JSON feed)
history_sampler the background task adding a `Sample` every `interval` seconds (and, when
                handed something to watch, looking at it every few seconds in between)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.clock import SAMPLING_SHARE, Clock, Periodic, iso_utc
from gateway.resilience.breaker import CircuitState

#: How often the history is sampled, and how much of it the page shows.
SAMPLE_SECONDS = 10.0
WINDOW_SECONDS = 3600.0
#: How often the sampler looks at what it watches (the incident line shared through the store).
WATCH_SECONDS = 2.0
#: How long, and how many, ended outages are kept for the JSON feed.
OUTAGE_KEEP_SECONDS = 86400.0
OUTAGE_KEEP = 50
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


@dataclass(frozen=True, slots=True)
class Counters:
    """This replica's running totals the outages are counted with."""

    #: Submissions accepted into the outbox with 202 (`gateway_outbox_enqueued`).
    queued: float = 0.0
    #: Submissions the dispatcher delivered from the outbox.
    delivered: float = 0.0


@dataclass(slots=True)
class Outage:
    """When the platform went down, and came back (None while it is down), with the counters
    at the start, at the end, and when the next outage started (None until then)."""

    start: float
    at_start: Counters
    end: float | None = None
    at_end: Counters | None = None
    at_next: Counters | None = None

    def counts(self, now: Counters) -> dict[str, int]:
        """Submissions queued during the outage (so far), and delivered from the outbox after
        it: from its end until the next outage (or now; 0 while it lasts)."""
        end = self.at_end or now
        after = (self.at_next or now).delivered - end.delivered if self.at_end else 0.0
        return {
            "queued_during": max(0, round(end.queued - self.at_start.queued)),
            "delivered_after": max(0, round(after)),
        }


class StatusHistory:
    """The last `window` seconds in memory: samples in a ring buffer, and the times the
    platform was down (from the circuit breakers' transitions)."""

    def __init__(
        self,
        clock: Clock,
        *,
        interval: float = SAMPLE_SECONDS,
        window: float = WINDOW_SECONDS,
        counters: Callable[[], Counters] = Counters,
    ) -> None:
        self.interval = interval
        self.window = window
        self._clock = clock
        self._counters = counters
        self._samples: deque[Sample] = deque(maxlen=math.ceil(window / interval) + 2)
        self._troubled: set[str] = set()
        self._outages: deque[Outage] = deque(maxlen=OUTAGE_KEEP)
        self.down_since: float | None = None
        self.up_since: float | None = None

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        horizon = sample.at - max(self.window, OUTAGE_KEEP_SECONDS)
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
            counters = self._counters()
            if self._outages:
                self._outages[-1].at_next = counters
            self._outages.append(Outage(now, counters))
        elif not self._troubled and self.down_since is not None:
            self.down_since = None
            self.up_since = now
            if self._outages:
                self._outages[-1].end = now
                self._outages[-1].at_end = self._counters()

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

    def outage_log(self) -> list[dict[str, Any]]:
        """The outages kept (the last day, at most `OUTAGE_KEEP`), newest first, with times in
        ISO 8601 UTC (`end` None while on) and what was queued during and delivered after
        each, as this replica counted it."""
        now = self._counters()
        return [
            {
                "start": iso_utc(outage.start),
                "end": iso_utc(outage.end) if outage.end is not None else None,
                **outage.counts(now),
            }
            for outage in reversed(self._outages)
        ]


def history_sampler(
    history: StatusHistory,
    sample: Callable[[], Awaitable[Sample]],
    clock: Clock,
    *,
    watch: Callable[[], Awaitable[object]] | None = None,
    watch_interval: float = WATCH_SECONDS,
) -> Periodic:
    """The background task adding `sample()` to `history` every `history.interval` seconds (on
    `clock`) between `start()` and `stop()`. A sample that fails is logged and skipped.

    With `watch`, the task wakes every `watch_interval` seconds (if that is shorter) and awaits
    `watch()` each time, sampling only when a sample is due."""
    tick = min(history.interval, watch_interval) if watch is not None else history.interval
    last: float | None = None

    async def step() -> None:
        nonlocal last
        now = clock.monotonic()
        # Half a tick of slack: a tick that wakes a moment early still takes the due sample.
        if last is None or now - last >= history.interval - tick / 2:
            last = now
            history.add(await sample())
        if watch is not None:
            await watch()

    return Periodic(
        "status-sampler",
        step,
        interval=tick,
        clock=clock,
        failure="cannot sample the gateway for /status",
        max_share=SAMPLING_SHARE,
    )
