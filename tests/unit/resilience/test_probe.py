"""The active health probe: shows upstream health and opens or closes circuits without traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from gateway.config import BreakerConfig, ProbeConfig
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.failures import FailureClass, Verdict
from gateway.resilience.probe import HealthProbe, HealthStatus, UpstreamHealth
from tests.support.fakes import FakeClock

#: A bound on waiting for the probe loop (a fake clock: it never sleeps for real), generous
#: for a loaded machine whose probes log an exception traceback each.
WAIT_S = 10.0

OK = Verdict(None)
DOWN = Verdict(FailureClass.CONNECTION_LOST)


class ScriptedSend:
    """Answers probes from a script (a Verdict, or an exception to raise); then repeats `then`."""

    def __init__(
        self,
        script: Iterable[Verdict | Exception],
        *,
        then: Verdict = OK,
        clock: FakeClock | None = None,
        takes: float = 0.0,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.clock = clock
        self.takes = takes
        self.calls = 0
        self.reached: dict[int, asyncio.Event] = {}

    def when_called(self, times: int) -> asyncio.Event:
        return self.reached.setdefault(times, asyncio.Event())

    async def __call__(self) -> Verdict:
        self.calls += 1
        if self.calls in self.reached:
            self.reached[self.calls].set()
        if self.clock is not None:
            self.clock.advance(self.takes)
        step = self.script.pop(0) if self.script else self.then
        if isinstance(step, Exception):
            raise step
        return step


def make(
    send: ScriptedSend, clock: FakeClock, **settings: Any
) -> tuple[HealthProbe, BreakerRegistry]:
    config = ProbeConfig(
        operation="nuonuo.OpeMplatform.queryInvoiceResult",
        **{"interval": 10.0, "healthy_threshold": 2, "unhealthy_threshold": 3, **settings},
    )
    registry = BreakerRegistry(BreakerConfig(failure_threshold=2, reset_timeout=15.0), clock)
    return HealthProbe(config, send, registry, UpstreamHealth(clock), clock), registry


async def test_probe_failures_open_the_breaker_after_unhealthy_threshold() -> None:
    """Two failed probes change nothing; the third marks the upstream down and opens the circuit."""
    clock = FakeClock()
    probe, registry = make(ScriptedSend([DOWN, DOWN, DOWN]), clock)
    breaker = registry.for_operation("any")
    seen: list[tuple[str, str]] = []
    registry.add_listener(lambda name, old, new, reason: seen.append((new, reason)))
    assert [False, False] == [await probe.probe_once() for _ in range(2)]
    assert (HealthStatus.UNKNOWN, CircuitState.CLOSED) == (probe.health.status, breaker.state)
    await probe.probe_once()
    assert (HealthStatus.DOWN, CircuitState.OPEN) == (probe.health.status, breaker.state)
    assert [("open", "by health probe")] == seen


async def test_probe_successes_close_the_breaker_without_live_traffic() -> None:
    """An open circuit closes after `healthy_threshold` good probes, before its reset timeout."""
    clock = FakeClock()
    probe, registry = make(ScriptedSend([OK, OK]), clock)
    breaker = registry.for_operation("any")
    for _ in range(2):
        await breaker.call(_answer(DOWN))
    assert CircuitState.OPEN == breaker.state
    await probe.probe_once()
    assert CircuitState.OPEN == breaker.state
    await probe.probe_once()
    assert (HealthStatus.UP, CircuitState.CLOSED) == (probe.health.status, breaker.state)
    assert "by health probe" == breaker.snapshot()["reason"]
    assert 0.0 == breaker.retry_after()


async def test_recovery_after_a_probe_detected_outage() -> None:
    """Down, then up: the probe opens the circuit and later closes it, all without traffic."""
    clock = FakeClock()
    probe, registry = make(ScriptedSend([DOWN, DOWN, DOWN, OK, OK]), clock)
    breaker = registry.for_operation("any")
    states = []
    for _ in range(5):
        await probe.probe_once()
        states.append(breaker.state)
    assert ["closed", "closed", "open", "open", "closed"] == states


async def test_only_changes_of_health_reach_the_breakers() -> None:
    """While health stays up, a circuit tripped by traffic is left to its own trial calls."""
    clock = FakeClock()
    probe, registry = make(ScriptedSend([]), clock)
    breaker = registry.for_operation("any")
    for _ in range(2):
        await probe.probe_once()
    for _ in range(2):
        await breaker.call(_answer(DOWN))
    for _ in range(3):
        await probe.probe_once()
    assert (HealthStatus.UP, CircuitState.OPEN) == (probe.health.status, breaker.state)


@pytest.mark.parametrize("failure", [FailureClass.PERMANENT, FailureClass.AUTH])
async def test_answers_about_the_probe_request_count_as_healthy(failure: FailureClass) -> None:
    """A probe answered with a business verdict shows the platform is up."""
    clock = FakeClock()
    probe, _ = make(ScriptedSend([], then=Verdict(failure)), clock)
    assert [True, True] == [await probe.probe_once() for _ in range(2)]
    assert HealthStatus.UP == probe.health.status
    assert failure == probe.health.last_failure


async def test_forced_states_are_not_overridden_by_the_probe() -> None:
    """Neither a healthy nor an unhealthy probe moves a breaker an operator has forced."""
    clock = FakeClock()
    probe, registry = make(ScriptedSend([OK, OK, DOWN, DOWN, DOWN]), clock)
    breaker = registry.for_operation("any")
    registry.force_open("maintenance")
    for _ in range(2):
        await probe.probe_once()
    assert (HealthStatus.UP, CircuitState.FORCED_OPEN) == (probe.health.status, breaker.state)
    registry.force_close("the probe is wrong")
    for _ in range(3):
        await probe.probe_once()
    assert (HealthStatus.DOWN, CircuitState.FORCED_CLOSED) == (probe.health.status, breaker.state)


async def test_health_snapshot_reports_the_last_probe() -> None:
    """The snapshot shows status, since when, streaks, and the last probe's latency and failure."""
    clock = FakeClock(wall=1_800_000_000.0)
    probe, _ = make(ScriptedSend([DOWN, DOWN, DOWN], clock=clock, takes=0.25), clock)
    for _ in range(3):
        await probe.probe_once()
    assert {
        "status": "down",
        "since": "2027-01-15T08:00:00.750Z",
        "consecutive_successes": 0,
        "consecutive_failures": 3,
        "probes": 3,
        "last_probe_at": "2027-01-15T08:00:00.750Z",
        "last_latency": 0.25,
        "last_failure": "connection_lost",
    } == probe.health.snapshot()


