"""The resilience pipeline on a fake transport and a fake clock: nothing sleeps for real."""

from __future__ import annotations

import email.utils
import random
from collections.abc import AsyncIterator
from typing import Any, get_args

import aiohttp
import pytest
from multidict import CIMultiDict
from structlog.testing import capture_logs

from gateway.config import (
    BreakerConfig,
    BusinessCodesConfig,
    RetryableClassName,
    RetryBudgetConfig,
    RetryPolicyConfig,
)
from gateway.errors import UpstreamTimeout, UpstreamUnreachable
from gateway.jsonpointer import JsonPointer
from gateway.operations import Operation, OperationKind
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.failures import FailureClass, FailureClassifier
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.retry import RetryBudget, RetryPolicy
from gateway.upstream.models import UpstreamRequest, UpstreamResponse
from tests.support.fakes import (
    FakeClock,
    HandlerUpstream,
    ScriptedUpstream,
    platform_answer,
    signing_auth,
)

READ = Operation("query", OperationKind.READ)
SUBMIT = Operation("issue", OperationKind.SUBMIT, business_key=JsonPointer("/order/orderNo"))
SUBMIT_NO_KEY = Operation("issue-unkeyed", OperationKind.SUBMIT)
OK = platform_answer({"code": "E0000"})
BUSY = platform_answer({"code": "040102"})
DOWN = platform_answer({"error": "x"}, status=503)
TOKEN_REJECTED = platform_answer({"code": "070301"})
CLOCK_REFUSED = {"code": "070601", "describe": "signature check failed"}
ALL_RETRYABLE: list[str] = list(get_args(RetryableClassName))


def make(
    script: list[Any],
    *,
    attempts: int = 4,
    deadline: float = 10.0,
    retry_on: list[str] | None = None,
    base: float = 0.1,
    cap: float = 2.0,
    retry_after_cap: float = 5.0,
    budget: RetryBudgetConfig | None = None,
    breaker: BreakerConfig | None = None,
    duration: float = 0.01,
    clock: FakeClock | None = None,
    upstream: Any = None,
) -> tuple[ResiliencePipeline, ScriptedUpstream, FakeClock]:
    """A pipeline on `upstream` (default: a `ScriptedUpstream` answering from `script`)."""
    clock = clock or FakeClock()
    upstream = upstream or ScriptedUpstream(clock, script, duration=duration)
    policy = RetryPolicy.resolve(
        RetryPolicyConfig.model_validate(
            {
                "deadline": deadline,
                "attempts": attempts,
                "backoff": {"base": base, "cap": cap},
                "retry_on": retry_on if retry_on is not None else ALL_RETRYABLE,
                "retry_after_cap": retry_after_cap,
            }
        ),
        RetryPolicyConfig(),
    )
    pipeline = ResiliencePipeline(
        upstream=upstream,
        classifier=FailureClassifier(BusinessCodesConfig(), clock),
        breakers=BreakerRegistry(
            breaker or BreakerConfig(failure_threshold=1000, min_calls=10**6), clock
        ),
        budget=RetryBudget(budget or RetryBudgetConfig(ratio=1.0, min_retries=10**6), clock),
        policies={},
        kind_policies={kind: policy for kind in OperationKind},
        attempt_timeout=3.0,
        clock=clock,
        rng=random.Random(1),
    )
    return pipeline, upstream, clock


def request() -> UpstreamRequest:
    return UpstreamRequest(
        method="POST", path="/open/v1/services", query=(), headers=CIMultiDict(), body=b"{}"
    )


async def test_busy_then_success_is_absorbed() -> None:
    """A busy code followed by success ends in success after one jittered back-off."""
    pipeline, _upstream, clock = make([BUSY, OK])
    outcome = await pipeline.execute(request(), READ)
    assert outcome.ok
    assert 2 == outcome.attempts
    assert [FailureClass.BUSY] == outcome.failures
    assert 1 == len(clock.sleeps)
    assert 0.0 <= clock.sleeps[0] <= 0.1


async def test_attempts_are_capped() -> None:
    """A platform that keeps failing gets `attempts` tries; the last verdict is returned."""
    pipeline, upstream, _ = make([DOWN], attempts=4)
    outcome = await pipeline.execute(request(), READ)
    assert FailureClass.HTTP_5XX == outcome.verdict.failure
    assert 4 == len(upstream.calls)
    assert "attempts exhausted" == outcome.stopped_by


