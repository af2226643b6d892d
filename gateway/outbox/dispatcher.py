"""The dispatcher: delivers what the outbox holds, exactly once in effect.

    loop (one background task per gateway process):
        sweep every `outbox.sweep_interval`: expired leases → unknown; old final rows purged
        paused, or the circuit refuses?  → wait (for `wake()`, resume, a free slot, or a poll)
        claim due rows (at most the free concurrency; 1 while the circuit is half-open)
        deliver each concurrently, under the concurrency cap and the token bucket
        (what one delivery sends and decides: `gateway.outbox.delivery`)
        record the decision with the claim's fence

A write refused because the fence moved (someone else owns the row now) is dropped. A crash at
any point leaves the row `delivering` until its lease expires; the sweep then marks it
`unknown`, so the next attempt reconciles before anything is resent.

While the store does not answer (PostgreSQL stopped, a full disk) the loop keeps trying every
poll, and says so twice (`StoreOutage`): when the store first fails, and when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.clock import Clock, sleep_or_wake
from gateway.config import GatewayConfig, OperationConfig, OutboxConfig
from gateway.errors import StoreError
from gateway.operations import OperationKind, OperationRule
from gateway.outbox.delivery import (
    INTERNAL_ERROR,
    Courier,
    Decision,
    DeliveryOutcome,
    DeliveryRoute,
)
from gateway.outbox.outage import StoreOutage
from gateway.outbox.reconcile import Reconciler
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import Submission, SubmissionState
from gateway.resilience.breaker import BreakerRegistry, CircuitBreaker, CircuitState
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.ratelimit import TokenBucket
from gateway.resilience.retry import RetryPolicy

log = structlog.get_logger("gateway.outbox.dispatcher")

#: Looking for a row that falls due this much after its time: the next round claims it even
#: with the clocks of the writer and the claimer a few milliseconds apart.
DUE_MARGIN_S = 0.01

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
        self._bucket = TokenBucket(self._dispatch.rate, self._dispatch.burst, clock)
        self._courier = Courier(
            pipeline=pipeline,
            routes=self._routes,
            policy=self._policy,
            bucket=self._bucket,
            config=config,
            clock=clock,
            rng=self._rng,
        )
        self._slots = asyncio.Semaphore(self._dispatch.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        #: The time the last claim asked for rows due by.
        self._claimed_at = 0.0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._paused = False
        self._outage = StoreOutage(
            log, clock, task="dispatcher", stops="nothing is claimed or delivered"
        )
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
    def bucket(self) -> TokenBucket:
        """The token bucket every call to the platform from the outbox takes a token from
        (the issuance follower's lookups share it)."""
        return self._bucket

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

    async def stop(self, *, grace: float = 10.0) -> int:
        """Stop claiming; wait up to `grace` seconds (on the clock) for deliveries in flight,
        then cancel the rest. A cancelled delivery hands its row back at once (`unknown`, due
        now: reconciled by whichever replica takes it); one whose hand-back
        cannot be written keeps its lease until it expires, as after a crash. Returns how
        many were cut off."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pending = set(self._inflight)
        if not pending:
            return 0
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
                "dispatcher stopped with deliveries unfinished; they were handed back to be "
                "reconciled",
                unfinished=len(unfinished),
                grace_s=grace,
            )
        return len(unfinished)

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
        self._outage.answered()
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
        self._claimed_at = self._clock.wall()
        claimed = list(
            await self._store.claim_due(
                now=self._claimed_at,
                limit=limit,
                owner=self.owner,
                lease_seconds=self._config.lease,
            )
        )
        self._outage.answered()
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
                self._outage.failed(exc)
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
        # Nothing more is due, or every slot is busy: a finishing delivery wakes the loop, else
        # the next poll — or sooner, when a waiting row falls due before it (a wake-up can
        # announce a row queued with its first back-off still to run, or written on another
        # replica's reading of the clock).
        return self._until_due(await self._store.next_due())

    def _until_due(self, due: float | None) -> float:
        """The wait before the next round: the poll interval, or until `due` if that is sooner
        and was still ahead when the last claim looked (a row due by then but not claimed waits
        for its head; one falling due since is looked for at once)."""
        poll = self._dispatch.poll_interval
        if due is None or due <= self._claimed_at:
            return poll
        return min(poll, max(0.0, due - self._clock.wall()) + DUE_MARGIN_S)

    async def _idle(self, seconds: float) -> None:
        """Wait `seconds` on the clock, or less when woken (`wake`, resume, stop, a free slot)."""
        await sleep_or_wake(self._clock, seconds, self._wakeup)

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
                    decision = await self._courier.decide(submission)
                except asyncio.CancelledError:
                    # Cut off by `stop`: hand the row back now rather than at lease expiry.
                    await self._record(submission, self._courier.released())
                    raise
                except Exception as exc:
                    # A bug, not a platform answer. The attempt may have gone out: reconcile it.
                    log.exception("delivery failed inside the gateway")
                    decision = self._courier.retry(
                        submission,
                        state=SubmissionState.UNKNOWN,
                        maybe_sent=True,
                        error_class=INTERNAL_ERROR,
                        error=f"the gateway failed while delivering it ({type(exc).__name__}); "
                        "it may have been sent and will be reconciled",
                    )
                await self._record(submission, decision)

    async def _record(self, submission: Submission, decision: Decision) -> None:
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

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after delivery attempt `attempt` (1-based): `outbox.backoff`, full
        jitter under the exponential cap."""
        return self._courier.backoff(attempt)

    @property
    def routes(self) -> Mapping[str, DeliveryRoute]:
        """The submit operations this dispatcher delivers, by name."""
        return self._routes
