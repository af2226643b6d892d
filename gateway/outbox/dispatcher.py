"""The dispatcher: delivers what the outbox holds, exactly once in effect.

    loop (one background task per gateway process):
        sweep every `outbox.sweep_interval`: expired leases → unknown; old final rows purged
        paused, or the circuit refuses?  → wait (for `wake()`, resume, a free slot, or a poll)
        claim due rows (at most the free concurrency; 1 while the circuit is half-open)
        deliver each concurrently, under the concurrency cap and the token bucket:

    deliver one claimed submission (every write carries the claim's fence):
        too old / too many attempts          → dead (on-call)
        may have been sent (`unknown`):
            no reconcile rule                → parked as unknown for on-call, never resent
            duplicate already confirmed      → lookup only
        resend the stored request, signed afresh, 1 attempt
            success                          → delivered
            duplicate (E9106), maybe sent    → lookup → delivered (reconciled) | parked | retry
            duplicate, never sent before     → lookup → failed ("external duplicate")
            permanent / 4xx                  → failed, with the platform's answer
            answer lost                      → unknown (reconcile next time), back-off
            not sent / busy / 5xx / 429      → queued again, back-off (Retry-After honoured)
            auth / clock skew (the gateway's
            credentials, cured once in vain) → queued again, back-off

A write refused because the fence moved (someone else owns the row now) is dropped. A crash at
any point leaves the row `delivering` until its lease expires; the sweep then marks it
`unknown`, so the next attempt reconciles before anything is resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog
from multidict import CIMultiDict

from gateway.clock import Clock
from gateway.config import GatewayConfig, OperationConfig, OutboxConfig
from gateway.errors import StoreError
from gateway.headers import REQUEST_ID, end_to_end
from gateway.operations import Operation, OperationKind, OperationRule
from gateway.outbox.reconcile import LookupResult, LookupStatus, Reconciler
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import StoredResponse, Submission, SubmissionState, Transition
from gateway.resilience.breaker import BreakerRegistry, CircuitBreaker, CircuitState
from gateway.resilience.failures import FailureClass, Verdict
from gateway.resilience.pipeline import Outcome, ResiliencePipeline
from gateway.resilience.ratelimit import TokenBucket
from gateway.resilience.retry import Backoff, RetryPolicy
from gateway.upstream.client import UpstreamRequest, UpstreamResponse

log = structlog.get_logger("gateway.outbox.dispatcher")

#: Error classes the dispatcher writes itself (besides `FailureClass` values).
NEEDS_RECONCILIATION = "needs_reconciliation"
LOOKUP_FAILED = "lookup_failed"
MAX_ATTEMPTS = "max_attempts"
MAX_AGE = "max_age"
UNKNOWN_OPERATION = "unknown_operation"
INTERNAL_ERROR = "internal_error"

#: Failure classes that are the platform's final word on a submission.
#: The platform's verdicts on the submission itself. A rejected token (auth) is not one: it is
#: the gateway's credentials that failed, the invoice was not processed, so it waits and retries.
_FINAL_VERDICTS = frozenset({FailureClass.PERMANENT, FailureClass.HTTP_4XX})


class DeliveryOutcome(StrEnum):
    """How one delivery ended, as logged and counted."""

    DELIVERED = "delivered"
    #: Delivered by reconciliation: duplicate code after a lost answer, then the lookup.
    RECONCILED = "reconciled"
    FAILED = "failed"
    DEAD = "dead"
    REQUEUED = "requeued"
    PARKED = "parked"


#: Outcomes logged at info; the others (failed, dead, parked) need someone's attention.
_ROUTINE = frozenset(
    {DeliveryOutcome.DELIVERED, DeliveryOutcome.RECONCILED, DeliveryOutcome.REQUEUED}
)


@dataclass(slots=True)
class DispatcherStats:
    """Counters since start, for metrics. A reconciled delivery also counts as delivered."""

    claimed: int = 0
    delivered: int = 0
    reconciled: int = 0
    failed: int = 0
    dead: int = 0
    #: Put back for a later attempt (queued, or unknown with a due time).
    requeued: int = 0
    #: Left `unknown` without a due time for on-call.
    parked: int = 0
    #: Results dropped because the row's fence had moved on (someone else owns it).
    fence_lost: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryRoute:
    """What the dispatcher needs to deliver submissions of one operation."""

    operation: Operation
    config: OperationConfig
    reconciler: Reconciler | None


@dataclass(slots=True)
class _Decision:
    """The write that ends one delivery, and how to count and log it."""

    change: Transition
    outcome: DeliveryOutcome
    message: str
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Dispatcher:
    """Delivers queued and unknown submissions in the background; see the module docstring."""

    def __init__(
        self,
        *,
        store: OutboxStore,
        pipeline: ResiliencePipeline,
        breakers: BreakerRegistry,
        operations: Iterable[OperationConfig],
        config: OutboxConfig,
        send_timeout: float,
        clock: Clock,
        owner: str,
        rng: random.Random | None = None,
    ) -> None:
        """`operations` is every configured operation (lookups are found among them);
        `send_timeout` bounds each delivery attempt (the upstream timeout); `owner` names
        this process on the leases it takes."""
        self._store = store
        self._pipeline = pipeline
        self._breakers = breakers
        self._config = config
        self._dispatch = config.dispatcher
        self._clock = clock
        self.owner = owner
        self._rng = rng or random.Random()
        by_name = {op.name: op for op in operations}
        self._routes: dict[str, DeliveryRoute] = {
            op.name: DeliveryRoute(
                operation=OperationRule.from_config(op).operation,
                config=op,
                reconciler=Reconciler.for_operation(op, by_name, pipeline=pipeline),
            )
            for op in by_name.values()
            if op.kind == OperationKind.SUBMIT.value
        }
        # The outbox does its own back-off between deliveries: one attempt each.
        self._policy = RetryPolicy(
            deadline=send_timeout,
            attempts=1,
            base=config.backoff.base,
            cap=config.backoff.cap,
            multiplier=config.backoff.multiplier,
            retry_on=frozenset(),
            retry_after_cap=send_timeout,
        )
        self._backoff = Backoff.from_config(config.backoff)
        self._bucket = TokenBucket(self._dispatch.rate, self._dispatch.burst, clock)
        self._slots = asyncio.Semaphore(self._dispatch.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._paused = False
        self.stats = DispatcherStats()

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        store: OutboxStore,
        pipeline: ResiliencePipeline,
        breakers: BreakerRegistry,
        clock: Clock,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> Dispatcher:
        return cls(
            store=store,
            pipeline=pipeline,
            breakers=breakers,
            operations=config.operations,
            config=config.outbox,
            send_timeout=config.upstream.timeout,
            clock=clock,
            owner=owner or f"dispatcher-{secrets.token_hex(4)}",
            rng=rng,
        )

    # -- control ------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def in_flight(self) -> int:
        """Deliveries started and not finished."""
        return len(self._inflight)

    def start(self) -> None:
        """Start the background loop (idempotent)."""
        if self.running:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop claiming; wait up to `grace` seconds (on the clock) for deliveries in flight,
        then cancel the rest. A cancelled delivery keeps its lease until it expires and is
        then reconciled like any other interrupted one."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pending = set(self._inflight)
        if not pending:
            return
        everything = asyncio.ensure_future(asyncio.wait(pending))
        timer = asyncio.ensure_future(self._clock.sleep(grace))
        try:
            await asyncio.wait({everything, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (everything, timer):
                waiter.cancel()
            await asyncio.gather(everything, timer, return_exceptions=True)
        unfinished = [task for task in pending if not task.done()]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            log.warning(
                "dispatcher stopped with deliveries unfinished; they are reconciled once their "
                "leases expire",
                unfinished=len(unfinished),
                grace_s=grace,
            )

    def pause(self) -> None:
        """Stop claiming (on-call); deliveries already in flight finish."""
        if not self._paused:
            self._paused = True
            log.warning("dispatcher paused: nothing is delivered until it is resumed")

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            log.info("dispatcher resumed")
        self.wake()

    def wake(self) -> None:
        """Look for due submissions now rather than at the next poll (after queueing one)."""
        self._wakeup.set()

    # -- one round ---------------------------------------------------------------------------

    async def drain_once(self) -> int:
        """Claim what is due (within the circuit's and the concurrency's allowance), deliver
        it, and return how many were claimed once those deliveries have finished."""
        if self._paused:
            return 0
        limit, _wait = self._allowance()
        if limit == 0:
            return 0
        claimed = await self._claim(limit)
        tasks = [self._spawn(submission) for submission in claimed]
        if tasks:
            await asyncio.gather(*tasks)
        return len(claimed)

    async def sweep(self) -> tuple[int, int]:
        """Expired leases → unknown; final rows older than the retention purged.

        Returns (reclaimed, purged).
        """
        now = self._clock.wall()
        reclaimed = await self._store.reclaim(now=now)
        purged = await self._store.purge(finished_before=now - self._config.retention)
        if reclaimed:
            log.warning(
                "leases expired: those submissions may have been sent and will be reconciled",
                reclaimed=reclaimed,
            )
            self.wake()
        if purged:
            log.info("purged finished submissions past their retention", purged=purged)
        return reclaimed, purged

    def _allowance(self) -> tuple[int, float]:
        """How many rows may be claimed now, and otherwise how long to wait for the circuit."""
        free = self._dispatch.concurrency - len(self._inflight)
        if free <= 0:
            return 0, self._dispatch.poll_interval
        limit = min(self._dispatch.batch, free)
        breakers = self._circuits()
        if not breakers:
            return limit, 0.0
        waits: list[float] = []
        trial = False
        for breaker in breakers:
            state = breaker.state
            if state in (CircuitState.CLOSED, CircuitState.FORCED_CLOSED):
                return limit, 0.0
            retry_after = breaker.retry_after()
            if state is CircuitState.FORCED_OPEN or retry_after > 0:
                waits.append(retry_after if retry_after > 0 else self._dispatch.poll_interval)
            else:
                trial = True  # open with its reset timeout over, or half-open with a free slot
        if trial and not self._inflight:
            # The delivery is the circuit's trial call: one, and only with nothing else out.
            return 1, 0.0
        return 0, min(waits) if waits else self._dispatch.poll_interval

    def _circuits(self) -> list[CircuitBreaker]:
        seen: dict[int, CircuitBreaker] = {}
        for name in self._routes:
            breaker = self._breakers.for_operation(name)
            seen.setdefault(id(breaker), breaker)
        return list(seen.values())

    async def _claim(self, limit: int) -> list[Submission]:
        claimed = list(
            await self._store.claim_due(
                now=self._clock.wall(),
                limit=limit,
                owner=self.owner,
                lease_seconds=self._config.lease,
            )
        )
        self.stats.claimed += len(claimed)
        return claimed

    def _spawn(self, submission: Submission) -> asyncio.Task[None]:
        task = asyncio.create_task(self._deliver(submission), name=f"deliver {submission.id}")
        self._inflight.add(task)
        task.add_done_callback(self._delivery_done)
        return task

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wakeup.set()  # a slot is free (and a half-open trial may have ended)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery task failed", task=task.get_name(), error=repr(exc))

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        poll = self._dispatch.poll_interval
        next_sweep = self._clock.monotonic()
        log.info("dispatcher started", owner=self.owner)
        while not self._stopping:
            wait = poll
            try:
                if self._clock.monotonic() >= next_sweep:
                    next_sweep = self._clock.monotonic() + self._config.sweep_interval
                    await self.sweep()
                wait = await self._round()
            except StoreError as exc:
                log.error("the outbox store failed; trying again shortly", error=str(exc))
            except Exception:
                log.exception("dispatcher round failed; trying again shortly")
            if wait > 0 and not self._stopping:
                until_sweep = max(0.0, next_sweep - self._clock.monotonic())
                await self._idle(min(wait, until_sweep))
        log.info("dispatcher stopped", owner=self.owner)

    async def _round(self) -> float:
        """Claim and start deliveries; return how long to wait before the next round."""
        if self._paused:
            return self._dispatch.poll_interval
        limit, wait = self._allowance()
        if limit == 0:
            return wait
        claimed = await self._claim(limit)
        for submission in claimed:
            self._spawn(submission)
        if len(claimed) == limit and len(self._inflight) < self._dispatch.concurrency:
            return 0.0  # there may be more due, and room to take it
        # Nothing more is due, or every slot is busy: a finishing delivery wakes the loop.
        return self._dispatch.poll_interval

    async def _idle(self, seconds: float) -> None:
        """Wait `seconds` on the clock, or less when woken (`wake`, resume, stop, a free slot)."""
        if not self._wakeup.is_set():
            sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
            woken = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (sleeper, woken):
                    waiter.cancel()
                await asyncio.gather(sleeper, woken, return_exceptions=True)
        self._wakeup.clear()

    # -- one delivery ------------------------------------------------------------------------

    async def _deliver(self, submission: Submission) -> None:
        # Every line of this delivery, whoever logs it, names the submission and carries the
        # request id its client saw in `X-Request-Id` (one id from intake to delivery).
        with structlog.contextvars.bound_contextvars(
            request_id=submission.request_id,
            submission_id=submission.id,
            tenant=submission.tenant,
        ):
            async with self._slots:
                try:
                    decision = await self._decide(submission)
                except Exception as exc:
                    # A bug, not a platform answer. The attempt may have gone out: reconcile it.
                    log.exception("delivery failed inside the gateway")
                    decision = self._retry(
                        submission,
                        state=SubmissionState.UNKNOWN,
                        maybe_sent=True,
                        error_class=INTERNAL_ERROR,
                        error=f"the gateway failed while delivering it ({type(exc).__name__}); "
                        "it may have been sent and will be reconciled",
                    )
                await self._record(submission, decision)

    async def _record(self, submission: Submission, decision: _Decision) -> None:
        fields: dict[str, Any] = {
            "submission_id": submission.id,
            "tenant": submission.tenant,
            "operation": submission.operation,
            "attempt": submission.attempts + 1,
            "outcome": decision.outcome,
            "failure_class": decision.failure,
            **decision.details,
        }
        try:
            stored = await self._store.transition(
                submission.id, submission.fence, decision.change, now=self._clock.wall()
            )
        except StoreError as exc:
            log.error(
                "could not record the delivery; the row is reconciled once its lease expires",
                error=str(exc),
                **fields,
            )
            return
        if stored is None:
            self.stats.fence_lost += 1
            log.warning(
                "lost the lease while delivering (someone else owns the submission now); "
                "this result is not recorded",
                **fields,
            )
            return
        self._count(decision.outcome)
        if decision.outcome in _ROUTINE:
            log.info(decision.message, **fields)
        else:
            log.warning(decision.message, **fields)

    def _count(self, outcome: DeliveryOutcome) -> None:
        stats = self.stats
        if outcome in (DeliveryOutcome.DELIVERED, DeliveryOutcome.RECONCILED):
            stats.delivered += 1
            if outcome is DeliveryOutcome.RECONCILED:
                stats.reconciled += 1
        elif outcome is DeliveryOutcome.FAILED:
            stats.failed += 1
        elif outcome is DeliveryOutcome.DEAD:
            stats.dead += 1
        elif outcome is DeliveryOutcome.REQUEUED:
            stats.requeued += 1
        else:
            stats.parked += 1

    async def _decide(self, submission: Submission) -> _Decision:
        route = self._routes.get(submission.operation)
        if route is None:
            return self._dead(
                submission,
                UNKNOWN_OPERATION,
                f"operation {submission.operation!r} is not a configured submit operation of "
                "this gateway; fix the configuration and requeue it, or discard it",
            )
        now = self._clock.wall()
        age = now - (submission.age_from or submission.created_at)
        if age >= self._config.max_age:
            return self._dead(
                submission,
                MAX_AGE,
                f"not delivered within {_duration(self._config.max_age)} (outbox.max_age); "
                f"last failure: {submission.last_error_class or 'none'}",
            )
        if submission.attempts >= self._config.max_attempts:
            return self._dead(
                submission,
                MAX_ATTEMPTS,
                f"gave up after {submission.attempts} delivery attempts (outbox.max_attempts); "
                f"last failure: {submission.last_error_class or 'none'}",
            )
        if submission.maybe_sent:
            if route.reconciler is None or submission.business_key is None:
                return self._park(
                    submission,
                    "an earlier attempt may have reached the platform, and this operation has "
                    "no reconcile rule (business key and lookup) to find out whether it did; "
                    "on-call must check on the platform, then discard it or replay it",
                )
            if (submission.result or {}).get("duplicate_confirmed"):
                # An earlier resend already proved it exists; only its lookup is missing.
                return await self._reconcile(submission, route.reconciler, None, None)
        await self._bucket.acquire()
        outcome = await self._pipeline.execute(
            self._rebuild(submission), route.operation, policy=self._policy, live=False
        )
        return await self._judge(submission, route, outcome)

    @staticmethod
    def _rebuild(submission: Submission) -> UpstreamRequest:
        """The request as the client sent it; the auth scheme signs it afresh at send time."""
        headers = end_to_end(CIMultiDict(submission.headers))
        headers[REQUEST_ID] = submission.request_id
        return UpstreamRequest(
            method=submission.method,
            path=submission.path,
            query=submission.query,
            headers=headers,
            body=submission.body,
            operation=submission.operation,
        )

    async def _judge(
        self, submission: Submission, route: DeliveryRoute, outcome: Outcome
    ) -> _Decision:
        verdict = outcome.verdict
        failure = verdict.failure
        answer = _stored(verdict.response)
        if failure is None:
            return _Decision(
                Transition(
                    SubmissionState.DELIVERED,
                    attempts_delta=1,
                    response=answer,
                    clear_error=True,
                ),
                outcome=DeliveryOutcome.DELIVERED,
                message="delivered",
            )
        if failure is FailureClass.DUPLICATE:
            if submission.maybe_sent and route.reconciler is not None:
                return await self._reconcile(submission, route.reconciler, answer, verdict.code)
            return await self._external_duplicate(submission, route, answer, verdict.code)
        if failure in _FINAL_VERDICTS:
            code = f" (code {verdict.code})" if verdict.code else ""
            status = f"HTTP {answer.status}" if answer else "no answer"
            return _Decision(
                Transition(
                    SubmissionState.FAILED,
                    attempts_delta=1,
                    error_class=failure.value,
                    error=f"the platform refused it{code}, {status}; its answer is the response",
                    response=answer,
                ),
                outcome=DeliveryOutcome.FAILED,
                message="failed: the platform refused the submission",
                failure=failure.value,
            )
        if failure is FailureClass.CIRCUIT_OPEN:
            wait = max(verdict.retry_after or 0.0, self._dispatch.poll_interval)
            return _Decision(
                Transition(
                    SubmissionState.UNKNOWN if submission.maybe_sent else SubmissionState.QUEUED,
                    error_class=failure.value,
                    error="the circuit to the platform is open; nothing was sent",
                    next_attempt_at=self._clock.wall() + wait,
                ),
                outcome=DeliveryOutcome.REQUEUED,
                message="requeued: the circuit is open, nothing was sent",
                failure=failure.value,
                details={"next_attempt_in_s": round(wait, 3)},
            )
        if failure.answer_lost:
            return self._retry(
                submission,
                state=SubmissionState.UNKNOWN,
                maybe_sent=True,
                error_class=failure.value,
                error=f"the platform's answer was lost ({failure.value}); it may have been "
                "issued, so the next attempt reconciles before anything is resent",
            )
        return self._retry(
            submission,
            state=SubmissionState.UNKNOWN if submission.maybe_sent else SubmissionState.QUEUED,
            # A 5xx may come after the platform acted; busy and 429 say it did not.
            maybe_sent=True if failure is FailureClass.HTTP_5XX else None,
            error_class=failure.value,
            error=_retry_reason(failure, verdict),
            retry_after=verdict.retry_after,
        )

    async def _reconcile(
        self,
        submission: Submission,
        reconciler: Reconciler,
        answer: StoredResponse | None,
        code: str | None,
    ) -> _Decision:
        """The platform has this business key and an attempt of ours may have made it."""
        code = code or (submission.result or {}).get("duplicate_code")
        evidence = {"duplicate_confirmed": True, "duplicate_code": code}
        lookup = await self._lookup(reconciler, submission)
        if lookup.status is LookupStatus.FOUND:
            assert lookup.entry is not None  # found means an entry
            return _Decision(
                Transition(
                    SubmissionState.DELIVERED,
                    attempts_delta=1,
                    # What the client gets if it asks again: the result, not "already used".
                    response=reconciler.answer_for(submission, lookup.entry),
                    result={
                        "reconciled": True,
                        "evidence": "duplicate_code",
                        "duplicate_code": code,
                        "lookup_operation": reconciler.operation.name,
                        "lookup": lookup.entry,
                    },
                    clear_error=True,
                ),
                outcome=DeliveryOutcome.RECONCILED,
                message="delivered by reconciliation: the platform already had it (duplicate "
                "code after a lost answer) and the lookup found it",
            )
        if lookup.status is LookupStatus.NOT_FOUND:
            return _Decision(
                Transition(
                    SubmissionState.UNKNOWN,
                    attempts_delta=1,
                    error_class=NEEDS_RECONCILIATION,
                    error=f"the platform reports this business key as already used (code "
                    f"{code}), but {lookup.detail}; on-call must check on the platform what "
                    "was issued",
                    response=answer,
                    result={**evidence, "lookup": None},
                    next_attempt_at=None,
                ),
                outcome=DeliveryOutcome.PARKED,
                message="parked for on-call: duplicate code, but the lookup found nothing",
                failure=FailureClass.DUPLICATE.value,
            )
        return self._retry(
            submission,
            state=SubmissionState.UNKNOWN,
            maybe_sent=True,
            error_class=LOOKUP_FAILED,
            error=f"the platform reports this business key as already used (code {code}), "
            f"proving an earlier attempt succeeded, but {lookup.detail}; the lookup is "
            "retried later",
            response=answer,
            result=evidence,
            retry_after=None,
        )

    async def _external_duplicate(
        self,
        submission: Submission,
        route: DeliveryRoute,
        answer: StoredResponse | None,
        code: str | None,
    ) -> _Decision:
        """The platform has this business key, and no attempt of this gateway made it."""
        result: dict[str, Any] = {"external_duplicate": True, "duplicate_code": code}
        if route.reconciler is not None and submission.business_key is not None:
            lookup = await self._lookup(route.reconciler, submission)
            result["lookup"] = lookup.entry
            if lookup.status is LookupStatus.FAILED:
                result["lookup_error"] = lookup.detail
        else:
            result["lookup"] = None
            result["lookup_error"] = "this operation has no reconcile lookup"
        return _Decision(
            Transition(
                SubmissionState.FAILED,
                attempts_delta=1,
                error_class=FailureClass.DUPLICATE.value,
                error=f"the platform already has this business key (code {code}), but this "
                "gateway never sent it before: it was used outside the gateway (e.g. issued by "
                "hand). Nothing was issued by this delivery; 'result.lookup' shows what the "
                "platform holds",
                response=answer,
                result=result,
            ),
            outcome=DeliveryOutcome.FAILED,
            message="failed: the business key was already used outside the gateway",
            failure=FailureClass.DUPLICATE.value,
        )

    async def _lookup(self, reconciler: Reconciler, submission: Submission) -> LookupResult:
        await self._bucket.acquire()
        return await reconciler.lookup(submission)

    def _retry(
        self,
        submission: Submission,
        *,
        state: SubmissionState,
        maybe_sent: bool | None,
        error_class: str,
        error: str,
        retry_after: float | None = None,
        response: StoredResponse | None = None,
        result: dict[str, Any] | None = None,
    ) -> _Decision:
        attempt = submission.attempts + 1
        wait = self.backoff(attempt)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return _Decision(
            Transition(
                state,
                attempts_delta=1,
                maybe_sent=maybe_sent,
                error_class=error_class,
                error=error,
                response=response,
                result=result,
                next_attempt_at=self._clock.wall() + wait,
            ),
            outcome=DeliveryOutcome.REQUEUED,
            message=f"requeued as {state.value} ({error_class}); next attempt in {wait:.1f} s",
            failure=error_class,
            details={"next_attempt_in_s": round(wait, 3)},
        )

    def _park(self, submission: Submission, error: str) -> _Decision:
        return _Decision(
            Transition(
                SubmissionState.UNKNOWN,
                error_class=NEEDS_RECONCILIATION,
                error=error,
                next_attempt_at=None,
            ),
            outcome=DeliveryOutcome.PARKED,
            message="parked for on-call: it may have been sent and cannot be reconciled",
            failure=NEEDS_RECONCILIATION,
        )

    def _dead(self, submission: Submission, error_class: str, error: str) -> _Decision:
        if submission.maybe_sent:
            error += "; an earlier attempt may have reached the platform: check before replaying"
        return _Decision(
            Transition(SubmissionState.DEAD, error_class=error_class, error=error),
            outcome=DeliveryOutcome.DEAD,
            message=f"dead ({error_class}): needs on-call",
            failure=error_class,
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after delivery attempt `attempt` (1-based): `outbox.backoff`, full
        jitter under the exponential cap."""
        return self._backoff.delay(max(1, attempt), self._rng)

    @property
    def routes(self) -> Mapping[str, DeliveryRoute]:
        """The submit operations this dispatcher delivers, by name."""
        return self._routes


