"""The backup endpoint: which endpoint each attempt goes to, on fake transports and a fake
clock (docs/configuration.md#backup-endpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import BreakerConfig
from gateway.errors import UpstreamTimeout, UpstreamUnreachable
from gateway.operations import Operation, OperationKind
from gateway.outbox.reconcile import LookupStatus, Reconciler
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.failover import Endpoint, Failover
from gateway.resilience.failures import FailureClass
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.probe import HealthStatus, UpstreamHealth
from tests.support.fakes import FakeClock, ScriptedUpstream, platform_answer
from tests.unit.outbox.test_reconcile import ISSUE, QUERY, submission
from tests.unit.resilience.test_resilience import OK, READ, SUBMIT, make, request

REFUSED = UpstreamUnreachable("connection refused")
PASSTHROUGH = Operation("unmatched", OperationKind.PASSTHROUGH)
#: Opens after three failures in a row.
TRIPPING = BreakerConfig(failure_threshold=3, min_calls=10**6, reset_timeout=15.0)


@dataclass
class Rig:
    pipeline: ResiliencePipeline
    primary: ScriptedUpstream
    backup: ScriptedUpstream
    failover: Failover
    health: UpstreamHealth
    clock: FakeClock


def with_backup(
    primary: list[Any],
    backup: list[Any],
    *,
    submissions: tuple[str, ...] = (),
    breaker: BreakerConfig | None = None,
    attempts: int = 4,
) -> Rig:
    """A pipeline on a primary answering from `primary`, with a backup answering from
    `backup`; the breakers never open unless `breaker` says so."""
    breaker = breaker or BreakerConfig(failure_threshold=1000, min_calls=10**6)
    pipeline, primary_upstream, clock = make(primary, breaker=breaker, attempts=attempts)
    backup_upstream = ScriptedUpstream(clock, backup)
    health = UpstreamHealth(clock)
    failover = Failover(
        upstream=backup_upstream,
        breakers=BreakerRegistry(breaker, clock, prefix="backup:"),
        primary=pipeline.breakers,
        health=health,
        reads=[READ.name],
        submissions=submissions,
    )
    pipeline.failover = failover
    return Rig(pipeline, primary_upstream, backup_upstream, failover, health, clock)


async def test_a_read_refused_by_the_primary_is_sent_to_the_backup_at_once() -> None:
    """The primary refused the connection (provably never sent): the same attempt goes to the
    backup, without a back-off sleep, and the outcome says the backup answered."""
    rig = with_backup([REFUSED], [OK])
    outcome = await rig.pipeline.execute(request(), READ)
    assert outcome.ok
    assert Endpoint.BACKUP is outcome.endpoint
    assert (1, 1, 1) == (outcome.attempts, len(rig.primary.calls), len(rig.backup.calls))
    assert [] == rig.clock.sleeps


async def test_a_connect_timeout_fails_over_but_a_lost_answer_does_not() -> None:
    """A connect timeout never left either; a read timeout may have reached the primary, so it
    is retried there as before (the backup is not asked)."""
    rig = with_backup([UpstreamTimeout("connect", sent=False)], [OK])
    assert Endpoint.BACKUP is (await rig.pipeline.execute(request(), READ)).endpoint
    rig = with_backup([UpstreamTimeout("read", sent=True), OK], [OK])
    outcome = await rig.pipeline.execute(request(), READ)
    assert (True, Endpoint.PRIMARY) == (outcome.ok, outcome.endpoint)
    assert (2, 0) == (len(rig.primary.calls), len(rig.backup.calls))


async def test_submissions_never_fail_over_unless_configured() -> None:
    """A submission refused by the primary is retried at the primary only; with
    `failover: submissions` for its operation it goes to the backup like a read."""
    rig = with_backup([REFUSED], [OK], attempts=3)
    outcome = await rig.pipeline.execute(request(), SUBMIT)
    assert FailureClass.REFUSED is outcome.verdict.failure
    assert Endpoint.PRIMARY is outcome.endpoint
    assert (3, 0) == (len(rig.primary.calls), len(rig.backup.calls))

    rig = with_backup([REFUSED], [OK], submissions=(SUBMIT.name,))
    outcome = await rig.pipeline.execute(request(), SUBMIT)
    assert (True, Endpoint.BACKUP) == (outcome.ok, outcome.endpoint)
    assert (1, 1) == (len(rig.primary.calls), len(rig.backup.calls))


async def test_passthroughs_never_fail_over() -> None:
    """An unknown request may be a write: it stays on the primary."""
    rig = with_backup([REFUSED], [OK], attempts=1)
    outcome = await rig.pipeline.execute(request(), PASSTHROUGH)
    assert (Endpoint.PRIMARY, 0) == (outcome.endpoint, len(rig.backup.calls))


async def test_an_open_primary_circuit_sends_reads_to_the_backup_without_trying_it() -> None:
    """Once the primary's circuit is open, reads go straight to the backup, whose own circuit
    stays closed: the two endpoints' breakers do not mix."""
    rig = with_backup([REFUSED], [OK], breaker=TRIPPING)
    for _ in range(3):
        assert Endpoint.BACKUP is (await rig.pipeline.execute(request(), READ)).endpoint
    assert CircuitState.OPEN is rig.pipeline.breakers.state_of(READ.name)
    assert Endpoint.BACKUP is rig.failover.serving_reads()
    tried = len(rig.primary.calls)
    outcome = await rig.pipeline.execute(request(), READ)
    assert (True, Endpoint.BACKUP) == (outcome.ok, outcome.endpoint)
    assert tried == len(rig.primary.calls)
    assert CircuitState.CLOSED is rig.failover.breakers.state_of(READ.name)
    assert ["backup:upstream"] == [breaker.name for breaker in rig.failover.breakers.all()]