@pytest.mark.parametrize("duration", [0.05, 0.4, 1.3, 2.9])
async def test_deadline_is_never_exceeded(duration: float) -> None:
    """Attempts plus back-off sleeps fit inside the deadline, whatever the platform's latency."""
    pipeline, upstream, clock = make(
        [DOWN], attempts=20, deadline=3.0, base=0.5, cap=4.0, duration=duration
    )
    started = clock.monotonic()
    outcome = await pipeline.execute(request(), READ)
    assert clock.monotonic() - started <= 3.0
    assert all(limit is not None and limit <= 3.0 for limit in upstream.calls)
    assert outcome.stopped_by in ("deadline", "attempts exhausted")


async def test_each_attempt_gets_what_is_left_of_the_deadline() -> None:
    """The per-attempt time limit shrinks so the last attempt ends by the deadline."""
    pipeline, upstream, _ = make(
        [DOWN], attempts=3, deadline=4.0, base=0.001, cap=0.001, duration=1.5
    )
    await pipeline.execute(request(), READ)
    assert 3.0 == upstream.calls[0]  # the attempt timeout, smaller than the deadline
    assert upstream.calls[1] is not None
    assert upstream.calls[1] <= 2.5


async def test_retry_after_is_honoured() -> None:
    """A 429 with Retry-After: 2 waits exactly 2 s before the retry."""
    limited = platform_answer({}, status=429, headers={"Retry-After": "2"})
    pipeline, _, clock = make([limited, OK])
    outcome = await pipeline.execute(request(), READ)
    assert outcome.ok
    assert [2.0] == clock.sleeps


async def test_retry_after_above_cap_stops_retrying() -> None:
    """A Retry-After longer than the cap is not waited out in-request; it is passed on."""
    limited = platform_answer({}, status=429, headers={"Retry-After": "60"})
    pipeline, upstream, clock = make([limited, OK], retry_after_cap=5.0)
    outcome = await pipeline.execute(request(), READ)
    assert FailureClass.HTTP_429 == outcome.verdict.failure
    assert 60.0 == outcome.verdict.retry_after
    assert 1 == len(upstream.calls)
    assert [] == clock.sleeps


async def test_only_configured_classes_are_retried() -> None:
    """A failure class outside `retry_on` ends the attempts at once."""
    pipeline, upstream, _ = make([DOWN, OK], retry_on=["busy"])
    outcome = await pipeline.execute(request(), READ)
    assert FailureClass.HTTP_5XX == outcome.verdict.failure
    assert 1 == len(upstream.calls)


async def test_permanent_answers_are_not_retried() -> None:
    """A permanent business error (0201) is the platform's verdict: one attempt."""
    pipeline, upstream, _ = make([platform_answer({"code": "0201"}), OK])
    outcome = await pipeline.execute(request(), SUBMIT)
    assert FailureClass.PERMANENT == outcome.verdict.failure
    assert 1 == len(upstream.calls)


async def test_answer_lost_submit_is_never_resent() -> None:
    """A submit whose answer was lost is not resent blindly, even if the class is retryable."""
    pipeline, upstream, _ = make([UpstreamTimeout("read timeout", sent=True), OK])
    outcome = await pipeline.execute(request(), SUBMIT)
    assert FailureClass.TIMEOUT == outcome.verdict.failure
    assert 1 == len(upstream.calls)
    assert outcome.sent


async def test_answer_lost_read_is_retried() -> None:
    """A read whose answer was lost is simply asked again."""
    pipeline, upstream, _ = make([UpstreamTimeout("read timeout", sent=True), OK])
    assert (await pipeline.execute(request(), READ)).ok
    assert 2 == len(upstream.calls)


async def test_submit_not_sent_is_retried() -> None:
    """A submit that provably never left (connection refused) is retried."""
    pipeline, upstream, _ = make([UpstreamUnreachable("refused"), OK])
    outcome = await pipeline.execute(request(), SUBMIT)
    assert outcome.ok
    assert 2 == len(upstream.calls)


async def test_submit_without_business_key_is_not_resent_after_reaching_the_platform() -> None:
    """Without a business key the platform cannot spot a duplicate: a 503 is not resent."""
    pipeline, upstream, _ = make([DOWN, OK])
    outcome = await pipeline.execute(request(), SUBMIT_NO_KEY)
    assert FailureClass.HTTP_5XX == outcome.verdict.failure
    assert 1 == len(upstream.calls)


