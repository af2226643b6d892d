"""Circuit breaking: stop sending to an upstream that is failing, and find out when it is back.

    closed ──(N consecutive failures, or failure rate over the window)──► open
    open ──(reset_timeout on the injected clock)──► half_open: at most `half_open_max_calls`
        trials in flight; `success_threshold` successes ──► closed; one failure ──► open
    health probe: down ──► open (from closed / half_open); up ──► closed (from open / half_open)
    operator: forced_open / forced_closed hold until `reset()`; the probe never overrides them

pybreaker keeps the state machine, the consecutive-failure counter and the trial successes.
This module adds what it lacks: asyncio, a cap on concurrent trials, a failure-rate window,
slow calls as failures, forced states, probe input, and transition listeners with reasons.

Only failures that say something about the platform trip it (`FailureClass.trips_breaker`):
a permanent business error, a duplicate, a 4xx, a rejected token or a quota count as successes.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

import pybreaker
import structlog

from gateway.clock import Clock, iso_utc
from gateway.config import BreakerConfig
from gateway.errors import CircuitOpen
from gateway.resilience.failures import Verdict

log = structlog.get_logger("gateway.resilience.breaker")

#: The breaker's name when one breaker guards the whole upstream (`scope: upstream`).
UPSTREAM = "upstream"

#: `retry_after` while every trial slot is taken: the trials' outcome is due about then.
_TRIALS_BUSY_RETRY_AFTER = 1.0


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"


_FROM_PYBREAKER = {
    pybreaker.STATE_CLOSED: CircuitState.CLOSED,
    pybreaker.STATE_OPEN: CircuitState.OPEN,
    pybreaker.STATE_HALF_OPEN: CircuitState.HALF_OPEN,
}


class TransitionListener(Protocol):
    """Told of every state change of a breaker (metrics, audit); must not raise."""

    def __call__(
        self, breaker: str, old: CircuitState, new: CircuitState, reason: str, /
    ) -> None: ...


class _MonotonicStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage, with the open period measured on the injected clock.

    pybreaker decides "reset timeout elapsed" as `datetime.now(UTC) < opened_at + timeout`,
    which follows the wall clock (an NTP step would shorten or stretch the open period) and
    cannot be driven by a test. So `opened_at` records `clock.monotonic()` and reads back as
    "now minus the monotonic time elapsed since", which makes pybreaker's own comparison come
    out exactly as `elapsed < reset_timeout` on the injected clock.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.opened_monotonic: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        if self.opened_monotonic is None:
            return None
        elapsed = self._clock.monotonic() - self.opened_monotonic
        return datetime.now(UTC) - timedelta(seconds=elapsed)

    @opened_at.setter
    def opened_at(self, _wall: datetime) -> None:
        self.opened_monotonic = self._clock.monotonic()


class _StateChanges(pybreaker.CircuitBreakerListener):
    """Forwards pybreaker's own transitions (trip, trial outcome) to the owning breaker."""

    def __init__(self, owner: CircuitBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if old_state is not None:
            self._owner._pybreaker_changed(old_state.name, new_state.name)


class _CountedFailure(Exception):
    """Raised inside pybreaker's `calling()` block so that it records a failure."""


class CircuitBreaker:
    """One circuit: admits or refuses calls, and learns from their verdicts."""

    def __init__(self, name: str, config: BreakerConfig, clock: Clock) -> None:
        self.name = name
        self._config = config
        self._clock = clock
        self._storage = _MonotonicStorage(clock)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold,
            reset_timeout=config.reset_timeout,
            success_threshold=config.success_threshold,
            state_storage=self._storage,
            listeners=[_StateChanges(self)],
            name=name,
            throw_new_error_on_trip=False,
        )
        # pybreaker's state as of its last transition; read from its storage instead, it would
        # still show the old state while listeners are told of the new one.
        self._base = CircuitState.CLOSED
        self._forced: CircuitState | None = None
        self._listeners: list[TransitionListener] = []
        # Bumped on every transition: an outcome from an earlier state is not recorded.
        self._epoch = 0
        self._trials = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._window_failures = 0
        self._since = clock.wall()
        self._reason = "initial state"
        # Set while this module drives a pybreaker transition: its reason, or silence.
        self._pending_reason: str | None = None
        self._quiet = False
        self._last_detail = ""

    # -- what callers use ---------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        return self._forced if self._forced is not None else self._base

    async def call(self, attempt: Callable[[], Awaitable[Verdict]]) -> Verdict:
        """Run `attempt` if the circuit allows it, and learn from its verdict.

        Raises `CircuitOpen` at once, without running `attempt`, while the circuit is open,
        forced open, or half-open with every trial slot taken. The verdict is returned as is,
        also when it counted as a failure (a tripping failure class, or a slow success).
        An exception from `attempt` propagates; a cancellation is not counted at all.
        """
        trial = self._admit()
        epoch = self._epoch
        started = self._clock.monotonic()
        try:
            verdict = await attempt()
        except Exception as exc:
            self._release(trial, epoch)
            self._record(epoch, failed=True, detail=f"the call raised {type(exc).__name__}")
            raise
        except BaseException:
            # Cancelled (client gone, deadline, shutdown): says nothing about the platform.
            self._release(trial, epoch)
            raise
        self._release(trial, epoch)
        failed, detail = self._judge(verdict, self._clock.monotonic() - started)
        self._record(epoch, failed=failed, detail=detail)
        return verdict

    def retry_after(self) -> float:
        """Seconds until the circuit lets a call through (0 when it does now)."""
        state = self.state
        if state is CircuitState.FORCED_OPEN:
            return self._config.reset_timeout  # a hint: an operator decides when it closes
        if state is CircuitState.OPEN:
            opened = self._storage.opened_monotonic
            if opened is None:
                return 0.0
            return max(0.0, opened + self._config.reset_timeout - self._clock.monotonic())
        if state is CircuitState.HALF_OPEN and self._trials >= self._config.half_open_max_calls:
            return _TRIALS_BUSY_RETRY_AFTER
        return 0.0

    def snapshot(self) -> dict[str, object]:
        """The breaker's state for `/status` and the admin API."""
        state = self.state
        self._prune_window()
        calls = len(self._window)
        return {
            "name": self.name,
            "state": state.value,
            "since": iso_utc(self._since),
            "reason": self._reason,
            "retry_after": round(self.retry_after(), 3),
            "consecutive_failures": self._cb.fail_counter,
            "window_calls": calls,
            "window_failure_rate": round(self._window_failures / calls, 3) if calls else None,
            "trials_in_flight": self._trials if state is CircuitState.HALF_OPEN else 0,
        }

    def add_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    # -- manual control and the health probe ---------------------------------------------------

    def force_open(self, reason: str) -> None:
        """Refuse every call until `reset()`; the reset timeout and the probe do not end it."""
        self._force(CircuitState.FORCED_OPEN, f"by operator: {reason}")

    def force_close(self, reason: str) -> None:
        """Let every call through, counting nothing, until `reset()`."""
        self._force(CircuitState.FORCED_CLOSED, f"by operator: {reason}")

    def reset(self, reason: str = "by operator reset") -> None:
        """Back to normal and closed, with the failure counter and the window cleared."""
        old = self.state
        self._forced = None
        self._quiet = True
        try:
            self._cb.close()
        finally:
            self._quiet = False
        self._storage.reset_counter()
        self._storage.reset_success_counter()
        self._clear_window()
        self._transition(old, CircuitState.CLOSED, reason)

    def record_probe(self, ok: bool) -> None:
        """The health probe's debounced verdict: up closes the circuit, down opens it.

        Forced states are the operator's decision and are left alone.
        """
        if self._forced is not None:
            return
        state = self.state
        if ok and state in (CircuitState.OPEN, CircuitState.HALF_OPEN):
            self._drive(self._cb.close, "by health probe")
        elif not ok and state in (CircuitState.CLOSED, CircuitState.HALF_OPEN):
            self._drive(self._cb.open, "by health probe")

    # -- admission and recording ----------------------------------------------------------------

    def _admit(self) -> bool:
        """Admit a call or raise `CircuitOpen`; True when it is a half-open trial."""
        state = self.state
        if state in (CircuitState.CLOSED, CircuitState.FORCED_CLOSED):
            return False
        if state is CircuitState.FORCED_OPEN:
            raise CircuitOpen(
                f"circuit {self.name!r} was forced open {self._reason}; calls are refused "
                "until an operator closes or resets it",
                retry_after=self.retry_after(),
                breaker=self.name,
            )
        if state is CircuitState.OPEN:
            wait = self.retry_after()
            if wait > 0:
                raise CircuitOpen(
                    f"circuit {self.name!r} is open (opened {self._reason}); the upstream is "
                    f"not called for another {wait:.1f} s",
                    retry_after=wait,
                    breaker=self.name,
                )
            self._drive(
                self._cb.half_open, f"after the {self._config.reset_timeout:g} s reset timeout"
            )
        if self._trials >= self._config.half_open_max_calls:
            raise CircuitOpen(
                f"circuit {self.name!r} is half-open and its {self._trials} trial "
                f"call{'s' if self._trials != 1 else ''} to the upstream are still in flight",
                retry_after=self.retry_after(),
                breaker=self.name,
            )
        self._trials += 1
        return True

    def _release(self, trial: bool, epoch: int) -> None:
        if trial and epoch == self._epoch:
            self._trials -= 1

    def _judge(self, verdict: Verdict, elapsed: float) -> tuple[bool, str]:
        """Whether the verdict counts as a failure for the breaker, and why (for the logs)."""
        if verdict.failure is not None:
            return verdict.failure.trips_breaker, verdict.failure.value
        if elapsed > self._config.slow_call:
            return True, f"slow call: {elapsed:.1f} s, over the {self._config.slow_call:g} s limit"
        return False, "success"

    def _record(self, epoch: int, *, failed: bool, detail: str) -> None:
        if epoch != self._epoch or self._forced is not None:
            # The circuit changed state while this call was in flight (or an operator holds
            # it): the outcome describes a state that is gone, so it must not move this one.
            return
        closed = self.state is CircuitState.CLOSED
        if closed:
            self._add_to_window(failed)
        self._last_detail = detail
        with contextlib.suppress(_CountedFailure), self._cb.calling():
            if failed:
                raise _CountedFailure(detail)
        if closed and epoch == self._epoch:
            self._check_failure_rate()

    def _add_to_window(self, failed: bool) -> None:
        self._window.append((self._clock.monotonic(), failed))
        self._window_failures += failed
        self._prune_window()

    def _prune_window(self) -> None:
        horizon = self._clock.monotonic() - self._config.window
        while self._window and self._window[0][0] <= horizon:
            _, failed = self._window.popleft()
            self._window_failures -= failed

    def _clear_window(self) -> None:
        self._window.clear()
        self._window_failures = 0

    def _check_failure_rate(self) -> None:
        calls = len(self._window)
        if calls < self._config.min_calls:
            return
        rate = self._window_failures / calls
        if rate >= self._config.failure_rate:
            self._drive(
                self._cb.open,
                f"after failure rate {round(rate * 100)} % over {self._config.window:g} s "
                f"({self._window_failures} of {calls} calls failed)",
            )

    # -- transitions ----------------------------------------------------------------------------

    def _force(self, state: CircuitState, reason: str) -> None:
        old = self.state
        self._forced = state
        self._transition(old, state, reason)

    def _drive(self, action: Callable[[], object], reason: str) -> None:
        """Run a pybreaker transition, giving the reason its listener callback will report."""
        self._pending_reason = reason
        try:
            action()
        finally:
            self._pending_reason = None

    def _pybreaker_changed(self, old_name: str, new_name: str) -> None:
        old, new = _FROM_PYBREAKER[old_name], _FROM_PYBREAKER[new_name]
        self._base = new
        if self._quiet or self._forced is not None:
            return
        reason = self._pending_reason or self._reason_for(old, new)
        self._transition(old, new, reason)

    def _reason_for(self, old: CircuitState, new: CircuitState) -> str:
        """Why pybreaker moved on its own: a trip, or a trial's outcome."""
        if new is CircuitState.OPEN and old is CircuitState.HALF_OPEN:
            return f"after a failed trial call ({self._last_detail})"
        if new is CircuitState.OPEN:
            return f"after {self._cb.fail_counter} consecutive failures (last: {self._last_detail})"
        if new is CircuitState.CLOSED:
            count = self._config.success_threshold
            return f"after {count} successful trial call{'s' if count != 1 else ''}"
        return f"pybreaker moved from {old} to {new}"

    def _transition(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        if old is new:
            return
        self._epoch += 1
        self._since = self._clock.wall()
        self._reason = reason
        if new is CircuitState.HALF_OPEN:
            self._trials = 0
        if new is CircuitState.CLOSED:
            # Outcomes from before the outage must not re-trip a circuit that just recovered.
            self._clear_window()
        self._log_transition(old, new, reason)
        for listener in list(self._listeners):
            try:
                listener(self.name, old, new, reason)
            except Exception:
                log.exception("circuit listener failed", breaker=self.name, listener=listener)

    def _log_transition(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        fields = {"breaker": self.name, "old_state": str(old), "new_state": str(new)}
        if new is CircuitState.OPEN:
            log.warning(f"circuit opened {reason}", retry_after=self.retry_after(), **fields)
        elif new is CircuitState.HALF_OPEN:
            trials = self._config.half_open_max_calls
            log.info(
                f"circuit half-open: letting {trials} trial call{'s' if trials != 1 else ''} "
                "through",
                reason=reason,
                **fields,
            )
        elif new is CircuitState.CLOSED:
            log.info(f"circuit closed {reason}", **fields)
        elif new is CircuitState.FORCED_OPEN:
            log.warning(f"circuit forced open {reason}", **fields)
        else:
            log.warning(f"circuit forced closed {reason}; failures are not counted", **fields)


class BreakerRegistry:
    """The breakers of one endpoint: one for the upstream, or one per operation.

    `prefix` goes before each breaker's name (`backup:` for the backup endpoint's own
    registry), so logs and metrics never mix its breakers with the primary's."""

    def __init__(self, config: BreakerConfig, clock: Clock, *, prefix: str = "") -> None:
        self._config = config
        self._clock = clock
        self._prefix = prefix
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[TransitionListener] = []
        # An operator's force over all breakers also holds for breakers created later.
        self._forced: tuple[CircuitState, str] | None = None
        if config.scope == "upstream":
            self._create(UPSTREAM)

    def for_operation(self, operation: str) -> CircuitBreaker:
        """The breaker guarding `operation` (the shared one when `scope` is `upstream`)."""
        name = self._key(operation)
        breaker = self._breakers.get(name)
        return breaker if breaker is not None else self._create(name)

    def state_of(self, operation: str) -> CircuitState:
        """The state of the breaker guarding `operation`, without creating it (closed when no
        call of it was made yet)."""
        breaker = self._breakers.get(self._key(operation))
        return CircuitState.CLOSED if breaker is None else breaker.state

    def _key(self, operation: str) -> str:
        return UPSTREAM if self._config.scope == "upstream" else operation

    def get(self, name: str) -> CircuitBreaker | None:
        """The breaker called `name` (without the registry's prefix), if it exists yet."""
        return self._breakers.get(name)

    def all(self) -> list[CircuitBreaker]:
        return list(self._breakers.values())

    def add_listener(self, listener: TransitionListener) -> None:
        """Listen to every breaker, including those created later."""
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def force_open(self, reason: str) -> None:
        self._forced = (CircuitState.FORCED_OPEN, reason)
        for breaker in self._breakers.values():
            breaker.force_open(reason)

    def force_close(self, reason: str) -> None:
        self._forced = (CircuitState.FORCED_CLOSED, reason)
        for breaker in self._breakers.values():
            breaker.force_close(reason)

    def reset(self, reason: str = "by operator reset") -> None:
        self._forced = None
        for breaker in self._breakers.values():
            breaker.reset(reason)

    def record_probe(self, ok: bool) -> None:
        """Pass the health probe's debounced verdict to every breaker."""
        for breaker in self._breakers.values():
            breaker.record_probe(ok)

    def snapshot(self) -> list[dict[str, object]]:
        return [breaker.snapshot() for breaker in self._breakers.values()]

    def _create(self, name: str) -> CircuitBreaker:
        breaker = CircuitBreaker(self._prefix + name, self._config, self._clock)
        for listener in self._listeners:
            breaker.add_listener(listener)
        if self._forced is not None:
            state, reason = self._forced
            if state is CircuitState.FORCED_OPEN:
                breaker.force_open(reason)
            else:
                breaker.force_close(reason)
        self._breakers[name] = breaker
        return breaker
