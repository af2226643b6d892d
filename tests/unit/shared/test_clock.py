"""The steady clock: stored schedules are immune to wall-clock steps; times as ISO 8601 text."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.clock import SteadyClock, iso_utc
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


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_795_773_600, "2026-11-27T10:00:00.000Z"),
        (1_795_773_600.75, "2026-11-27T10:00:00.750Z"),
        (1_700_000_000.123, "2023-11-14T22:13:20.123Z"),
        (1_700_000_000.0005, "2023-11-14T22:13:20.000Z"),
    ],
)
def test_iso_utc_always_has_milliseconds_and_a_z(wall: float, expected: str) -> None:
    """Unix seconds become UTC with exactly three decimals (cut, not rounded) and `Z`."""
    assert expected == iso_utc(wall)


def test_iso_utc_reads_back_with_fromisoformat() -> None:
    """What iso_utc writes, `datetime.fromisoformat` reads back to the same millisecond."""
    wall = 1_795_773_600.25
    assert wall == datetime.fromisoformat(iso_utc(wall)).timestamp()
