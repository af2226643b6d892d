"""The circuit breaker: trips, fails fast, recovers through bounded trials, obeys operators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.config import BreakerConfig
from gateway.errors import CircuitOpen
from gateway.resilience.breaker import BreakerRegistry, CircuitBreaker, CircuitState
from gateway.resilience.failures import FailureClass, Verdict
from tests.support.fakes import FakeClock

OK = Verdict(None)
DOWN = Verdict(FailureClass.HTTP_5XX)

Attempt = Callable[[], Awaitable[Verdict]]


RESET_TIMEOUT = 10.0


@pytest.fixture
def clock() -> FakeClock:
    """The fake clock for tests that move time; the others give `make` a throwaway one."""
    return FakeClock()


def make(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    defaults: dict[str, Any] = {
        "failure_threshold": 3,
        "reset_timeout": RESET_TIMEOUT,
        "min_calls": 100,
    }
    return CircuitBreaker("upstream", BreakerConfig(**{**defaults, **settings}), clock)


def answer(verdict: Verdict, *, clock: FakeClock | None = None, takes: float = 0.0) -> Attempt:
    async def attempt() -> Verdict:
        if clock is not None:
            clock.advance(takes)
        return verdict

    return attempt


class Held:
    """Attempts that stay in flight until released, counting how many started."""

    def __init__(self, verdict: Verdict = OK) -> None:
        self.verdict = verdict
        self.started = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Verdict:
        self.started += 1
        await self.release.wait()
        return self.verdict


async def trip(breaker: CircuitBreaker, times: int = 3) -> None:
    for _ in range(times):
        await breaker.call(answer(DOWN))


async def tripped(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    """A breaker opened by three failures in a row."""
    breaker = make(clock, **settings)
    await trip(breaker)
    return breaker


async def half_open(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    """A tripped breaker whose reset timeout has just run out: its next call is a trial."""
    breaker = await tripped(clock, **settings)
    clock.advance(RESET_TIMEOUT)
    return breaker


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_consecutive_failures_open_the_circuit() -> None:
    """`failure_threshold` tripping failures in a row open it; one fewer does not."""
    breaker = make(FakeClock())
    await trip(breaker, 2)
    assert CircuitState.CLOSED == breaker.state
    await breaker.call(answer(DOWN))
    assert CircuitState.OPEN == breaker.state


async def test_open_circuit_fails_fast_without_calling(clock: FakeClock) -> None:
    """While open, `call` raises CircuitOpen without running the attempt; retry_after falls."""
    breaker = await tripped(clock)
    held = Held()
    with pytest.raises(CircuitOpen) as raised:
        await breaker.call(held)
    assert 0 == held.started
    assert 10.0 == raised.value.retry_after
    assert "upstream" == raised.value.breaker
    assert "after 3 consecutive failures" in str(raised.value)
    clock.advance(4)
    with pytest.raises(CircuitOpen) as raised:
        await breaker.call(held)
    assert 6.0 == raised.value.retry_after
    assert 6.0 == breaker.retry_after()


async def test_fail_fast_takes_well_under_ten_milliseconds() -> None:
    """Refusing a call while open costs far less than a millisecond of real time."""
    breaker = await tripped(FakeClock())
    started = time.perf_counter()
    for _ in range(200):
        with pytest.raises(CircuitOpen):
            await breaker.call(answer(OK))
    assert (time.perf_counter() - started) / 200 < 0.001


async def test_half_open_admits_at_most_the_configured_trials() -> None:
    """After the reset timeout exactly `half_open_max_calls` trials run; the rest fail fast."""
    breaker = await half_open(FakeClock(), half_open_max_calls=2)
    held = Held()
    trials = [asyncio.create_task(breaker.call(held)) for _ in range(2)]
    await settle()
    assert 2 == held.started
    assert CircuitState.HALF_OPEN == breaker.state
    assert 2 == breaker.snapshot()["trials_in_flight"]
    for _ in range(3):
        with pytest.raises(CircuitOpen) as raised:
            await breaker.call(held)
        assert 1.0 == raised.value.retry_after
    assert 2 == held.started
    held.release.set()
    assert [OK, OK] == await asyncio.gather(*trials)
    assert CircuitState.CLOSED == breaker.state


async def test_one_successful_trial_closes_the_circuit() -> None:
    """With the default success_threshold, a single good trial closes it."""
    breaker = await half_open(FakeClock())
    assert OK == await breaker.call(answer(OK))
    assert CircuitState.CLOSED == breaker.state


async def test_success_threshold_two_needs_two_trials() -> None:
    """With success_threshold 2, the first good trial leaves it half-open, the second closes it."""
    breaker = await half_open(FakeClock(), success_threshold=2)
    await breaker.call(answer(OK))
    assert CircuitState.HALF_OPEN == breaker.state
    await breaker.call(answer(OK))
    assert CircuitState.CLOSED == breaker.state


async def test_failed_trial_reopens_for_a_full_reset_timeout(clock: FakeClock) -> None:
    """A failed trial opens the circuit again, and the reset timeout starts over."""
    breaker = await half_open(clock)
    clock.advance(2)
    assert DOWN == await breaker.call(answer(DOWN))
    assert CircuitState.OPEN == breaker.state
    assert 10.0 == breaker.retry_after()


async def test_failure_rate_trips_without_a_consecutive_run(clock: FakeClock) -> None:
    """Interleaved failures open it once the window's failure rate reaches the threshold."""
    breaker = make(clock, failure_threshold=5, failure_rate=0.5, min_calls=10, window=30.0)
    for _ in range(4):
        await breaker.call(answer(DOWN))
        await breaker.call(answer(OK))
        clock.advance(1)
    await breaker.call(answer(OK))
    assert CircuitState.CLOSED == breaker.state
    assert 0 == breaker.snapshot()["consecutive_failures"]
    await breaker.call(answer(DOWN))
    assert CircuitState.OPEN == breaker.state