async def test_reads_return_to_the_primary_once_its_trial_succeeds() -> None:
    """After the reset timeout a read is the primary's trial call; it passes, the circuit
    closes, and reads are the primary's again."""
    rig = with_backup([REFUSED] * 3 + [OK], [OK], breaker=TRIPPING)
    for _ in range(3):
        await rig.pipeline.execute(request(), READ)
    rig.clock.advance(TRIPPING.reset_timeout)
    outcome = await rig.pipeline.execute(request(), READ)
    assert (True, Endpoint.PRIMARY) == (outcome.ok, outcome.endpoint)
    assert Endpoint.PRIMARY is rig.failover.serving_reads()


async def test_the_backup_failing_does_not_open_the_primary_circuit() -> None:
    """Failures at the backup count against the backup's breaker only, and an open backup
    circuit leaves the primary serving."""
    down = platform_answer({"error": "x"}, status=503)
    rig = with_backup([UpstreamTimeout("read", sent=True), OK], [down], breaker=TRIPPING)
    rig.health.mark(HealthStatus.DOWN)
    for _ in range(3):
        await rig.pipeline.execute(request(), READ)
    assert CircuitState.OPEN is rig.failover.breakers.state_of(READ.name)
    assert CircuitState.CLOSED is rig.pipeline.breakers.state_of(READ.name)
    rig.health.mark(HealthStatus.UP)
    outcome = await rig.pipeline.execute(request(), READ)
    assert Endpoint.PRIMARY is outcome.endpoint


async def test_a_primary_the_probe_calls_down_is_not_tried() -> None:
    """While the health probe says the primary is down, reads go to the backup directly; once
    it says up, they go to the primary again."""
    rig = with_backup([OK], [OK])
    rig.health.mark(HealthStatus.DOWN)
    assert Endpoint.BACKUP is rig.failover.serving_reads()
    assert Endpoint.BACKUP is (await rig.pipeline.execute(request(), READ)).endpoint
    assert (0, 1) == (len(rig.primary.calls), len(rig.backup.calls))
    rig.health.mark(HealthStatus.UP)
    assert Endpoint.PRIMARY is rig.failover.serving_reads()
    assert Endpoint.PRIMARY is (await rig.pipeline.execute(request(), READ)).endpoint


async def test_without_a_backup_the_outcome_names_no_endpoint() -> None:
    """No backup endpoint: nothing changes, and the outcome names none."""
    pipeline, _, _ = make([OK])
    assert (await pipeline.execute(request(), READ)).endpoint is None


def _reconciler(pipeline: ResiliencePipeline, *, failover: str | None) -> Reconciler:
    issue = ISSUE.model_copy(update={"failover": failover})
    reconciler = Reconciler.for_operation(issue, {"query": QUERY}, pipeline=pipeline)
    assert reconciler is not None
    return reconciler


async def test_a_not_found_from_the_backup_is_no_proof_of_absence() -> None:
    """A reconciliation lookup the backup answered "not found" counts as a failed lookup (the
    backup may lag behind the primary), unless the submissions themselves may go to the backup
    (`failover: submissions`); "found" counts wherever it came from."""
    empty = platform_answer({"code": "E0000", "result": []})
    found = platform_answer({"code": "E0000", "result": [{"orderNo": "SO-1"}]})
    for answer, failover, status in (
        (empty, None, LookupStatus.FAILED),
        (empty, "submissions", LookupStatus.NOT_FOUND),
        (found, None, LookupStatus.FOUND),
    ):
        rig = with_backup([REFUSED], [answer])
        result = await _reconciler(rig.pipeline, failover=failover).lookup(submission())
        assert status is result.status, result
    rig = with_backup([empty], [empty])
    result = await _reconciler(rig.pipeline, failover=None).lookup(submission())
    assert LookupStatus.NOT_FOUND is result.status  # the primary's word counts