async def test_a_probe_that_raises_counts_as_a_failure_and_the_loop_survives() -> None:
    """Exceptions from `send` are failed probes; the loop keeps probing, interval apart."""
    clock = FakeClock()
    send = ScriptedSend([RuntimeError("boom")] * 3, then=OK)
    probe, registry = make(send, clock)
    breaker = registry.for_operation("any")
    seen: list[tuple[str, str]] = []
    registry.add_listener(lambda name, old, new, reason: seen.append((new, reason)))
    probe.start()
    await asyncio.wait_for(send.when_called(5).wait(), WAIT_S)
    await probe.stop()
    assert [("open", "by health probe"), ("closed", "by health probe")] == seen
    assert (HealthStatus.UP, CircuitState.CLOSED) == (probe.health.status, breaker.state)
    assert [10.0] * 4 == clock.sleeps[:4]


async def test_stop_ends_the_task() -> None:
    """`stop` cancels the probing task and waits for it; `start` again resumes probing."""
    clock = FakeClock()
    send = ScriptedSend([])
    probe, _ = make(send, clock)
    probe.start()
    probe.start()
    await asyncio.wait_for(send.when_called(2).wait(), WAIT_S)
    await probe.stop()
    assert not probe.running
    calls = send.calls
    await asyncio.sleep(0)
    assert calls == send.calls
    await probe.stop()
    probe.start()
    assert probe.running
    await probe.stop()


def _answer(verdict: Verdict) -> Callable[[], Awaitable[Verdict]]:
    async def attempt() -> Verdict:
        return verdict

    return attempt