async def test_token_rejected_renews_once_then_retries_once() -> None:
    """070301 causes one token renewal and one resend, within the same attempt."""
    pipeline, upstream, clock = make([platform_answer({"code": "070301"}, request=request()), OK])
    outcome = await pipeline.execute(request(), READ)
    assert outcome.ok
    assert 1 == upstream.auth.renewals
    assert 2 == len(upstream.calls)
    assert [] == clock.sleeps


async def test_token_rejected_twice_is_not_a_renewal_loop() -> None:
    """A token rejected again after renewal ends the request; no second renewal."""
    rejected = platform_answer({"code": "070301"}, request=request())
    pipeline, upstream, _ = make([rejected])
    outcome = await pipeline.execute(request(), READ)
    assert FailureClass.AUTH == outcome.verdict.failure
    assert 1 == upstream.auth.renewals
    assert 2 == len(upstream.calls)


async def test_budget_stops_a_retry_storm() -> None:
    """1,000 requests against a failing platform add at most 20 % + min_retries retries."""
    budget = RetryBudgetConfig(ratio=0.2, min_retries=10, window=60.0)
    pipeline, upstream, _ = make(
        [DOWN], attempts=4, budget=budget, base=0.001, cap=0.001, duration=0.001
    )
    for _ in range(1000):
        await pipeline.execute(request(), READ)
    retries = len(upstream.calls) - 1000
    assert retries <= 0.2 * 1000 + 10
    assert pipeline.budget.rejected > 0


async def test_open_circuit_fails_fast_without_sending() -> None:
    """Once the breaker opens, requests end as circuit_open without touching the platform."""
    breaker = BreakerConfig(failure_threshold=3, reset_timeout=30.0)
    pipeline, upstream, _ = make([DOWN], attempts=1, breaker=breaker)
    for _ in range(3):
        await pipeline.execute(request(), READ)
    assert 3 == len(upstream.calls)
    outcome = await pipeline.execute(request(), READ)
    assert FailureClass.CIRCUIT_OPEN == outcome.verdict.failure
    assert outcome.verdict.retry_after is not None
    assert 0 < outcome.verdict.retry_after <= 30.0
    assert 3 == len(upstream.calls)
    assert not outcome.sent


async def test_failed_token_renewal_is_token_unavailable_not_a_crash() -> None:
    """When renewing a rejected token fails, the attempt ends as token_unavailable (retryable)."""
    from gateway.errors import TokenUnavailable

    pipeline, upstream, _ = make([platform_answer({"code": "070301"}, request=request()), OK])

    async def no_token(_request: object) -> None:
        raise TokenUnavailable("the token endpoint is busy")

    upstream.auth.credentials_rejected = no_token  # type: ignore[method-assign]
    outcome = await pipeline.execute(request(), READ)
    assert [FailureClass.TOKEN_UNAVAILABLE] == outcome.failures[:1]
    assert outcome.ok  # retried, and the platform answered the retry


# -- codes whose meaning depends on the operation, or on the gateway's setup ------------------

BILLING_EXCEPTION = platform_answer({"code": "0202"})


async def test_billing_exception_is_asked_again_by_a_read() -> None:
    """0202 (billing exception) on a read is retried like busy, and the retry's answer counts."""
    pipeline, upstream, _ = make([BILLING_EXCEPTION, OK])
    outcome = await pipeline.execute(request(), READ)
    assert (True, [FailureClass.BUSY], 2) == (outcome.ok, outcome.failures, len(upstream.calls))


async def test_billing_exception_is_a_verdict_for_a_submit() -> None:
    """0202 on a submit is final at once: the invoice is never sent a second time for it."""
    pipeline, upstream, _ = make([BILLING_EXCEPTION, OK])
    outcome = await pipeline.execute(request(), SUBMIT)
    assert (FailureClass.PERMANENT, 1) == (outcome.verdict.failure, len(upstream.calls))


async def test_configuration_refusal_is_final_and_logged_as_a_configuration_problem() -> None:
    """070302 (API not enabled) fails at once and is logged as an error about the setup."""
    pipeline, upstream, _ = make([platform_answer({"code": "070302"}), OK])
    with capture_logs() as logs:
        outcome = await pipeline.execute(request(), READ)
    assert (FailureClass.PERMANENT, 1) == (outcome.verdict.failure, len(upstream.calls))
    [entry] = [e for e in logs if e["log_level"] == "error"]
    assert "070302" == entry["code"]
    assert "the gateway's own configuration" in entry["event"]


# -- the gateway's signature, refused by the platform (070601: check the clock) ----------------


