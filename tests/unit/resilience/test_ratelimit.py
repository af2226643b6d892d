"""The token bucket on a fake clock: rate and burst held, waiters served in order, no real sleep."""

from __future__ import annotations

import asyncio

import pytest

from gateway.resilience.ratelimit import TokenBucket
from tests.support.fakes import FakeClock, ManualClock


async def test_burst_is_available_at_once() -> None:
    """A full bucket hands out `burst` tokens without waiting, then refuses."""
    clock = FakeClock()
    bucket = TokenBucket(rate=5.0, burst=3, clock=clock)
    assert [True, True, True, False] == [bucket.try_acquire() for _ in range(4)]
    waiting = TokenBucket(rate=5.0, burst=3, clock=clock)
    for _ in range(3):
        await waiting.acquire()
    assert [] == clock.sleeps
    await waiting.acquire()
    assert [pytest.approx(0.2)] == clock.sleeps


async def test_rate_is_held_over_many_acquisitions() -> None:
    """1,000 acquisitions at 50/s with a burst of 10 take (1,000 - 10) / 50 s on the clock."""
    clock = FakeClock()
    bucket = TokenBucket(rate=50.0, burst=10, clock=clock)
    started = clock.monotonic()
    for _ in range(1000):
        await bucket.acquire()
    assert (1000 - 10) / 50 == pytest.approx(clock.monotonic() - started, rel=1e-6)


async def test_no_window_exceeds_rate_plus_burst() -> None:
    """Over any span t from the start, at most burst + rate * t tokens were handed out."""
    clock = FakeClock()
    bucket = TokenBucket(rate=20.0, burst=4, clock=clock)
    started = clock.monotonic()
    times = []
    for _ in range(200):
        await bucket.acquire()
        times.append(clock.monotonic() - started)
    for index, elapsed in enumerate(times):
        assert index + 1 <= 4 + 20.0 * elapsed + 1e-6


async def test_tokens_refill_while_idle_up_to_burst() -> None:
    """After a long idle spell the bucket holds `burst` tokens, never more."""
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=5, clock=clock)
    while bucket.try_acquire():
        pass
    clock.advance(3600)
    assert 5.0 == bucket.available
    assert 5 == sum(bucket.try_acquire() for _ in range(10))


async def test_waiters_are_served_first_come_first_served() -> None:
    """Concurrent waiters get tokens in the order they asked, one per 1/rate seconds."""
    clock = ManualClock()
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock)
    assert bucket.try_acquire()
    served: list[int] = []

    async def wait(index: int) -> None:
        await bucket.acquire()
        served.append(index)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert [] == served
    assert not bucket.try_acquire()  # a newcomer does not jump the queue
    for expected in ([0], [0, 1], [0, 1, 2]):
        clock.advance(0.5)
        for _ in range(5):
            await asyncio.sleep(0)
        assert expected == served
    await asyncio.gather(*tasks)


async def test_cancelled_waiter_takes_no_token() -> None:
    """A waiter cancelled while sleeping leaves the next token to the one behind it."""
    clock = ManualClock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.try_acquire()
    first = asyncio.create_task(bucket.acquire())
    second = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0)
    first.cancel()
    clock.advance(1.0)
    await asyncio.wait_for(second, timeout=1.0)
    assert first.cancelled()


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_nonsense_settings_are_refused(rate: float, burst: int) -> None:
    """A rate that is not positive or a burst under 1 is a programming error."""
    with pytest.raises(ValueError, match=r"rate|burst"):
        TokenBucket(rate=rate, burst=burst, clock=FakeClock())
