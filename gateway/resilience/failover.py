"""The backup endpoint (`upstream.backup_url`): which address of the platform an attempt goes to
(docs/configuration.md#backup-endpoint).

    operation may fail over?  reads: yes; submissions: only with `failover: submissions`;
                              passthrough (unknown requests): never
        no  → primary, as without a backup
        yes → the health probe says the primary is down → backup
              else primary, through its circuit; the circuit refused the call, or the attempt
              provably never left (refused, connect timeout) → the same call at the backup at
              once, through the backup's own circuit

The backup has breakers of its own (a separate `BreakerRegistry`, names prefixed `backup:`):
its failures never open the primary's circuits, nor the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from gateway.operations import Operation, OperationKind
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.failures import FailureClass
from gateway.resilience.probe import HealthStatus, UpstreamHealth
from gateway.upstream.client import Upstream


class Endpoint(StrEnum):
    """Which address of the platform answered (metrics label, `X-Gateway-Upstream`)."""

    PRIMARY = "primary"
    BACKUP = "backup"


#: A primary attempt ending so provably never reached it: the same call goes to the backup.
FAIL_OVER_ON = frozenset(
    {FailureClass.REFUSED, FailureClass.CONNECT_TIMEOUT, FailureClass.CIRCUIT_OPEN}
)
#: Primary circuit states in which reads are sent to the backup without trying the primary.
_REFUSING = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN})


class Failover:
    """The backup endpoint and the rule for what may be sent to it."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        breakers: BreakerRegistry,
        primary: BreakerRegistry,
        health: UpstreamHealth | None = None,
        reads: Iterable[str] = (),
        submissions: Iterable[str] = (),
    ) -> None:
        """`upstream` sends to the backup (signed by the same auth as the primary);
        `breakers` are its own; `primary` and `health` are the primary's, read to decide;
        `reads` names the read operations (for `serving_reads`), `submissions` the submit
        operations configured `failover: submissions`."""
        self.upstream = upstream
        self.breakers = breakers
        self._primary = primary
        self._health = health
        self._reads = tuple(reads)
        self._submissions = frozenset(submissions)

    def covers(self, operation: Operation) -> bool:
        """Whether `operation` may be sent to the backup at all."""
        if operation.kind is OperationKind.READ:
            return True
        return operation.kind is OperationKind.SUBMIT and operation.name in self._submissions

    def primary_down(self) -> bool:
        """The health probe says the primary is down: the primary is not tried at all."""
        return self._health is not None and self._health.status is HealthStatus.DOWN

    def serving(self, operation: str) -> Endpoint:
        """Where calls of `operation` (one it `covers`) go now: the backup while the probe says
        the primary is down or the primary's circuit for it is open."""
        if self.primary_down() or self._primary.state_of(operation) in _REFUSING:
            return Endpoint.BACKUP
        return Endpoint.PRIMARY

    def serving_reads(self) -> Endpoint:
        """The backup while reads of any read operation are routed to it, else the primary."""
        if any(self.serving(name) is Endpoint.BACKUP for name in self._reads):
            return Endpoint.BACKUP
        return Endpoint.PRIMARY