def _stored(response: UpstreamResponse | None) -> StoredResponse | None:
    if response is None:
        return None
    return StoredResponse(
        status=response.status,
        headers=tuple(end_to_end(response.headers).items()),
        body=response.body,
    )


def _retry_reason(failure: FailureClass, verdict: Verdict) -> str:
    wait = f"; it asked to wait {verdict.retry_after:g} s" if verdict.retry_after else ""
    if failure is FailureClass.CLOCK_SKEW:
        code = f" (code {verdict.code})" if verdict.code else ""
        return (
            f"the platform refused the time the gateway signed with{code}, and its answer gave "
            "no clock to correct by (or the corrected one was refused too); nothing was issued. "
            "Fix NTP on the gateway's host"
        )
    if not failure.sent:
        return f"the platform could not be reached ({failure.value}); nothing was sent"
    if failure is FailureClass.HTTP_5XX:
        status = f"HTTP {verdict.response.status}" if verdict.response else "a server error"
        return f"the platform failed with {status}; it may have acted, so the next attempt " + (
            "reconciles first"
        )
    code = f" (code {verdict.code})" if verdict.code else ""
    if failure is FailureClass.AUTH:
        return (
            f"the platform rejected the gateway's access token even after renewing it{code}; "
            "nothing was issued. Check the platform credentials (upstream.auth)"
        )
    return f"the platform declined to act now ({failure.value}{code}){wait}"


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"
