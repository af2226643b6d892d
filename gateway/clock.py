"""Time as a dependency: behaviour that depends on time takes a `Clock`, so tests never sleep.

Also the one way the gateway writes a moment as text (`iso_utc`), and `Periodic`, the one way
it does something every few seconds in the background (probe, samplers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, Protocol

import structlog

log = structlog.get_logger("gateway.clock")


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; for timeouts, leases and back-off."""
        ...

    def wall(self) -> float:
        """Unix seconds (UTC); for stored timestamps and signatures."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SteadyClock:
    """Wall time that never jumps: `base`'s wall clock when created, plus monotonic time since.

    For times the gateway stores to schedule itself (back-off, leases, ages): a clock step
    (NTP, an operator) during the process's life then neither fires retries early nor stalls
    them. Signatures and token lifetimes use the real wall clock, which the platform shares (plus
    the offset the auth scheme learns when the platform refuses a signature's time).
    """

    def __init__(self, base: Clock) -> None:
        self._base = base
        self._offset = base.wall() - base.monotonic()

    def monotonic(self) -> float:
        return self._base.monotonic()

    def wall(self) -> float:
        return self._offset + self._base.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds)


class DatabaseClock(SteadyClock):
    """Wall time as a shared database tells it: the database's clock, read at start and again
    by `resync()`, plus `base`'s monotonic time since the last reading.

    For replicas sharing a store: their leases, schedules and ages are compared across hosts,
    so they run on the one clock all of them see (the database's), whatever each host's
    clock says. Between readings it runs like `SteadyClock`; a reading corrects it by the
    drift since the last one (milliseconds), never by a host's clock step.
    """

    def __init__(self, base: Clock, read: Callable[[], Awaitable[float | None]]) -> None:
        super().__init__(base)
        self._read = read

    @classmethod
    async def anchored(
        cls, base: Clock, read: Callable[[], Awaitable[float | None]]
    ) -> DatabaseClock:
        """A clock set from the database now (raises what `read` raises)."""
        clock = cls(base, read)
        await clock.resync()
        return clock

    async def resync(self) -> float:
        """Read the database's clock again; returns the correction in seconds."""
        before = self._base.monotonic()
        reading = await self._read()
        after = self._base.monotonic()
        if reading is None:
            return 0.0
        # The reading was taken somewhere within the round trip: assume its middle.
        offset = reading - (before + after) / 2
        correction, self._offset = offset - self._offset, offset
        return correction


async def sleep_or_wake(clock: Clock, seconds: float, wakeup: asyncio.Event) -> None:
    """Wait `seconds` on `clock`, or less when `wakeup` is set (at once if it is already);
    then clear it: a loop's idle time between rounds (dispatcher, callback sender)."""
    if not wakeup.is_set():
        sleeper = asyncio.ensure_future(clock.sleep(seconds))
        woken = asyncio.ensure_future(wakeup.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (sleeper, woken):
                waiter.cancel()
            await asyncio.gather(sleeper, woken, return_exceptions=True)
    wakeup.clear()


def iso_utc(wall: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds: `2026-11-27T10:00:00.250Z`.

    The form of the times the gateway shows (admin API, on-call command line): always three
    decimals, so readers may rely on the fraction being there; sub-millisecond digits are cut.
    """
    moment = datetime.fromtimestamp(wall, UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


#: The share of the time a background count of the store may take (`Periodic(max_share=…)`):
#: with a million rows queued, the samplers slow down rather than burn a core.
SAMPLING_SHARE: Final = 0.05


class Periodic:
    """Awaits `step()` every `interval` seconds on `clock`, in a background task named `name`,
    between `start()` and `stop()`. A step that raises is logged (`failure` says what could
    not be done) and the next one runs on time: one bad round never ends the work. With
    `max_share`, slow steps space themselves out so that they never take more than that share
    of the time."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        *,
        interval: float,
        clock: Clock,
        failure: str,
        max_share: float | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self._step = step
        self._clock = clock
        self._failure = failure
        #: At most this share of the time spent in steps: a step that takes long (counting a
        #: million queued rows) stretches the wait after it. None: every `interval`, always.
        self._max_share = max_share
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start in the background (no-op while running)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop and wait for the task to end; `start()` may be called again afterwards."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # gather, not `await task`: the task's own cancellation is its result here, while a
        # cancellation of `stop()` itself still propagates.
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = self._clock.monotonic()
            try:
                await self._step()
            except Exception:
                log.exception(self._failure, task=self.name)
            await self._clock.sleep(self.wait_after(self._clock.monotonic() - started))

    def wait_after(self, step_seconds: float) -> float:
        """How long to wait after a step that took `step_seconds`."""
        if self._max_share is None:
            return self.interval
        return max(self.interval, step_seconds * (1 / self._max_share - 1))
