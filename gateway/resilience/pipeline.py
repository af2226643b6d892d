"""The resilience pipeline: one operation's attempts under deadline, retry policy, budget
and circuit breaker, ending in one `Outcome`.

    for each attempt (tenacity's `AsyncRetrying`, fresh per request so nothing is shared, and
    built only once a first attempt failed retryably):
        circuit breaker admits it?  ── no → circuit_open, stop (fail fast)
        sign afresh and send, time-limited by what is left of the deadline
        classify → success | FailureClass
        the platform refused the gateway's credentials, not the request → cure them once and
        resend within the attempt: 070301 (token rejected) renews the token (single-flight);
        070601 (signature refused: check the clock, says the platform) re-signs with the clock
        of its `Date`
    retry when: the class is in the policy's `retry_on`, a resend is safe for the operation's
    kind, attempts remain, the back-off (or Retry-After) fits the deadline, and the budget allows.

With a backup endpoint (`failover`), each send of an operation that may fail over goes where
`gateway.resilience.failover` says: to the backup while the probe says the primary is down, or
at once after the primary's circuit refused it or it provably never left for the primary.
`Outcome.endpoint` says which endpoint the last attempt went to.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_result

from gateway.clock import Clock
from gateway.config import BusinessCodesConfig, GatewayConfig, RetryPolicyConfig
from gateway.errors import CircuitOpen, GatewayError
from gateway.operations import Operation, OperationKind
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.failover import FAIL_OVER_ON, Endpoint, Failover
from gateway.resilience.failures import FailureClass, FailureClassifier, Verdict
from gateway.resilience.retry import RetryBudget, RetryPolicy
from gateway.upstream.client import Upstream
from gateway.upstream.models import UpstreamRequest

log = structlog.get_logger("gateway.resilience.pipeline")

#: An attempt is not started with less than this left of the deadline.
MIN_ATTEMPT_SECONDS = 0.05
#: Rejections of the gateway's own credentials that the auth scheme may cure before a resend.
_CURABLE = frozenset({FailureClass.AUTH, FailureClass.CLOCK_SKEW})


class AttemptObserver(Protocol):
    def attempt(
        self,
        operation: str,
        verdict: Verdict,
        seconds: float,
        endpoint: Endpoint = Endpoint.PRIMARY,
    ) -> None:
        """One upstream attempt at `endpoint` ended with `verdict` after `seconds`."""
        ...

    def retry(self, operation: str) -> None:
        """A retry of `operation` is about to be made."""
        ...


@dataclass(slots=True)
class Outcome:
    """How one operation ended after all its attempts."""

    verdict: Verdict
    attempts: int = 0
    #: The failure classes of every failed attempt, in order (for logs).
    failures: list[FailureClass] = field(default_factory=list)
    #: Why the retries stopped, when the last attempt failed.
    stopped_by: str | None = None
    #: Whether any attempt may have reached the platform.
    sent: bool = False
    #: Where the last attempt went; None when no backup endpoint is configured.
    endpoint: Endpoint | None = None

    @property
    def ok(self) -> bool:
        return self.verdict.ok


@dataclass(slots=True)
class _Run:
    operation: Operation
    policy: RetryPolicy
    deadline_at: float
    outcome: Outcome
    #: The credential rejections already cured for this request (each is cured once).
    cured: set[FailureClass] = field(default_factory=set)
    give_up: str | None = None


class ResiliencePipeline:
    def __init__(
        self,
        *,
        upstream: Upstream,
        classifier: FailureClassifier,
        breakers: BreakerRegistry,
        budget: RetryBudget,
        policies: Mapping[str, RetryPolicy],
        kind_policies: Mapping[OperationKind, RetryPolicy],
        attempt_timeout: float,
        clock: Clock,
        rng: random.Random | None = None,
        observer: AttemptObserver | None = None,
        failover: Failover | None = None,
    ) -> None:
        self._upstream = upstream
        #: The backup endpoint and its rule; None: every attempt goes to `upstream`.
        self.failover = failover
        #: Told about every attempt and every retry (metrics).
        self.observer = observer
        self._classifier = classifier
        self.breakers = breakers
        self.budget = budget
        self._policies = dict(policies)
        self._kind_policies = dict(kind_policies)
        self._attempt_timeout = attempt_timeout
        self._clock = clock
        self._rng = rng or random.Random()

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        upstream: Upstream,
        breakers: BreakerRegistry,
        clock: Clock,
        failover: Failover | None = None,
    ) -> ResiliencePipeline:
        resilience = config.resilience
        kind_policies = {
            kind: RetryPolicy.resolve(resilience.defaults.for_kind(kind.value), RetryPolicyConfig())
            for kind in OperationKind
        }
        policies = {
            op.name: RetryPolicy.resolve(resilience.defaults.for_kind(op.kind), op.policy)
            for op in config.operations
        }
        return cls(
            upstream=upstream,
            classifier=FailureClassifier(config.upstream.business_codes, clock),
            breakers=breakers,
            budget=RetryBudget(resilience.retry_budget, clock),
            policies=policies,
            kind_policies=kind_policies,
            attempt_timeout=config.upstream.timeout,
            clock=clock,
            failover=failover,
        )

    def reclassify(self, codes: BusinessCodesConfig) -> None:
        """Read business codes by `codes` from the next attempt on (a reload)."""
        self._classifier = FailureClassifier(codes, self._clock)

    def policy_for(self, operation: Operation) -> RetryPolicy:
        return self._policies.get(operation.name) or self._kind_policies[operation.kind]

    async def execute(
        self,
        request: UpstreamRequest,
        operation: Operation,
        *,
        policy: RetryPolicy | None = None,
        live: bool = True,
    ) -> Outcome:
        """Run `request` through attempts until it succeeds or a stop condition holds.

        `policy` overrides the operation's; `live=False` (outbox deliveries) keeps the request
        out of the retry budget's count of live traffic.
        """
        policy = policy or self.policy_for(operation)
        run = _Run(
            operation=operation,
            policy=policy,
            deadline_at=self._clock.monotonic() + policy.deadline,
            outcome=Outcome(verdict=Verdict(None)),
        )
        if live:
            self.budget.record_request()
        verdict = await self._attempt(request, run)
        if self._retryable(verdict, run):
            verdict = await self._retry(request, run, verdict)
        run.outcome.verdict = verdict
        if verdict.ok:
            run.outcome.stopped_by = None
        elif run.outcome.stopped_by is None:
            run.outcome.stopped_by = "not retryable"
        return run.outcome

    async def _retry(self, request: UpstreamRequest, run: _Run, first: Verdict) -> Verdict:
        """The attempts after a retryable `first`, under tenacity (built only when a retry may
        follow: most requests succeed at once and never pay for it)."""
        pending: Verdict | None = first

        async def attempt() -> Verdict:
            nonlocal pending
            if pending is not None:
                verdict, pending = pending, None
                return verdict  # the first attempt's verdict: tenacity decides what follows
            return await self._attempt(request, run)

        retrying = AsyncRetrying(
            sleep=self._clock.sleep,
            retry=retry_if_result(lambda verdict: self._retryable(verdict, run)),
            wait=lambda state: self._wait(state, run),
            stop=lambda state: self._stop(state, run),
            before_sleep=lambda state: self._log_retry(state, run),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            reraise=True,
        )
        verdict: Verdict = await retrying(attempt)
        return verdict

    async def _attempt(self, request: UpstreamRequest, run: _Run) -> Verdict:
        run.outcome.attempts += 1
        verdict = await self._routed_send(request, run)
        while (failure := verdict.failure) in _CURABLE and failure not in run.cured:
            # The platform refused the gateway's credentials (token, signed time), not the
            # request: cure them and resend once, as part of this attempt — a cure is not a
            # retry of a failure. The token and then the clock may each need it.
            run.cured.add(failure)
            try:
                cured = await self._cure(verdict)
            except GatewayError as exc:
                # No new token (the token endpoint is down): nothing more was sent.
                verdict = self._classifier.of_error(exc)
                break
            if not cured:
                break
            verdict = await self._routed_send(request, run)
        if not verdict.ok:
            run.outcome.failures.append(verdict.failure)  # type: ignore[arg-type]
        return verdict

    async def _cure(self, verdict: Verdict) -> bool:
        """Let the auth scheme act on the rejection in `verdict`; True when a resend may pass."""
        auth = self._upstream.auth
        response = verdict.response
        if verdict.failure is FailureClass.CLOCK_SKEW:
            return response is not None and await auth.clock_rejected(response)
        if response is not None and response.request is not None:
            await auth.credentials_rejected(response.request)
        return True

    async def _routed_send(self, request: UpstreamRequest, run: _Run) -> Verdict:
        """One send at the endpoint the failover rule picks (the primary without a backup)."""
        failover = self.failover
        if failover is None or not failover.covers(run.operation):
            return await self._guarded_send(request, run, Endpoint.PRIMARY)
        if not failover.primary_down():
            verdict = await self._guarded_send(request, run, Endpoint.PRIMARY)
            if verdict.failure not in FAIL_OVER_ON:
                return verdict
            log.debug(
                "the primary endpoint did not take the call; sending it to the backup",
                operation=run.operation.name,
                failure=verdict.failure,
            )
        return await self._guarded_send(request, run, Endpoint.BACKUP)

    async def _guarded_send(
        self, request: UpstreamRequest, run: _Run, endpoint: Endpoint
    ) -> Verdict:
        if self.failover is not None:
            run.outcome.endpoint = endpoint
        breaker = self._at(endpoint)[1].for_operation(run.operation.name)
        remaining = run.deadline_at - self._clock.monotonic()
        time_limit = max(MIN_ATTEMPT_SECONDS, min(self._attempt_timeout, remaining))

        read = run.operation.kind is OperationKind.READ

        async def send() -> Verdict:
            return await self.send_once(
                request, time_limit=time_limit, read=read, endpoint=endpoint
            )

        try:
            verdict = await breaker.call(send)
        except CircuitOpen as exc:
            return Verdict(FailureClass.CIRCUIT_OPEN, error=exc, retry_after=exc.retry_after)
        if verdict.failure is None or verdict.failure.sent:
            run.outcome.sent = True
        return verdict

    def _at(self, endpoint: Endpoint) -> tuple[Upstream, BreakerRegistry]:
        """The transport and the breakers of `endpoint`."""
        if endpoint is Endpoint.BACKUP:
            assert self.failover is not None  # only routed there with one
            return self.failover.upstream, self.failover.breakers
        return self._upstream, self.breakers

    async def send_once(
        self,
        request: UpstreamRequest,
        *,
        time_limit: float,
        read: bool = False,
        endpoint: Endpoint = Endpoint.PRIMARY,
    ) -> Verdict:
        """One classified attempt at `endpoint` outside the breaker and the retries (for health
        probes); `read` says whether it is a `read` operation's."""
        started = self._clock.monotonic()
        try:
            response = await self._at(endpoint)[0].send(request, time_limit=time_limit)
        except GatewayError as exc:
            verdict = self._classifier.of_error(exc)
        else:
            verdict = self._classifier.of_response(response, read=read)
        if verdict.misconfigured:
            log.error(
                "the platform refused the gateway's own configuration, not the request: check "
                "that the application has this API enabled on the platform, that the seller's "
                "tax number (upstream.auth.user_tax) belongs to the token, and the operation's "
                "method name; nothing passes until the configuration is fixed",
                operation=request.operation,
                code=verdict.code,
            )
        if self.observer is not None:
            self.observer.attempt(
                request.operation, verdict, self._clock.monotonic() - started, endpoint
            )
        return verdict

    def _retryable(self, verdict: Verdict, run: _Run) -> bool:
        failure = verdict.failure
        if failure is None or failure not in run.policy.retry_on:
            return False
        if run.operation.kind is OperationKind.SUBMIT:
            if failure.answer_lost:
                return False  # never resent blindly: the invoice may exist; the outbox reconciles
            if failure.sent and run.operation.business_key is None:
                return False  # no business key, so the platform cannot detect a duplicate
        return True

    def _wait(self, state: RetryCallState, run: _Run) -> float:
        verdict: Verdict = state.outcome.result() if state.outcome else Verdict(None)
        if verdict.retry_after is not None:
            if verdict.retry_after > run.policy.retry_after_cap:
                run.give_up = f"Retry-After {verdict.retry_after:g}s exceeds the cap"
                return 0.0
            return verdict.retry_after
        return run.policy.backoff(run.outcome.attempts, self._rng)

    def _stop(self, state: RetryCallState, run: _Run) -> bool:
        reason: str | None = run.give_up
        if reason is None and run.outcome.attempts >= run.policy.attempts:
            reason = "attempts exhausted"
        if reason is None:
            sleep = state.upcoming_sleep
            if self._clock.monotonic() + sleep + MIN_ATTEMPT_SECONDS > run.deadline_at:
                reason = "deadline"
        if reason is None and not self.budget.try_acquire():
            reason = "retry budget"
        run.outcome.stopped_by = reason
        return reason is not None

    def _log_retry(self, state: RetryCallState, run: _Run) -> None:
        verdict: Verdict | None = state.outcome.result() if state.outcome else None
        if self.observer is not None:
            self.observer.retry(run.operation.name)
        log.info(
            "retrying",
            operation=run.operation.name,
            attempt=run.outcome.attempts,
            failure=verdict.failure if verdict else None,
            sleep_s=round(state.upcoming_sleep, 3),
        )
