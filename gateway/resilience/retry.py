"""Retry policy: which failures are retried, how long to wait, and the budget that caps retries.

Back-off is exponential with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter"): the n-th retry sleeps a uniform random time in [0, min(cap, base * multiplier**(n-1))].
A `Retry-After` from the platform is honoured exactly when it fits under `retry_after_cap` and
inside the deadline; a longer one ends the retries, so the client (or the outbox) waits instead.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.config import BackoffConfig, RetryBudgetConfig, RetryPolicyConfig
from gateway.resilience.failures import FailureClass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with full jitter."""

    base: float
    cap: float
    multiplier: float = 2.0

    @classmethod
    def from_config(cls, config: BackoffConfig) -> Backoff:
        return cls(base=config.base, cap=config.cap, multiplier=config.multiplier)

    def delay(self, retry_number: int, rng: random.Random) -> float:
        """The sleep before retry `retry_number` (1-based), with full jitter."""
        exponent = min(retry_number - 1, 64)
        return rng.uniform(0.0, min(self.cap, self.base * self.multiplier**exponent))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The resolved retry policy of one operation."""

    deadline: float
    attempts: int
    base: float
    cap: float
    multiplier: float
    retry_on: frozenset[FailureClass]
    retry_after_cap: float

    @classmethod
    def resolve(cls, default: RetryPolicyConfig, override: RetryPolicyConfig) -> RetryPolicy:
        """`override`'s set fields over `default`'s (which has every field set)."""

        merged = {**default.model_dump(), **override.model_dump(exclude_none=True)}
        missing = sorted(name for name, value in merged.items() if value is None)
        if missing:
            raise ValueError(f"retry policy fields without a value: {missing}")
        backoff = override.backoff or default.backoff
        assert backoff is not None
        return cls(
            deadline=float(merged["deadline"]),
            attempts=int(merged["attempts"]),
            base=backoff.base,
            cap=backoff.cap,
            multiplier=backoff.multiplier,
            retry_on=frozenset(FailureClass(name) for name in merged["retry_on"]),
            retry_after_cap=float(merged["retry_after_cap"]),
        )

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Sleep before retry `retry_number` (1-based): full jitter under the exponential cap."""
        return Backoff(self.base, self.cap, self.multiplier).delay(retry_number, rng)


class RetryBudget:
    """Caps retries at `ratio` of the requests seen in the last `window`, plus `min_retries`.

    Like Envoy's retry budget and Finagle's `RetryBudget`: during an outage every request
    fails, and without a cap each would multiply into `attempts` calls — a retry storm on a
    platform that is already down. Time is bucketed per second on the injected clock.
    """

    def __init__(self, config: RetryBudgetConfig, clock: Clock) -> None:
        self._ratio = config.ratio
        self._min = config.min_retries
        self._window = config.window
        self._clock = clock
        self._requests: deque[tuple[int, int]] = deque()
        self._retries: deque[tuple[int, int]] = deque()
        #: Retries refused by the budget since start.
        self.rejected = 0

    def _bucket(self) -> int:
        return math.floor(self._clock.monotonic())

    def _expire(self, now: int) -> None:
        horizon = now - self._window
        for series in (self._requests, self._retries):
            while series and series[0][0] <= horizon:
                series.popleft()

    @staticmethod
    def _add(series: deque[tuple[int, int]], bucket: int) -> None:
        if series and series[-1][0] == bucket:
            series[-1] = (bucket, series[-1][1] + 1)
        else:
            series.append((bucket, 1))

    def record_request(self) -> None:
        """Count one first attempt (a client request, not a retry)."""
        now = self._bucket()
        self._expire(now)
        self._add(self._requests, now)

    def try_acquire(self) -> bool:
        """Whether one more retry is allowed now; if so it is counted against the budget."""
        now = self._bucket()
        self._expire(now)
        requests = sum(n for _, n in self._requests)
        retries = sum(n for _, n in self._retries)
        if retries >= self._min + self._ratio * requests:
            self.rejected += 1
            return False
        self._add(self._retries, now)
        return True
