"""A token bucket: at most `rate` operations per second on average, `burst` at once.

The dispatcher takes one token before every call it makes to the platform, so draining a
backlog after an outage cannot flatten a platform that has just recovered. Time comes
from the injected `Clock`, so tests run on a fake clock and never sleep for real.
"""

from __future__ import annotations

import asyncio

from gateway.clock import Clock

#: Refill arithmetic in floats may leave a hair under one token after an exact wait.
_EPSILON = 1e-9


class TokenBucket:
    """Holds up to `burst` tokens, refilled continuously at `rate` per second.

    Waiters are served first come, first served: only the longest waiter sleeps for the next
    token, the others queue behind it (an `asyncio.Lock` hands itself over in FIFO order).
    """

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock.monotonic()
        self._queue = asyncio.Lock()

    @property
    def available(self) -> float:
        """Tokens in the bucket now (fractions included)."""
        self._refill()
        return self._tokens

    def try_acquire(self) -> bool:
        """Take a token if one is free right now and nobody is waiting for one."""
        if self._queue.locked():
            return False  # never jump the queue of waiters
        return self._take()

    async def acquire(self) -> None:
        """Wait (on the clock) until a token is free, then take it. Cancel-safe."""
        async with self._queue:
            while not self._take():
                await self._clock.sleep((1.0 - self._tokens) / self.rate)

    def _take(self) -> bool:
        self._refill()
        if self._tokens + _EPSILON >= 1.0:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
