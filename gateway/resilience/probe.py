"""Active health probing: one configured operation sent to the upstream every `interval`.

It shows the upstream's health on `/status` and in metrics while no traffic flows, and lets
an open circuit close without betting live traffic on a trial call:

    probe → healthy? (success, or an answer about the request rather than the platform)
    healthy_threshold healthy probes in a row     → health up,   every breaker told "up"
    unhealthy_threshold failed probes in a row    → health down, every breaker told "down"

Only a change of the debounced health reaches the breakers. A breaker that live traffic
trips while the probe stays healthy recovers through its own trial calls, so a healthy probe
cannot keep re-closing it; and a probe that fails for its own reasons (a misconfigured
operation) opens the circuits once, not every interval.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum

import structlog

from gateway.clock import Clock, Periodic, iso_utc
from gateway.config import ProbeConfig
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.failures import Verdict

log = structlog.get_logger("gateway.resilience.probe")

#: `last_failure` when the probe itself raised instead of returning a verdict.
PROBE_ERROR = "probe_error"


class HealthStatus(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class UpstreamHealth:
    """What the health probe has seen of the upstream, for `/status` and metrics."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.status = HealthStatus.UNKNOWN
        #: Wall time (Unix seconds) of the last status change.
        self.since = clock.wall()
        self.consecutive_successes = 0
        self.consecutive_failures = 0
        self.probes = 0
        self.last_probe_at: float | None = None
        self.last_latency: float | None = None
        #: The last probe's failure class (None on success, `probe_error` when it raised).
        self.last_failure: str | None = None

    def observe(self, healthy: bool, latency: float, failure: str | None) -> None:
        """Count one probe's outcome."""
        self.probes += 1
        self.last_probe_at = self._clock.wall()
        self.last_latency = latency
        self.last_failure = failure
        if healthy:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
            self.consecutive_successes = 0

    def mark(self, status: HealthStatus) -> bool:
        """Set the debounced status; True when it changed."""
        if status is self.status:
            return False
        self.status = status
        self.since = self._clock.wall()
        return True

    def snapshot(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "since": iso_utc(self.since),
            "consecutive_successes": self.consecutive_successes,
            "consecutive_failures": self.consecutive_failures,
            "probes": self.probes,
            "last_probe_at": iso_utc(self.last_probe_at)
            if self.last_probe_at is not None
            else None,
            "last_latency": round(self.last_latency, 4) if self.last_latency is not None else None,
            "last_failure": self.last_failure,
        }


class HealthProbe:
    """Sends `send()` every `config.interval` and reports the debounced health.

    `send` builds, signs and sends the probe operation straight to the upstream, bypassing the
    breakers and the retries, within `config.timeout`.
    """

    def __init__(
        self,
        config: ProbeConfig,
        send: Callable[[], Awaitable[Verdict]],
        registry: BreakerRegistry,
        health: UpstreamHealth,
        clock: Clock,
    ) -> None:
        self._config = config
        self._send = send
        self._registry = registry
        self.health = health
        self._clock = clock
        self._periodic = Periodic(
            "health-probe",
            self.probe_once,
            interval=config.interval,
            clock=clock,
            failure="health probe round failed",
        )

    @property
    def running(self) -> bool:
        return self._periodic.running

    def start(self) -> None:
        """Start probing in a background task (no-op when already running)."""
        self._periodic.start()

    async def stop(self) -> None:
        """Stop probing and wait for the task to end."""
        await self._periodic.stop()

    async def probe_once(self) -> bool:
        """Send one probe, record it, and update health and breakers; True when healthy."""
        started = self._clock.monotonic()
        failure: str | None
        try:
            verdict = await self._send()
        except Exception:
            log.warning(
                "health probe raised; counted as a failed probe",
                operation=self._config.operation,
                exc_info=True,
            )
            healthy, failure = False, PROBE_ERROR
        else:
            failure = verdict.failure.value if verdict.failure is not None else None
            healthy = verdict.failure is None or not verdict.failure.trips_breaker
        self.health.observe(healthy, self._clock.monotonic() - started, failure)
        self._conclude()
        return healthy

    def _conclude(self) -> None:
        health, config = self.health, self._config
        if health.consecutive_successes >= config.healthy_threshold:
            if health.mark(HealthStatus.UP):
                log.info(
                    f"upstream is up: {health.consecutive_successes} health probes in a row "
                    "succeeded",
                    operation=config.operation,
                )
                self._registry.record_probe(True)
        elif health.consecutive_failures >= config.unhealthy_threshold and health.mark(
            HealthStatus.DOWN
        ):
            log.warning(
                f"upstream is down: {health.consecutive_failures} health probes in a row failed "
                f"(last: {health.last_failure})",
                operation=config.operation,
            )
            self._registry.record_probe(False)