async def test_refused_clock_is_corrected_once_then_resent_once() -> None:
    """070601 lets the auth scheme learn the platform's clock, then resends within the attempt."""
    pipeline, upstream, clock = make([platform_answer(CLOCK_REFUSED, request=request()), OK])
    outcome = await pipeline.execute(request(), SUBMIT)
    assert outcome.ok
    assert (1, 1, 2) == (outcome.attempts, upstream.auth.clock_rejections, len(upstream.calls))
    assert [] == outcome.failures
    assert [] == clock.sleeps


async def test_refused_clock_without_a_correction_is_not_final_and_not_sent() -> None:
    """No clock learned (no Date): no resend; clock_skew says the platform did not act on it."""
    pipeline, upstream, _ = make([platform_answer(CLOCK_REFUSED), OK])
    upstream.auth.clock_learned = False
    outcome = await pipeline.execute(request(), SUBMIT)
    assert FailureClass.CLOCK_SKEW == outcome.verdict.failure
    assert (1, 1) == (upstream.auth.clock_rejections, len(upstream.calls))
    assert not outcome.sent  # so the submission is queued, never failed nor reconciled


async def test_clock_refused_again_after_resigning_is_not_a_loop() -> None:
    """A re-signed request refused again ends the request as clock_skew; one correction only."""
    pipeline, upstream, _ = make([platform_answer(CLOCK_REFUSED, request=request())])
    outcome = await pipeline.execute(request(), READ)
    assert FailureClass.CLOCK_SKEW == outcome.verdict.failure
    assert (1, 2) == (upstream.auth.clock_rejections, len(upstream.calls))
    assert [FailureClass.CLOCK_SKEW] == outcome.failures


async def test_token_and_clock_are_each_cured_once_in_one_attempt() -> None:
    """A rejected token, then a refused clock: each is cured once within the attempt, and the
    third send succeeds; a token rejected again after that is not renewed a second time."""
    token_rejected = platform_answer({"code": "070301"}, request=request())
    clock_refused = platform_answer(CLOCK_REFUSED, request=request())

    pipeline, upstream, _ = make([token_rejected, clock_refused, OK])
    assert (await pipeline.execute(request(), READ)).ok
    auth = upstream.auth
    assert (1, 1, 3) == (auth.renewals, auth.clock_rejections, len(upstream.calls))

    pipeline, upstream, _ = make([token_rejected, clock_refused, token_rejected, OK], attempts=1)
    outcome = await pipeline.execute(request(), READ)
    assert FailureClass.AUTH == outcome.verdict.failure
    auth = upstream.auth
    assert (1, 1, 3) == (auth.renewals, auth.clock_rejections, len(upstream.calls))


class SkewedPlatform:
    """A platform whose clock is `ahead` seconds past the gateway's: it refuses a signed
    timestamp more than 300 s off its own with 070601, stating its time in `Date`."""

    def __init__(self, clock: FakeClock, *, ahead: float) -> None:
        self._clock = clock
        self.ahead = ahead

    def now(self) -> float:
        return self._clock.wall() + self.ahead

    def __call__(self, signed: UpstreamRequest) -> UpstreamResponse:
        if abs(int(dict(signed.query)["timestamp"]) - self.now()) > 300:
            date = email.utils.formatdate(self.now(), usegmt=True)
            return platform_answer(CLOCK_REFUSED, headers={"Date": date}, request=signed)
        return OK


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_clock_jump_is_corrected_from_the_platform_date(
    session: aiohttp.ClientSession,
) -> None:
    """Gateway clock an hour behind: the resend is signed with about wall + 3600 and succeeds;
    later requests are signed with the platform's time from the start."""
    clock = FakeClock()
    auth = signing_auth(clock, session)
    upstream = HandlerUpstream(clock, SkewedPlatform(clock, ahead=3600), auth=auth)
    pipeline, _, _ = make([], clock=clock, upstream=upstream)

    outcome = await pipeline.execute(request(), SUBMIT)
    assert outcome.ok
    refused, resent = (int(dict(r.query)["timestamp"]) for r in upstream.requests)
    assert int(clock.wall()) == pytest.approx(refused, abs=1)
    assert int(clock.wall()) + 3600 == pytest.approx(resent, abs=1)
    assert 3600 == pytest.approx(auth.clock_offset, abs=1)

    clock.advance(60)
    assert (await pipeline.execute(request(), SUBMIT)).ok
    assert 3 == len(upstream.requests)  # no refusal: the offset is kept