async def test_failure_rate_forgets_calls_older_than_the_window(clock: FakeClock) -> None:
    """Outcomes that left the window no longer count towards the failure rate."""
    breaker = make(clock, failure_threshold=5, failure_rate=0.5, min_calls=4, window=30.0)
    await breaker.call(answer(DOWN))
    await breaker.call(answer(DOWN))
    await breaker.call(answer(OK))
    clock.advance(31)
    await breaker.call(answer(DOWN))
    await breaker.call(answer(OK))
    await breaker.call(answer(OK))
    assert CircuitState.CLOSED == breaker.state
    assert 3 == breaker.snapshot()["window_calls"]


async def test_slow_successes_trip_it_and_are_still_returned(clock: FakeClock) -> None:
    """Successes slower than `slow_call` count as failures, and the caller still gets them."""
    breaker = make(clock, slow_call=5.0)
    slow_ok = answer(OK, clock=clock, takes=6.0)
    assert [OK, OK, OK] == [await breaker.call(slow_ok) for _ in range(3)]
    assert CircuitState.OPEN == breaker.state


async def test_successes_at_the_slow_limit_do_not_trip(clock: FakeClock) -> None:
    """A success exactly at `slow_call` is not slow."""
    breaker = make(clock, slow_call=5.0)
    for _ in range(10):
        await breaker.call(answer(OK, clock=clock, takes=5.0))
    assert CircuitState.CLOSED == breaker.state


@pytest.mark.parametrize(
    "failure",
    [
        FailureClass.PERMANENT,
        FailureClass.DUPLICATE,
        FailureClass.HTTP_4XX,
        FailureClass.AUTH,
        FailureClass.QUOTA,
        FailureClass.TOKEN_UNAVAILABLE,
    ],
)
async def test_answers_about_the_request_never_trip_it(failure: FailureClass) -> None:
    """Permanent, duplicate, 4xx, auth, quota and token failures never trip it, even 100 times."""
    breaker = make(FakeClock(), failure_threshold=1, min_calls=1)
    verdict = Verdict(failure, code="0201")
    for _ in range(100):
        assert verdict == await breaker.call(answer(verdict))
    assert CircuitState.CLOSED == breaker.state
    assert 0 == breaker.snapshot()["consecutive_failures"]


async def test_an_answer_about_the_request_breaks_a_run_of_failures() -> None:
    """A permanent error between platform failures resets the consecutive count."""
    breaker = make(FakeClock())
    await trip(breaker, 2)
    await breaker.call(answer(Verdict(FailureClass.PERMANENT)))
    await trip(breaker, 2)
    assert CircuitState.CLOSED == breaker.state


