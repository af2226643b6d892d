"""The steady and database clocks: stored schedules are immune to wall-clock steps; times as
ISO 8601 text."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from gateway.clock import DatabaseClock, Periodic, SteadyClock, iso_utc
from tests.support.fakes import FakeClock, ManualClock


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


async def settle_tasks(rounds: int = 5) -> None:
    """Let background tasks run until they wait on the clock again."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_periodic_runs_its_step_once_per_interval_on_the_clock() -> None:
    """A step at start, then one each time the clock moves a whole interval on."""
    clock = ManualClock()
    steps: list[float] = []

    async def step() -> None:
        steps.append(clock.monotonic())

    periodic = Periodic("test-periodic", step, interval=2.0, clock=clock, failure="step failed")
    periodic.start()
    await settle_tasks()
    for _ in range(3):
        clock.advance(2.0)
        await settle_tasks()
    await periodic.stop()
    assert [1000.0, 1002.0, 1004.0, 1006.0] == steps


async def test_periodic_survives_a_failing_step() -> None:
    """A step that raises is logged; the next one still runs on time."""
    clock = ManualClock()
    calls: list[int] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("first round breaks")

    periodic = Periodic("test-periodic", step, interval=1.0, clock=clock, failure="step failed")
    with capture_logs() as logs:
        periodic.start()
        await settle_tasks()
        clock.advance(1.0)
        await settle_tasks()
    assert periodic.running
    await periodic.stop()
    assert [0, 1] == calls
    assert ["step failed"] == [entry["event"] for entry in logs]


async def test_periodic_start_is_idempotent_and_stop_ends_the_task() -> None:
    """Two starts make one task; stop leaves none running, and it can start again."""
    clock = ManualClock()

    async def step() -> None:
        return None

    periodic = Periodic("test-periodic", step, interval=1.0, clock=clock, failure="step failed")

    def named() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "test-periodic" and not t.done()]

    periodic.start()
    periodic.start()
    assert 1 == len(named())
    await periodic.stop()
    assert ([], False) == (named(), periodic.running)
    periodic.start()
    assert periodic.running
    await periodic.stop()


async def test_database_clock_runs_on_the_database_time_not_the_hosts() -> None:
    """Anchored to the database's reading (the middle of the round trip), it then moves with
    the host's monotonic time; a host clock step does not move it; a new reading corrects it."""
    host = SteppingClock(wall=1_000.0)
    readings = [5_000.0]

    async def read() -> float | None:
        host.advance(0.2)  # a round trip of 0.2 s; the database read its clock in the middle
        return readings[0]

    clock = await DatabaseClock.anchored(host, read)
    assert 5_000.1 == pytest.approx(clock.wall())
    host.advance(10)
    assert 5_010.1 == pytest.approx(clock.wall())
    host.step_wall(-3_600)  # the host's wall clock steps back an hour
    assert 5_010.1 == pytest.approx(clock.wall())
    readings[0] = 5_010.5
    assert 0.3 == pytest.approx(await clock.resync())  # it read 5_010.2 at that moment
    assert 5_010.5 + 0.1 == pytest.approx(clock.wall())


async def test_database_clock_without_a_reading_keeps_the_hosts() -> None:
    """A store with no clock of its own (None) leaves the host's time."""
    host = FakeClock(wall=1_000.0)

    async def read() -> float | None:
        return None

    clock = await DatabaseClock.anchored(host, read)
    assert 1_000.0 == clock.wall()


async def test_a_slow_step_spaces_out_the_next_ones() -> None:
    """With `max_share` 5 %, a step that takes 1 s (counting a million queued rows) is followed
    by 19 s of waiting, not the 2 s interval; quick steps keep the interval."""
    clock = ManualClock()
    starts: list[float] = []

    async def step() -> None:
        starts.append(clock.monotonic())
        if len(starts) == 1:
            clock.advance(1.0)  # the step itself takes a second

    periodic = Periodic(
        "test-periodic", step, interval=2.0, clock=clock, failure="step failed", max_share=0.05
    )
    periodic.start()
    await settle_tasks()
    for _ in range(21):
        clock.advance(1.0)
        await settle_tasks()
    await periodic.stop()
    first = starts[0]
    assert [first, first + 20.0, first + 22.0] == starts
    assert 2.0 == periodic.wait_after(0.01)
