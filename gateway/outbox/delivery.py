"""One delivery of a claimed submission: what to send, and what the result makes of the row.

    too old / too many attempts          → dead (on-call)
    may have been sent (`unknown`):
        no reconcile rule                → parked as unknown for on-call, never resent
        duplicate already confirmed      → lookup only
    resend the stored request, signed afresh, 1 attempt; then the settlement table
    (`gateway.outbox.settlement`, the same one the live path reads):
        delivered                        → delivered
        duplicate, an attempt of ours
        may have reached the platform    → lookup → delivered (reconciled) | parked | retry
        duplicate, never sent before     → lookup → failed ("external duplicate")
        failed (permanent, 4xx)          → failed, with the platform's answer
        reconcile (answer lost, 5xx)     → unknown (reconciled next time), back-off
        retry (not sent, busy, 429, quota,
        the gateway's own credentials)   → queued again, back-off (Retry-After honoured)

The dispatcher (`gateway.outbox.dispatcher`) owns the loop, the claims and the recording;
this module owns the decisions, so they can be read (and tested) one delivery at a time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from multidict import CIMultiDict

from gateway.clock import Clock
from gateway.config import OperationConfig, OutboxConfig
from gateway.headers import REQUEST_ID, end_to_end
from gateway.operations import Operation
from gateway.outbox.reconcile import LookupResult, LookupStatus, Reconciler
from gateway.outbox.settlement import Settlement, settle, waiting_state
from gateway.outbox.submissions import (
    StoredResponse,
    Submission,
    SubmissionState,
    Transition,
    stored_response,
)
from gateway.quantities import format_duration
from gateway.resilience.failures import FailureClass, Verdict
from gateway.resilience.pipeline import Outcome, ResiliencePipeline
from gateway.resilience.ratelimit import TokenBucket
from gateway.resilience.retry import Backoff, RetryPolicy
from gateway.upstream.models import UpstreamRequest

#: Error classes the dispatcher writes itself (besides `FailureClass` values).
NEEDS_RECONCILIATION = "needs_reconciliation"
LOOKUP_FAILED = "lookup_failed"
MAX_ATTEMPTS = "max_attempts"
MAX_AGE = "max_age"
UNKNOWN_OPERATION = "unknown_operation"
INTERNAL_ERROR = "internal_error"
#: Cut off by a stop: handed back before its lease expired (`Courier.released`).
LEASE_RELEASED = "lease_released"
#: Looked up and not found yet: looked up again before any resend (lookup-first).
AWAITING_ABSENCE = "not_found_yet"
#: Where a row keeps its absence record (`Absence`) in its `result`.
ABSENCE = "absence"
#: Lookups of one submission are never closer together than this.
MIN_LOOKUP_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class Absence:
    """Lookups that found nothing since the submission was last (possibly) sent.

    Valid only while the row's last event is such a lookup (`last_error_class` is
    `not_found_yet`): a sending, a crash (the lease expires) or an on-call action writes
    another error class and so starts the count afresh.
    """

    count: int = 0
    #: Wall times of the first and the latest of them.
    since: float = 0.0
    last: float = 0.0

    @classmethod
    def of(cls, submission: Submission) -> Absence:
        record = (submission.result or {}).get(ABSENCE)
        if submission.last_error_class != AWAITING_ABSENCE or not isinstance(record, dict):
            return cls()
        return cls(
            count=int(record.get("count", 0)),
            since=float(record.get("since", 0.0)),
            last=float(record.get("last", 0.0)),
        )

    def seen(self, now: float) -> Absence:
        """One more lookup found nothing, at `now`. A record whose latest lookup is later than
        `now` was written before the clock stepped back: its times cannot say how long the
        platform has had, so the count starts again from this lookup (more lookups before a
        resend, never fewer; counting on would wait out the whole step)."""
        if self.count and self.last > now:
            return Absence(1, now, now)
        return Absence(self.count + 1, self.since if self.count else now, now)

    def proven(self, lookups: int, settle: float) -> bool:
        """At least `lookups` of them, the latest at least `settle` after the first: by then
        the platform lists an invoice it accepted before the first one."""
        return self.count >= lookups and self.last - self.since >= settle

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "since": self.since, "last": self.last}


class DeliveryOutcome(StrEnum):
    """How one delivery ended, as logged and counted."""

    DELIVERED = "delivered"
    #: Delivered by reconciliation: duplicate code after a lost answer, then the lookup.
    RECONCILED = "reconciled"
    FAILED = "failed"
    DEAD = "dead"
    REQUEUED = "requeued"
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class DeliveryRoute:
    """What the dispatcher needs to deliver submissions of one operation."""

    operation: Operation
    config: OperationConfig
    reconciler: Reconciler | None


@dataclass(slots=True)
class Decision:
    """The write that ends one delivery, and how to count and log it."""

    change: Transition
    outcome: DeliveryOutcome
    message: str
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Courier:
    """Delivers one claimed submission at a time and decides what becomes of it."""

    def __init__(
        self,
        *,
        pipeline: ResiliencePipeline,
        routes: dict[str, DeliveryRoute],
        policy: RetryPolicy,
        bucket: TokenBucket,
        config: OutboxConfig,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        """`routes` are the submit operations by name; `policy` is one attempt per delivery
        (the outbox backs off between deliveries itself); `bucket` paces every request sent."""
        self._pipeline = pipeline
        self._routes = routes
        self._policy = policy
        self._bucket = bucket
        self._config = config
        self._clock = clock
        self._rng = rng
        self._backoff = Backoff.from_config(config.backoff)

    async def decide(self, submission: Submission) -> Decision:
        """Send `submission` (or reconcile it, or give up on it) and say what to record."""
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
                f"not delivered within {format_duration(self._config.max_age)} (outbox.max_age); "
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
            if route.reconciler.rule.strategy == "lookup-first":
                looked = await self._look_before_resend(submission, route.reconciler)
                if looked is not None:
                    return looked
                # Absent, as far as lookups spanning the platform's lag can tell: resend.
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
            tenant=submission.tenant,
        )

    async def _judge(
        self, submission: Submission, route: DeliveryRoute, outcome: Outcome
    ) -> Decision:
        """What the settlement table makes of one sending's `outcome`."""
        verdict = outcome.verdict
        failure = verdict.failure
        answer = stored_response(verdict.response)
        settled = settle(outcome, sent_before=submission.maybe_sent)
        if failure is None:
            return Decision(
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
            if settled is Settlement.RECONCILE and route.reconciler is not None:
                return await self._reconcile(submission, route.reconciler, answer, verdict.code)
            return await self._external_duplicate(submission, route, answer, verdict.code)
        if settled is Settlement.FAILED:
            code = f" (code {verdict.code})" if verdict.code else ""
            status = f"HTTP {answer.status}" if answer else "no answer"
            return Decision(
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
        maybe_sent = submission.maybe_sent or settled is Settlement.RECONCILE
        if failure is FailureClass.CIRCUIT_OPEN:
            wait = max(verdict.retry_after or 0.0, self._config.dispatcher.poll_interval)
            return Decision(
                Transition(
                    waiting_state(maybe_sent=maybe_sent),
                    error_class=failure.value,
                    error="the circuit to the platform is open; nothing was sent",
                    next_attempt_at=self._clock.wall() + wait,
                ),
                outcome=DeliveryOutcome.REQUEUED,
                message="requeued: the circuit is open, nothing was sent",
                failure=failure.value,
                details={"next_attempt_in_s": round(wait, 3)},
            )
        retry_after = verdict.retry_after
        if failure is FailureClass.TOKEN_UNAVAILABLE and retry_after is None:
            # Token calls are held until an operator acts (a refused quota, a configuration
            # error): look again only at the back-off's cap, not every few seconds.
            retry_after = self._config.backoff.cap
        return self.retry(
            submission,
            state=waiting_state(maybe_sent=maybe_sent),
            maybe_sent=True if settled is Settlement.RECONCILE else None,
            error_class=failure.value,
            error=_retry_reason(failure, verdict),
            retry_after=retry_after,
            # No token, nothing sent: a long token hold (a refused quota waits for an operator)
            # must not use up the submission's attempts; its age still bounds it.
            counts=failure is not FailureClass.TOKEN_UNAVAILABLE,
        )

    async def _look_before_resend(
        self, submission: Submission, reconciler: Reconciler
    ) -> Decision | None:
        """Lookup-first: what the platform holds for a submission that may have been sent.

        Found → delivered with it. Not found → looked up again until `absent_lookups` lookups,
        the last at least `settle` after the first, found nothing since the last sending;
        only then None: the caller resends. Any sending (or a crash: the lease expires) ends
        the row's absence record, so a resend that went astray is looked for afresh.
        """
        lookup = await self._lookup(reconciler, submission)
        now = self._clock.wall()
        if lookup.status is LookupStatus.FOUND:
            assert lookup.entry is not None  # found means an entry
            return self._found(submission, reconciler, lookup.entry, evidence="lookup")
        if lookup.status is LookupStatus.FAILED:
            return self.retry(
                submission,
                state=SubmissionState.UNKNOWN,
                maybe_sent=True,
                error_class=LOOKUP_FAILED,
                error=f"it may have been issued, and {lookup.detail}; nothing is resent until "
                "a lookup answers",
            )
        rule = reconciler.rule
        absence = Absence.of(submission).seen(now)
        if absence.proven(rule.absent_lookups, rule.settle):
            return None
        wait = max(rule.settle / max(1, rule.absent_lookups - 1), MIN_LOOKUP_INTERVAL)
        if absence.count >= rule.absent_lookups:
            wait = max(MIN_LOOKUP_INTERVAL, absence.since + rule.settle - now)
        return Decision(
            Transition(
                SubmissionState.UNKNOWN,
                error_class=AWAITING_ABSENCE,
                error=f"it may have been issued, and {lookup.detail} ({absence.count} of "
                f"{rule.absent_lookups} lookup(s)); the platform may list an invoice late, so it "
                f"is looked up again before anything is resent",
                result={**(submission.result or {}), ABSENCE: absence.to_json()},
                next_attempt_at=now + wait,
            ),
            outcome=DeliveryOutcome.REQUEUED,
            message="not found yet: looked up again before any resend",
            failure=AWAITING_ABSENCE,
            details={"next_attempt_in_s": round(wait, 3), "lookups": absence.count},
        )

    def _found(
        self,
        submission: Submission,
        reconciler: Reconciler,
        entry: dict[str, Any],
        *,
        evidence: str,
        code: str | None = None,
    ) -> Decision:
        """Delivered by reconciliation: the platform holds `entry` for its business key."""
        result: dict[str, Any] = {
            "reconciled": True,
            "evidence": evidence,
            "lookup_operation": reconciler.operation.name,
            "lookup": entry,
        }
        if code is not None:
            result["duplicate_code"] = code
        how = (
            "the lookup found it"
            if evidence == "lookup"
            else ("duplicate code after a lost answer, and the lookup found it")
        )
        return Decision(
            Transition(
                SubmissionState.DELIVERED,
                attempts_delta=1,
                # What the client gets if it asks again: the result, not "already used".
                response=reconciler.answer_for(submission, entry),
                result=result,
                clear_error=True,
            ),
            outcome=DeliveryOutcome.RECONCILED,
            message=f"delivered by reconciliation: {how}",
        )

    async def _reconcile(
        self,
        submission: Submission,
        reconciler: Reconciler,
        answer: StoredResponse | None,
        code: str | None,
    ) -> Decision:
        """The platform has this business key and an attempt of ours may have made it."""
        code = code or (submission.result or {}).get("duplicate_code")
        evidence = {"duplicate_confirmed": True, "duplicate_code": code}
        lookup = await self._lookup(reconciler, submission)
        if lookup.status is LookupStatus.FOUND:
            assert lookup.entry is not None  # found means an entry
            return self._found(
                submission, reconciler, lookup.entry, evidence="duplicate_code", code=code
            )
        lookups = int((submission.result or {}).get("duplicate_lookups", 0)) + 1
        if lookup.status is LookupStatus.NOT_FOUND and lookups < reconciler.rule.absent_lookups:
            # The platform may list it late: look again before asking on-call.
            return self.retry(
                submission,
                state=SubmissionState.UNKNOWN,
                maybe_sent=True,
                error_class=LOOKUP_FAILED,
                error=f"the platform reports this business key as already used (code {code}), "
                f"but {lookup.detail} yet; it is looked up again",
                response=answer,
                result={**evidence, "duplicate_lookups": lookups},
                retry_after=reconciler.rule.settle / reconciler.rule.absent_lookups,
            )
        if lookup.status is LookupStatus.NOT_FOUND:
            return Decision(
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
        return self.retry(
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
    ) -> Decision:
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
        return Decision(
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

    def retry(
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
        counts: bool = True,
    ) -> Decision:
        """Back to waiting after back-off (`retry_after` when longer); `counts=False` when the
        attempt does not count toward `outbox.max_attempts`."""
        attempt = submission.attempts + 1
        wait = self.backoff(attempt)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return Decision(
            Transition(
                state,
                attempts_delta=1 if counts else 0,
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

    def released(self) -> Decision:
        """The delivery was cut off because the gateway is stopping: the row goes back at
        once as `unknown` — the attempt may have gone out — due now, so whichever replica takes
        it next reconciles it (lookup-first) instead of waiting for the lease to expire."""
        return Decision(
            Transition(
                SubmissionState.UNKNOWN,
                maybe_sent=True,
                error_class=LEASE_RELEASED,
                error="the gateway stopped while delivering it; it may have been sent and is "
                "reconciled before any resend",
                next_attempt_at=self._clock.wall(),
            ),
            outcome=DeliveryOutcome.REQUEUED,
            message="delivery cut off by the stop: handed back to be reconciled",
            failure=LEASE_RELEASED,
        )

    def _park(self, submission: Submission, error: str) -> Decision:
        return Decision(
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

    def _dead(self, submission: Submission, error_class: str, error: str) -> Decision:
        if submission.maybe_sent:
            error += "; an earlier attempt may have reached the platform: check before replaying"
        return Decision(
            Transition(SubmissionState.DEAD, error_class=error_class, error=error),
            outcome=DeliveryOutcome.DEAD,
            message=f"dead ({error_class}): needs on-call",
            failure=error_class,
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after delivery attempt `attempt` (1-based): `outbox.backoff`, full
        jitter under the exponential cap."""
        return self._backoff.delay(max(1, attempt), self._rng)


def _retry_reason(failure: FailureClass, verdict: Verdict) -> str:
    wait = f"; it asked to wait {verdict.retry_after:g} s" if verdict.retry_after else ""
    if failure is FailureClass.CLOCK_SKEW:
        code = f" (code {verdict.code})" if verdict.code else ""
        return (
            f"the platform refused the gateway's signature{code}, and re-signing with the "
            "platform's own time was not possible or did not help; nothing was issued. Fix NTP "
            "on the gateway's host, or the application secret"
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