async def test_cancelled_trial_frees_its_slot_and_counts_nothing() -> None:
    """A trial cancelled in flight releases its slot; the next call becomes the trial."""
    breaker = await half_open(FakeClock())
    held = Held()
    trial = asyncio.create_task(breaker.call(held))
    await settle()
    with pytest.raises(CircuitOpen):
        await breaker.call(answer(OK))
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert CircuitState.HALF_OPEN == breaker.state
    assert 0 == breaker.snapshot()["trials_in_flight"]
    assert OK == await breaker.call(answer(OK))
    assert CircuitState.CLOSED == breaker.state


async def test_cancelled_call_is_not_a_failure() -> None:
    """Cancelling calls while closed never trips it."""
    breaker = make(FakeClock(), failure_threshold=1)
    held = Held()
    call = asyncio.create_task(breaker.call(held))
    await settle()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert CircuitState.CLOSED == breaker.state
    assert 0 == breaker.snapshot()["consecutive_failures"]


async def test_an_exception_from_the_attempt_propagates_and_counts_as_a_failure() -> None:
    """An exception escapes `call` unchanged and is counted like a platform failure."""
    breaker = make(FakeClock(), failure_threshold=1)

    async def broken() -> Verdict:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await breaker.call(broken)
    assert CircuitState.OPEN == breaker.state


async def test_an_exception_from_a_trial_frees_its_slot() -> None:
    """A trial that raises releases its slot and re-opens the circuit."""
    breaker = await half_open(FakeClock())

    async def broken() -> Verdict:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await breaker.call(broken)
    assert CircuitState.OPEN == breaker.state
    assert 0 == breaker.snapshot()["trials_in_flight"]


async def test_a_call_that_outlives_the_state_it_started_in_is_not_counted(
    clock: FakeClock,
) -> None:
    """A failure that arrives after the circuit opened does not restart the reset timeout."""
    breaker = make(clock, failure_threshold=1)
    slow = Held(DOWN)
    straggler = asyncio.create_task(breaker.call(slow))
    await settle()
    await breaker.call(answer(DOWN))
    clock.advance(4)
    slow.release.set()
    assert DOWN == await straggler
    assert 6.0 == breaker.retry_after()


async def test_force_open_survives_the_reset_timeout(clock: FakeClock) -> None:
    """A forced-open breaker refuses calls long after the reset timeout and never half-opens."""
    breaker = make(clock)
    breaker.force_open("planned maintenance")
    clock.advance(1000)
    held = Held()
    with pytest.raises(CircuitOpen, match="planned maintenance"):
        await breaker.call(held)
    assert 0 == held.started
    assert CircuitState.FORCED_OPEN == breaker.state


async def test_force_close_lets_calls_through_despite_failures() -> None:
    """A forced-closed breaker runs every call and never trips."""
    breaker = make(FakeClock(), failure_threshold=1, min_calls=1)
    await breaker.call(answer(DOWN))
    breaker.force_close("upstream is fine, the checks are wrong")
    for _ in range(50):
        assert DOWN == await breaker.call(answer(DOWN))
    assert CircuitState.FORCED_CLOSED == breaker.state


async def test_reset_clears_state_counters_and_window() -> None:
    """`reset` returns to a normal closed circuit with nothing remembered."""
    breaker = await tripped(FakeClock(), failure_threshold=3, min_calls=50)
    breaker.force_open("testing")
    breaker.reset()
    snapshot = breaker.snapshot()
    assert CircuitState.CLOSED == breaker.state
    assert (0, 0, None) == (
        snapshot["consecutive_failures"],
        snapshot["window_calls"],
        snapshot["window_failure_rate"],
    )
    await trip(breaker, 2)
    assert CircuitState.CLOSED == breaker.state


async def test_listeners_see_every_transition_with_its_reason(clock: FakeClock) -> None:
    """Every automatic and manual transition reaches listeners, with a reason in plain words."""
    breaker = make(clock, failure_threshold=2, slow_call=5.0)
    seen: list[tuple[str, str, str, str]] = []
    breaker.add_listener(lambda name, old, new, reason: seen.append((name, old, new, reason)))
    await trip(breaker, 2)
    clock.advance(10)
    await breaker.call(answer(OK, clock=clock, takes=7.0))
    clock.advance(10)
    await breaker.call(answer(OK))
    breaker.force_open("maintenance")
    breaker.reset()
    breaker.record_probe(False)
    breaker.record_probe(True)
    assert [
        ("upstream", "closed", "open", "after 2 consecutive failures (last: http_5xx)"),
        ("upstream", "open", "half_open", "after the 10 s reset timeout"),
        (
            "upstream",
            "half_open",
            "open",
            "after a failed trial call (slow call: 7.0 s, over the 5 s limit)",
        ),
        ("upstream", "open", "half_open", "after the 10 s reset timeout"),
        ("upstream", "half_open", "closed", "after 1 successful trial call"),
        ("upstream", "closed", "forced_open", "by operator: maintenance"),
        ("upstream", "forced_open", "closed", "by operator reset"),
        ("upstream", "closed", "open", "by health probe"),
        ("upstream", "open", "closed", "by health probe"),
    ] == seen


