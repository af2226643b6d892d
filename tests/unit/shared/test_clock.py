"""The steady clock: stored schedules are immune to wall-clock steps."""

from __future__ import annotations

from gateway.clock import SteadyClock
from tests.support.fakes import FakeClock


class SteppingClock(FakeClock):
    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (NTP, an operator); monotonic time does not."""
        self._wall += seconds


def test_steady_wall_follows_monotonic_time_not_steps() -> None:
    """After a one-hour step back, steady wall time still moves forward with real elapsed time."""
    base = SteppingClock()
    steady = SteadyClock(base)
    start = steady.wall()
    assert base.wall() == start
    base.advance(10)
    base.step_wall(-3600)
    assert start + 10 == steady.wall()