async def test_listeners_see_the_breaker_already_in_its_new_state() -> None:
    """Regression: pybreaker notifies before storing the new state; listeners must not see it."""
    breaker = make(FakeClock(), failure_threshold=1)
    seen: list[tuple[str, str, float]] = []
    breaker.add_listener(
        lambda name, old, new, reason: seen.append((new, breaker.state, breaker.retry_after()))
    )
    await breaker.call(answer(DOWN))
    assert [("open", "open", 10.0)] == seen


async def test_failure_rate_transition_names_the_rate() -> None:
    """A failure-rate trip says which rate over which window."""
    breaker = make(FakeClock(), failure_threshold=10, failure_rate=0.65, min_calls=5)
    seen: list[str] = []
    breaker.add_listener(lambda name, old, new, reason: seen.append(reason))
    for verdict in (DOWN, OK, DOWN, OK, DOWN, DOWN):
        await breaker.call(answer(verdict))
    assert ["after failure rate 67 % over 30 s (4 of 6 calls failed)"] == seen


async def test_a_failing_listener_does_not_break_the_breaker() -> None:
    """A listener that raises is logged; the transition and the other listeners still happen."""
    breaker = make(FakeClock(), failure_threshold=1)
    seen: list[str] = []

    def broken(name: str, old: CircuitState, new: CircuitState, reason: str) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(lambda name, old, new, reason: seen.append(new))
    await breaker.call(answer(DOWN))
    assert CircuitState.OPEN == breaker.state
    assert ["open"] == seen


async def test_snapshot_describes_the_circuit() -> None:
    """The snapshot carries state, since, reason, retry_after and counters for /status."""
    clock = FakeClock(wall=1_800_000_000.0)
    breaker = await tripped(clock)
    clock.advance(2.5)
    assert {
        "name": "upstream",
        "state": "open",
        "since": "2027-01-15T08:00:00.000Z",
        "reason": "after 3 consecutive failures (last: http_5xx)",
        "retry_after": 7.5,
        "consecutive_failures": 3,
        "window_calls": 3,
        "window_failure_rate": 1.0,
        "trials_in_flight": 0,
    } == breaker.snapshot()


async def test_upstream_scope_shares_one_breaker() -> None:
    """With scope upstream, every operation gets the same breaker, which exists from the start."""
    registry = BreakerRegistry(BreakerConfig(), FakeClock())
    assert ["upstream"] == [breaker.name for breaker in registry.all()]
    assert registry.for_operation("issue") is registry.for_operation("query")


async def test_operation_scope_isolates_operations() -> None:
    """With scope operation, failures of one operation leave the others' circuits closed."""
    registry = BreakerRegistry(BreakerConfig(scope="operation", failure_threshold=2), FakeClock())
    issue = registry.for_operation("issue")
    await trip(issue, 2)
    query = registry.for_operation("query")
    assert (CircuitState.OPEN, CircuitState.CLOSED) == (issue.state, query.state)
    assert OK == await query.call(answer(OK))
    assert ["issue", "query"] == [breaker.name for breaker in registry.all()]


async def test_registry_listeners_and_forces_reach_later_breakers() -> None:
    """Listeners and an operator's force apply to breakers created afterwards too."""
    registry = BreakerRegistry(BreakerConfig(scope="operation"), FakeClock())
    seen: list[tuple[str, str]] = []
    registry.add_listener(lambda name, old, new, reason: seen.append((name, new)))
    registry.force_open("maintenance")
    breaker = registry.for_operation("issue")
    assert CircuitState.FORCED_OPEN == breaker.state
    registry.reset()
    assert CircuitState.CLOSED == breaker.state
    assert CircuitState.CLOSED == registry.for_operation("query").state
    assert [("issue", "forced_open"), ("issue", "closed")] == seen
