"""The dispatcher on the real SQLite store, a fake platform and a fake clock.

Failure behaviour first: what is sent, what is recorded, and what is never sent twice.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import inspect
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from gateway.config import (
    BreakerConfig,
    BusinessCodesConfig,
    OperationConfig,
    OutboxConfig,
    RetryBudgetConfig,
    RetryPolicyConfig,
    parse_config,
)
from gateway.errors import StoreError, TokenUnavailable, UpstreamTimeout, UpstreamUnreachable
from gateway.operations import OperationKind
from gateway.outbox.dispatcher import Dispatcher
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.submissions import (
    NewSubmission,
    Submission,
    SubmissionState,
    Transition,
    fingerprint,
)
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.failures import FailureClass, FailureClassifier, Verdict
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.retry import RetryBudget, RetryPolicy
from gateway.upstream.auth.signature import signature_message
from gateway.upstream.models import UpstreamResponse
from tests.support.fakes import (
    FakeClock,
    HandlerUpstream,
    ManualClock,
    platform_answer,
    signing_auth,
)
from tests.support.operations import ISSUE, NOTE, QUERY, SERVICES
from tests.support.processes import ROOT

OK = platform_answer({"code": "E0000", "result": {"invoiceSerialNum": "S-1"}})
BUSY = platform_answer({"code": "040102", "describe": "busy"})
DUPLICATE = platform_answer({"code": "E9106", "describe": "订单编号已存在"})
INVALID = platform_answer({"code": "0201", "describe": "buyerName empty"})
DOWN = platform_answer({"error": "down"}, status=503)
ENTRY = {"serialNo": "S-1", "orderNo": "ORD-1", "status": 20, "buyerTaxNum": "91110000000000000X"}
FOUND = platform_answer({"code": "E0000", "result": [ENTRY]})
NOTHING = platform_answer({"code": "E0000", "result": []})
BASE = 1.0


class Platform:
    """The fake platform: replies per `method` header (the last one repeats; a callable is
    called with the signed request), optionally held in flight until `gate` is set."""

    def __init__(self) -> None:
        self.script: dict[str, list[Any]] = {"issue": [OK], "note": [OK], "query": [FOUND]}
        self.gate: asyncio.Event | None = None

    def __call__(self, request: Any) -> Any:
        replies = self.script[request.headers["method"]]
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if callable(reply):
            reply = reply(request)
        if self.gate is not None:
            return self._held(self.gate, reply)
        return reply

    @staticmethod
    async def _held(gate: asyncio.Event, reply: Any) -> Any:
        await gate.wait()
        return reply


@dataclass
class Rig:
    store: SqliteStore
    clock: FakeClock
    platform: Platform
    upstream: HandlerUpstream
    pipeline: ResiliencePipeline
    breakers: BreakerRegistry
    dispatcher: Dispatcher
    config: OutboxConfig

    async def queue(
        self,
        order: str = "ORD-1",
        *,
        tenant: str = "t1",
        operation: str = "issue",
        ordering_key: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        query: tuple[tuple[str, str], ...] = (),
    ) -> Submission:
        """Admit a submission as the proxy does when it cannot forward now: `queued`."""
        return await self._admit(order, tenant, operation, ordering_key, headers, query, True)

    async def unknown(self, order: str = "ORD-1", *, operation: str = "issue") -> Submission:
        """A submission whose answer was lost while the proxy forwarded it."""
        admitted = await self._admit(order, "t1", operation, None, (), (), False)
        change = Transition(
            SubmissionState.UNKNOWN,
            attempts_delta=1,
            maybe_sent=True,
            acknowledged=True,
            error_class="timeout",
            error="answer lost",
            next_attempt_at=self.clock.wall(),
        )
        row = await self.store.transition(admitted.id, 0, change, now=self.clock.wall())
        assert row is not None
        return row

    async def set(self, submission: Submission, change: Transition) -> None:
        """Move a row as another component would (set-up only)."""
        row = await self.get(submission)
        assert await self.store.transition(row.id, row.fence, change, now=self.clock.wall())

    async def get(self, submission: Submission) -> Submission:
        row = await self.store.get(submission.id)
        assert row is not None
        return row

    async def _admit(
        self,
        order: str,
        tenant: str,
        operation: str,
        ordering_key: str | None,
        headers: tuple[tuple[str, str], ...],
        query: tuple[tuple[str, str], ...],
        queue: bool,
    ) -> Submission:
        body = json.dumps({"order": {"orderNo": order, "buyerName": "某某公司"}}).encode()
        new = NewSubmission(
            tenant=tenant,
            operation=operation,
            idempotency_key=order,
            fingerprint=fingerprint(body),
            business_key=order if operation == "issue" else None,
            ordering_key=ordering_key,
            method="POST",
            path=SERVICES,
            query=query,
            headers=(("method", operation), ("Content-Type", "application/json"), *headers),
            body=body,
            request_id=f"req-{order}",
        )
        admission = await self.store.admit(
            new, queue=queue, owner="proxy", lease_seconds=60.0, now=self.clock.wall()
        )
        return admission.submission


Build = Callable[..., Awaitable[Rig]]
#: The reconcile rule's `settle` in these tests: lookups spanning it prove absence.
SETTLE = 4.0


def with_strategy(operation: OperationConfig, strategy: str) -> OperationConfig:
    """`operation` reconciling with `strategy` (`lookup-first` or `resend`)."""
    assert operation.reconcile is not None
    rule = operation.reconcile.model_copy(update={"strategy": strategy, "settle": SETTLE})
    return operation.model_copy(update={"reconcile": rule})


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Build]:
    """Builds rigs on a fresh SQLite file each; stops and closes them afterwards."""
    built: list[Rig] = []

    async def build(
        *,
        outbox: dict[str, Any] | None = None,
        dispatcher: dict[str, Any] | None = None,
        breaker: BreakerConfig | None = None,
        clock: FakeClock | None = None,
        auth: Any = None,
        strategy: str = "lookup-first",
    ) -> Rig:
        clock = clock or FakeClock()
        store = await SqliteStore.open(tmp_path / f"outbox-{len(built)}.db", synchronous="NORMAL")
        config = OutboxConfig.model_validate(
            {
                "lease": 60,
                "max_attempts": 5,
                "max_age": 3600,
                "backoff": {"base": BASE, "cap": 60},
                "retention": 7200,
                "sweep_interval": 60,
                **(outbox or {}),
                "dispatcher": {
                    "concurrency": 8,
                    "rate": 1000,
                    "burst": 1000,
                    "poll_interval": 0.5,
                    "batch": 64,
                    **(dispatcher or {}),
                },
            }
        )
        platform = Platform()
        upstream = HandlerUpstream(clock, platform, auth=auth)
        read = RetryPolicy.resolve(
            RetryPolicyConfig.model_validate(
                {
                    "deadline": 10.0,
                    "attempts": 2,
                    "backoff": {"base": 0.1, "cap": 0.5},
                    "retry_on": ["busy", "timeout", "http_5xx"],
                    "retry_after_cap": 5.0,
                }
            ),
            RetryPolicyConfig(),
        )
        breakers = BreakerRegistry(
            breaker or BreakerConfig(failure_threshold=1000, min_calls=10**6), clock
        )
        pipeline = ResiliencePipeline(
            upstream=upstream,
            classifier=FailureClassifier(BusinessCodesConfig(), clock),
            breakers=breakers,
            budget=RetryBudget(RetryBudgetConfig(ratio=1.0, min_retries=10**6), clock),
            policies={},
            kind_policies={kind: read for kind in OperationKind},
            attempt_timeout=3.0,
            clock=clock,
            rng=random.Random(1),
        )
        rig = Rig(
            store=store,
            clock=clock,
            platform=platform,
            upstream=upstream,
            pipeline=pipeline,
            breakers=breakers,
            dispatcher=Dispatcher(
                store=store,
                pipeline=pipeline,
                breakers=breakers,
                operations=[with_strategy(ISSUE, strategy), NOTE, QUERY],
                config=config,
                send_timeout=3.0,
                clock=clock,
                owner="dispatcher-test",
                rng=random.Random(7),
            ),
            config=config,
        )
        built.append(rig)
        return rig

    yield build
    for rig in built:
        if rig.platform.gate is not None:
            rig.platform.gate.set()
        await rig.dispatcher.stop(grace=0)
        await rig.store.close()


async def until(condition: Callable[[], Any], *, within: float = 3.0) -> None:
    """Let the event loop run until `condition()` (or its awaited value) is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError("the condition was not reached in time")
        await asyncio.sleep(0.001)


class StoreDown:
    """The store's `calls` (method names) raise `StoreError` while `down`, as they do while
    PostgreSQL is stopped; `refused` counts the calls refused."""

    def __init__(self, store: Any, calls: Iterable[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = True
        self.refused = 0
        for name in calls:
            monkeypatch.setattr(store, name, self._refusing(name, getattr(store, name)))

    def _refusing(
        self, name: str, call: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def refusing(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise StoreError(f"cannot {name}: connection refused")
            return await call(*args, **kwargs)

        return refusing


def body_of(response: UpstreamResponse) -> Any:
    return json.loads(response.body)


async def trip(rig: Rig) -> None:
    """Open the upstream circuit the way failing calls do."""

    async def failing() -> Verdict:
        return Verdict(FailureClass.HTTP_5XX)

    await rig.breakers.for_operation("issue").call(failing)


# -- delivery and its failures ----------------------------------------------------------------


async def test_queued_row_is_delivered_exactly_once(make: Build) -> None:
    """A queued submission is sent once, recorded as delivered with the platform's answer."""
    rig = await make()
    queued = await rig.queue()
    assert 1 == await rig.dispatcher.drain_once()
    assert 0 == await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert SubmissionState.DELIVERED == row.state
    assert 1 == row.attempts
    assert row.response is not None
    assert (200, body_of(OK)) == (row.response.status, json.loads(row.response.body))
    assert row.last_error_class is None
    assert 1 == len(rig.upstream.sent("issue"))
    assert 1 == rig.dispatcher.stats.delivered


async def test_busy_is_requeued_with_backoff_then_delivered(make: Build) -> None:
    """A busy answer puts it back with a jittered back-off within [0, base]; then it goes."""
    rig = await make()
    rig.platform.script["issue"] = [BUSY, OK]
    queued = await rig.queue()
    now = rig.clock.wall()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.QUEUED, 1, "busy", False) == (
        row.state,
        row.attempts,
        row.last_error_class,
        row.maybe_sent,
    )
    assert row.next_attempt_at is not None
    assert 0.0 <= row.next_attempt_at - now <= BASE
    rig.clock.advance(BASE)
    assert 1 == await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.DELIVERED, 2) == (row.state, row.attempts)
    assert 2 == len(rig.upstream.sent("issue"))


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    """Attempt n waits uniformly in [0, min(cap, base * 2**(n-1))]: it grows, capped."""
    dispatcher = Dispatcher(
        store=None,  # type: ignore[arg-type]
        pipeline=None,  # type: ignore[arg-type]
        breakers=BreakerRegistry(BreakerConfig(), FakeClock()),
        operations=[],
        config=OutboxConfig.model_validate({"backoff": {"base": 1, "cap": 30}}),
        send_timeout=3.0,
        clock=FakeClock(),
        owner="d",
        rng=random.Random(3),
    )
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]:
        waits = [dispatcher.backoff(attempt) for _ in range(200)]
        assert all(0.0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling * 0.8


async def test_retry_after_longer_than_the_backoff_is_honoured(make: Build) -> None:
    """A 429 asking for 120 s is not tried again before 120 s."""
    rig = await make()
    rig.platform.script["issue"] = [platform_answer({}, status=429, headers={"Retry-After": "120"})]
    queued = await rig.queue()
    now = rig.clock.wall()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.QUEUED, "http_429", False) == (
        row.state,
        row.last_error_class,
        row.maybe_sent,
    )
    assert row.next_attempt_at is not None
    assert 120.0 <= row.next_attempt_at - now
    rig.clock.advance(119)
    assert 0 == await rig.dispatcher.drain_once()


@pytest.mark.parametrize(
    ("reply", "failure", "attempts"),
    [
        (UpstreamUnreachable("connection refused"), "refused", 1),
        (UpstreamTimeout("connect timeout", sent=False), "connect_timeout", 1),
        (TokenUnavailable("token endpoint down"), "token_unavailable", 0),
    ],
)
async def test_not_sent_is_requeued_not_failed(
    make: Build, reply: Exception, failure: str, attempts: int
) -> None:
    """A delivery that never left (even for want of a token) is queued again, not failed; one
    that had no token does not use up an attempt."""
    rig = await make()
    rig.platform.script["issue"] = [reply]
    queued = await rig.queue()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.QUEUED, attempts, failure, False) == (
        row.state,
        row.attempts,
        row.last_error_class,
        row.maybe_sent,
    )
    assert 1 == rig.dispatcher.stats.requeued


async def test_answer_lost_is_reconciled_by_duplicate_code_and_lookup(make: Build) -> None:
    """Answer lost → unknown; the resend gets E9106 → one lookup → delivered with its entry."""
    rig = await make(strategy="resend")
    rig.platform.script["issue"] = [UpstreamTimeout("read timeout", sent=True), DUPLICATE]
    queued = await rig.queue()
    now = rig.clock.wall()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.UNKNOWN, True, 1, "timeout") == (
        row.state,
        row.maybe_sent,
        row.attempts,
        row.last_error_class,
    )
    assert row.next_attempt_at is not None
    assert 0.0 <= row.next_attempt_at - now <= BASE
    assert [] == rig.upstream.sent("query")

    rig.clock.advance(BASE)
    assert 1 == await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert SubmissionState.DELIVERED == row.state
    assert row.result is not None
    assert (True, ENTRY, "E9106") == (
        row.result["reconciled"],
        row.result["lookup"],
        row.result["duplicate_code"],
    )
    assert row.response is not None
    # A client asking again gets what was found, never "order number already used".
    assert {
        "submission_id": row.id,
        "status": "delivered",
        "reconciled": True,
        "lookup": ENTRY,
    } == (json.loads(row.response.body))
    assert ("X-Gateway-Reconciled", "true") in row.response.headers
    assert row.last_error_class is None
    assert 2 == len(rig.upstream.sent("issue"))
    assert 1 == len(rig.upstream.sent("query"))
    assert ["ORD-1"] == json.loads(rig.upstream.sent("query")[0].body)["orderNos"]
    assert (1, 1) == (rig.dispatcher.stats.reconciled, rig.dispatcher.stats.delivered)


async def test_server_error_may_have_been_processed(make: Build) -> None:
    """A 503 leaves it unknown and maybe-sent: the next resend's E9106 is proof of success."""
    rig = await make()
    rig.platform.script["issue"] = [DOWN, DUPLICATE]
    queued = await rig.queue()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.UNKNOWN, True, "http_5xx") == (
        row.state,
        row.maybe_sent,
        row.last_error_class,
    )
    rig.clock.advance(BASE)
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert SubmissionState.DELIVERED == row.state
    assert row.result is not None
    assert row.result["reconciled"]


async def test_failed_lookup_keeps_it_unknown_and_does_not_resend_again(make: Build) -> None:
    """E9106 then a failing lookup: unknown with back-off; next time only the lookup runs."""
    rig = await make(strategy="resend")
    rig.platform.script["issue"] = [DUPLICATE]
    rig.platform.script["query"] = [BUSY, BUSY, FOUND]  # the read policy tries twice
    unknown = await rig.unknown()
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.UNKNOWN, True, "lookup_failed") == (
        row.state,
        row.maybe_sent,
        row.last_error_class,
    )
    assert row.next_attempt_at is not None
    assert row.result == {"duplicate_confirmed": True, "duplicate_code": "E9106"}

    rig.clock.advance(60)
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert SubmissionState.DELIVERED == row.state
    assert row.result is not None
    assert ENTRY == row.result["lookup"]
    assert row.response is not None
    assert json.loads(row.response.body)["reconciled"] is True
    assert 1 == len(rig.upstream.sent("issue"))
    assert 3 == len(rig.upstream.sent("query"))


async def test_duplicate_without_a_lookup_result_is_parked(make: Build) -> None:
    """E9106 for a maybe-sent row whose lookups keep finding nothing (looked up again in case
    the platform lists it late) waits for on-call, unsent."""
    rig = await make(strategy="resend")
    rig.platform.script["issue"] = [DUPLICATE]
    rig.platform.script["query"] = [NOTHING]
    unknown = await rig.unknown()
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.UNKNOWN, "lookup_failed") == (row.state, row.last_error_class)
    rig.clock.advance(SETTLE)
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert 1 == len(rig.upstream.sent("issue"))
    assert (SubmissionState.UNKNOWN, None, "needs_reconciliation") == (
        row.state,
        row.next_attempt_at,
        row.last_error_class,
    )
    rig.clock.advance(86400)
    assert 0 == await rig.dispatcher.drain_once()
    assert 1 == rig.dispatcher.stats.parked


async def test_unknown_without_a_rule_is_parked_and_never_sent(make: Build) -> None:
    """A maybe-sent submission of an operation without a reconcile rule is never resent."""
    rig = await make()
    unknown = await rig.unknown(operation="note")
    assert 1 == await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.UNKNOWN, None, "needs_reconciliation", True, 1) == (
        row.state,
        row.next_attempt_at,
        row.last_error_class,
        row.maybe_sent,
        row.attempts,
    )
    assert row.last_error is not None
    assert "on-call" in row.last_error
    rig.clock.advance(86400)
    assert 0 == await rig.dispatcher.drain_once()
    assert [] == rig.upstream.requests


async def test_duplicate_of_a_never_sent_row_is_an_external_duplicate(make: Build) -> None:
    """E9106 for an order the gateway never sent: failed, with what the lookup found."""
    rig = await make()
    rig.platform.script["issue"] = [DUPLICATE]
    queued = await rig.queue()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.FAILED, "duplicate") == (row.state, row.last_error_class)
    assert row.result is not None
    assert (True, ENTRY) == (row.result["external_duplicate"], row.result["lookup"])
    assert row.response is not None
    assert body_of(DUPLICATE) == json.loads(row.response.body)
    assert "outside the gateway" in (row.last_error or "")
    assert 1 == len(rig.upstream.sent("query"))
    assert (1, 0) == (rig.dispatcher.stats.failed, rig.dispatcher.stats.delivered)


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        (INVALID, "permanent"),
        (platform_answer({"code": "070302"}), "permanent"),
        (platform_answer({"error": "bad"}, status=400), "http_4xx"),
    ],
)
async def test_permanent_answer_fails_with_the_answer(
    make: Build, reply: UpstreamResponse, failure: str
) -> None:
    """A permanent verdict is final: failed, the platform's answer kept for the client."""
    rig = await make()
    rig.platform.script["issue"] = [reply]
    queued = await rig.queue()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.FAILED, failure, 1) == (row.state, row.last_error_class, row.attempts)
    assert row.response is not None
    assert (reply.status, body_of(reply)) == (row.response.status, json.loads(row.response.body))
    assert "failed" == row.public_view()["status"]
    assert body_of(reply) == row.public_view()["response"]["body"]


async def test_max_attempts_is_dead_without_sending(make: Build) -> None:
    """A submission that used up `max_attempts` is dead, and not sent again."""
    rig = await make(outbox={"max_attempts": 3})
    queued = await rig.queue()
    await rig.set(
        queued,
        Transition(SubmissionState.QUEUED, attempts_delta=3, next_attempt_at=rig.clock.wall()),
    )
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.DEAD, "max_attempts", None) == (
        row.state,
        row.last_error_class,
        row.next_attempt_at,
    )
    assert [] == rig.upstream.requests
    assert 1 == rig.dispatcher.stats.dead


async def test_max_age_is_dead_without_sending(make: Build) -> None:
    """A submission older than `max_age` is dead, with the reason in words."""
    rig = await make(outbox={"max_age": 3600})
    queued = await rig.queue()
    rig.clock.advance(3601)
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.DEAD, "max_age") == (row.state, row.last_error_class)
    assert "max_age" in (row.last_error or "")
    assert [] == rig.upstream.requests


async def test_a_bug_while_delivering_leaves_it_unknown_not_lost(make: Build) -> None:
    """An unexpected error mid-delivery may follow a send: the row is kept as maybe-sent."""
    rig = await make()
    rig.platform.script["issue"] = [RuntimeError("bug")]
    queued = await rig.queue()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.UNKNOWN, True, "internal_error") == (
        row.state,
        row.maybe_sent,
        row.last_error_class,
    )
    assert row.next_attempt_at is not None


def test_default_profile_reconciles_both_submit_operations() -> None:
    """With config/gateway.yaml, issuing and red-letter reversal both have a lookup rule."""
    raw = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    environ = {
        "GATEWAY_DEMO_API_KEY": "k",
        "NUONUO_APP_KEY": "a",
        "NUONUO_APP_SECRET": "s",
        "NUONUO_USER_TAX": "t",
    }
    config = parse_config(raw, environ)
    clock = FakeClock()
    breakers = BreakerRegistry(config.resilience.breaker, clock)
    dispatcher = Dispatcher.from_config(
        config,
        store=None,  # type: ignore[arg-type]
        pipeline=None,  # type: ignore[arg-type]
        breakers=breakers,
        clock=clock,
    )
    routes = dispatcher.routes
    assert {
        "nuonuo.OpeMplatform.requestBillingNew",
        "nuonuo.OpeMplatform.fastInvoiceRed",
    } == set(routes)
    for route in routes.values():
        assert route.reconciler is not None
        assert "nuonuo.OpeMplatform.queryInvoiceResult" == route.reconciler.operation.name


# -- the circuit ------------------------------------------------------------------------------


async def test_open_circuit_claims_nothing(make: Build) -> None:
    """While the circuit is open nothing is claimed; after its reset timeout one trial goes."""
    rig = await make(breaker=BreakerConfig(failure_threshold=1, reset_timeout=15))
    await trip(rig)
    queued = await rig.queue()
    assert 0 == await rig.dispatcher.drain_once()
    assert SubmissionState.QUEUED == (await rig.get(queued)).state
    assert [] == rig.upstream.requests
    rig.clock.advance(15)
    assert 1 == await rig.dispatcher.drain_once()
    assert SubmissionState.DELIVERED == (await rig.get(queued)).state
    assert CircuitState.CLOSED == rig.breakers.for_operation("issue").state


async def test_forced_open_circuit_claims_nothing(make: Build) -> None:
    """An operator's forced-open circuit stops the dispatcher too."""
    rig = await make()
    rig.breakers.force_open("drill")
    await rig.queue()
    rig.clock.advance(3600)
    assert 0 == await rig.dispatcher.drain_once()
    assert [] == rig.upstream.requests


async def test_half_open_circuit_claims_one(make: Build) -> None:
    """Half-open, the dispatcher's delivery is the single trial call."""
    rig = await make(
        breaker=BreakerConfig(failure_threshold=1, reset_timeout=15, success_threshold=2)
    )
    await trip(rig)
    rig.clock.advance(15)

    async def succeeding() -> Verdict:
        return Verdict(None)

    await rig.breakers.for_operation("issue").call(succeeding)
    assert CircuitState.HALF_OPEN == rig.breakers.for_operation("issue").state
    for index in range(3):
        await rig.queue(f"ORD-{index}")
    assert 1 == await rig.dispatcher.drain_once()
    assert CircuitState.CLOSED == rig.breakers.for_operation("issue").state
    assert 2 == await rig.dispatcher.drain_once()


async def test_circuit_open_at_send_is_requeued_without_counting(make: Build) -> None:
    """Refused by its own open circuit: queued again, no attempt counted, nothing sent."""
    rig = await make(breaker=BreakerConfig(scope="operation", reset_timeout=30))
    rig.breakers.for_operation("issue").force_open("drill")
    rig.breakers.for_operation("note")  # another operation's circuit is closed
    queued = await rig.queue()
    now = rig.clock.wall()
    assert 1 == await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.QUEUED, 0, "circuit_open") == (
        row.state,
        row.attempts,
        row.last_error_class,
    )
    assert row.next_attempt_at is not None
    assert 30.0 == pytest.approx(row.next_attempt_at - now)
    assert [] == rig.upstream.requests


# -- control, limits, ownership -----------------------------------------------------------------


async def test_pause_delivers_nothing_until_resume(make: Build) -> None:
    """Paused, nothing is claimed; resumed, it is delivered."""
    rig = await make()
    queued = await rig.queue()
    rig.dispatcher.pause()
    assert rig.dispatcher.paused
    assert 0 == await rig.dispatcher.drain_once()
    assert SubmissionState.QUEUED == (await rig.get(queued)).state
    rig.dispatcher.resume()
    assert 1 == await rig.dispatcher.drain_once()
    assert SubmissionState.DELIVERED == (await rig.get(queued)).state


async def test_concurrency_cap_is_respected(make: Build) -> None:
    """With concurrency 3, the running loop never has more than 3 deliveries in flight."""
    rig = await make(dispatcher={"concurrency": 3}, clock=ManualClock())
    rig.platform.gate = gate = asyncio.Event()
    rows = [await rig.queue(f"ORD-{index}") for index in range(10)]
    rig.dispatcher.start()
    await until(lambda: rig.upstream.in_flight == 3)
    for _ in range(50):
        await asyncio.sleep(0)
    assert (3, 3) == (len(rig.upstream.requests), rig.dispatcher.in_flight)
    gate.set()

    async def all_delivered() -> bool:
        counts = await rig.store.counts()
        return counts.by_state[SubmissionState.DELIVERED] == len(rows)

    await until(all_delivered)
    assert 3 == rig.upstream.max_in_flight
    assert 10 == len(rig.upstream.requests)


async def test_rate_limit_is_respected(make: Build) -> None:
    """At 10/s with a burst of 2, the k-th send waits until (k - 2) / 10 s have passed."""
    rig = await make(dispatcher={"rate": 10, "burst": 2, "concurrency": 12})
    for index in range(12):
        await rig.queue(f"ORD-{index}")
    started = rig.clock.monotonic()
    assert 12 == await rig.dispatcher.drain_once()
    offsets = [sent - started for sent in rig.upstream.sent_at]
    for k, offset in enumerate(offsets, start=1):
        assert offset >= (k - 2) / 10 - 1e-9
    assert 1.0 == pytest.approx(offsets[-1])


async def test_lost_fence_means_no_write(make: Build) -> None:
    """A delivery whose row was taken over meanwhile writes nothing."""
    rig = await make()
    rig.platform.gate = gate = asyncio.Event()
    queued = await rig.queue()
    drain = asyncio.create_task(rig.dispatcher.drain_once())
    await until(lambda: rig.upstream.in_flight == 1)
    # The lease expires and a sweep (this or another process) takes the row over.
    assert 1 == await rig.store.reclaim(now=rig.clock.wall() + 61)
    gate.set()
    assert 1 == await drain
    row = await rig.get(queued)
    assert (SubmissionState.UNKNOWN, "lease_expired", True) == (
        row.state,
        row.last_error_class,
        row.maybe_sent,
    )
    assert (1, 0) == (rig.dispatcher.stats.fence_lost, rig.dispatcher.stats.delivered)


async def test_same_ordering_key_never_overlaps(make: Build) -> None:
    """A second submission with the same ordering key waits until the first is delivered."""
    rig = await make()
    rig.platform.gate = gate = asyncio.Event()
    first = await rig.queue("ORD-1", ordering_key="ORD-1")
    second = await rig.queue("RED-1", ordering_key="ORD-1")
    drain = asyncio.create_task(rig.dispatcher.drain_once())
    await until(lambda: rig.upstream.in_flight == 1)
    assert 0 == await rig.dispatcher.drain_once()
    gate.set()
    assert 1 == await drain
    assert SubmissionState.QUEUED == (await rig.get(second)).state
    assert 1 == await rig.dispatcher.drain_once()
    assert SubmissionState.DELIVERED == (await rig.get(first)).state
    assert SubmissionState.DELIVERED == (await rig.get(second)).state
    orders = [json.loads(r.body)["order"]["orderNo"] for r in rig.upstream.requests]
    assert ["ORD-1", "RED-1"] == orders


async def test_tenants_take_turns(make: Build) -> None:
    """With 50 rows of tenant A and 2 of tenant B, B's rows are in the first claim."""
    rig = await make(dispatcher={"batch": 10, "concurrency": 10})
    for index in range(50):
        await rig.queue(f"A-{index}", tenant="a")
    b_rows = [await rig.queue(f"B-{index}", tenant="b") for index in range(2)]
    assert 10 == await rig.dispatcher.drain_once()
    for row in b_rows:
        assert SubmissionState.DELIVERED == (await rig.get(row)).state


async def test_sweep_reclaims_expired_leases(make: Build) -> None:
    """A row left delivering by a dead holder becomes unknown (maybe sent) once its lease ends."""
    rig = await make()
    stuck = await rig._admit("ORD-9", "t1", "issue", None, (), (), False)
    assert (0, 0) == await rig.dispatcher.sweep()
    rig.clock.advance(61)
    assert (1, 0) == await rig.dispatcher.sweep()
    row = await rig.get(stuck)
    assert (SubmissionState.UNKNOWN, True) == (row.state, row.maybe_sent)


async def test_purge_removes_old_final_rows_only(make: Build) -> None:
    """Past the retention, delivered and failed rows go; dead, queued and unknown ones stay."""
    rig = await make(outbox={"retention": 7200})
    rows = {name: await rig.queue(f"ORD-{name}") for name in ("d", "f", "x", "q", "u")}
    await rig.set(rows["d"], Transition(SubmissionState.DELIVERED))
    await rig.set(rows["f"], Transition(SubmissionState.FAILED))
    await rig.set(rows["x"], Transition(SubmissionState.DEAD))
    await rig.set(rows["u"], Transition(SubmissionState.UNKNOWN, maybe_sent=True))
    rig.clock.advance(7199)
    assert (0, 0) == await rig.dispatcher.sweep()
    rig.clock.advance(2)
    assert (0, 2) == await rig.dispatcher.sweep()
    remaining = {name for name, row in rows.items() if await rig.store.get(row.id) is not None}
    assert {"x", "q", "u"} == remaining


async def test_stored_signature_is_never_reused(make: Build) -> None:
    """A replay later is signed afresh at send time; stored credentials never go out."""
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        auth = signing_auth(clock, session, token="token-now")
        rig = await make(clock=clock, auth=auth)
        stale_time = str(int(clock.wall()))
        queued = await rig.queue(
            headers=(
                ("X-Nuonuo-Sign", "c3RhbGU="),
                ("accessToken", "token-then"),
                ("Content-Length", "999"),
            ),
            query=(("senid", "0" * 32), ("nonce", "12345678"), ("timestamp", stale_time)),
        )
        clock.advance(1800)  # far beyond the platform's 300 s timestamp window
        await rig.dispatcher.drain_once()

    assert SubmissionState.DELIVERED == (await rig.get(queued)).state
    [sent] = rig.upstream.requests
    query = dict(sent.query)
    assert str(int(clock.wall())) == query["timestamp"]
    assert "0" * 32 != query["senid"]
    assert ["token-now"] == sent.headers.getall("accessToken")
    assert "999" not in sent.headers.getall("Content-Length", [])
    message = signature_message(
        app_key="the-app-key",
        senid=query["senid"],
        nonce=query["nonce"],
        timestamp=query["timestamp"],
        body=queued.body,
    )
    expected = base64.b64encode(hmac.new(b"the-app-secret", message, hashlib.sha1).digest())
    assert [expected.decode()] == sent.headers.getall("X-Nuonuo-Sign")
    assert (queued.body, "issue", "req-ORD-1") == (
        sent.body,
        sent.headers["method"],
        sent.headers["X-Request-Id"],
    )


# -- the background loop ---------------------------------------------------------------------


async def test_wake_starts_a_drain_without_waiting_for_the_poll(make: Build) -> None:
    """Queued while the loop idles, a submission goes at `wake()`, not at the next poll."""
    clock = ManualClock()
    rig = await make(clock=clock, dispatcher={"poll_interval": 3600})
    rig.dispatcher.start()
    await until(lambda: bool(clock.sleeps))  # the loop found nothing and idles
    queued = await rig.queue()
    rig.dispatcher.wake()

    async def delivered() -> bool:
        return (await rig.get(queued)).state is SubmissionState.DELIVERED

    await until(delivered)
    assert 1 == len(rig.upstream.requests)


async def test_a_wake_before_the_row_falls_due_looks_again_when_it_does(make: Build) -> None:
    """Woken for a row whose first back-off has not run yet (due 5 s from now, polls an hour
    apart): the round finds nothing due, and the loop waits until the row is due, not for the
    poll — as when another replica announces a row written on its reading of the clock."""
    clock = ManualClock()
    rig = await make(clock=clock, dispatcher={"poll_interval": 3600})
    rig.dispatcher.start()
    await until(lambda: bool(clock.sleeps))
    queued = await rig.queue()
    moved = await rig.store.transition(
        queued.id,
        queued.fence,
        Transition(SubmissionState.QUEUED, next_attempt_at=clock.wall() + 5),
        now=clock.wall(),
    )
    assert moved is not None
    idled = len(clock.sleeps)
    rig.dispatcher.wake()
    await until(lambda: len(clock.sleeps) > idled)
    assert 5 < clock.sleeps[-1] < 6
    clock.advance(clock.sleeps[-1])

    async def delivered() -> bool:
        return (await rig.get(queued)).state is SubmissionState.DELIVERED

    await until(delivered)


async def test_a_store_outage_is_logged_when_it_starts_and_when_it_ends(
    make: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refusing every claim and sweep for 30 polls: one warning naming the error when
    it starts, one note with how long it was down once it answers; no line per poll, no error,
    no traceback. Then the loop delivers as before."""
    clock = ManualClock()
    rig = await make(clock=clock, dispatcher={"poll_interval": 0.1})
    store = StoreDown(rig.store, ["claim_due", "reclaim", "purge"], monkeypatch)
    with capture_logs() as logs:
        rig.dispatcher.start()
        for polls in range(1, 31):
            await until(lambda polls=polls: store.refused >= polls)
            clock.advance(0.1)
        assert 30 <= store.refused
        store.down = False
        queued = await rig.queue()
        clock.advance(0.1)

        async def delivered() -> bool:
            return (await rig.get(queued)).state is SubmissionState.DELIVERED

        await until(delivered)
    down, back = [entry for entry in logs if "outbox store" in entry["event"]]
    assert ("warning", "dispatcher", "cannot reclaim: connection refused") == (
        down["log_level"],
        down["task"],
        down["error"],
    )
    assert ("info", "dispatcher", 3.1) == (back["log_level"], back["task"], back["down_s"])
    assert [] == [e for e in logs if e["log_level"] == "error" or "exc_info" in e]
    assert 1 == len(rig.upstream.requests)


async def test_stop_waits_for_deliveries_in_flight(make: Build) -> None:
    """Stopping lets a delivery in flight finish and record its result."""
    rig = await make(clock=ManualClock())
    rig.platform.gate = gate = asyncio.Event()
    queued = await rig.queue()
    rig.dispatcher.start()
    await until(lambda: rig.upstream.in_flight == 1)
    stopping = asyncio.create_task(rig.dispatcher.stop(grace=30))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()
    gate.set()
    await stopping
    assert SubmissionState.DELIVERED == (await rig.get(queued)).state
    assert not rig.dispatcher.running


async def test_stop_cancels_what_outlives_the_grace(make: Build) -> None:
    """After the grace period a delivery is cancelled and its row handed back: `unknown`
    (it may have been sent), due now, leased to nobody."""
    clock = ManualClock()
    rig = await make(clock=clock)
    rig.platform.gate = asyncio.Event()
    queued = await rig.queue()
    rig.dispatcher.start()
    await until(lambda: rig.upstream.in_flight == 1)
    stopping = asyncio.create_task(rig.dispatcher.stop(grace=5))
    await until(lambda: any(s == 5 for s in clock.sleeps))
    clock.advance(5)
    assert 1 == await stopping
    assert 0 == rig.dispatcher.in_flight
    row = await rig.get(queued)
    assert (SubmissionState.UNKNOWN, None, True, "lease_released") == (
        row.state,
        row.lease_owner,
        row.maybe_sent,
        row.last_error_class,
    )
    assert row.next_attempt_at is not None
    assert row.next_attempt_at <= clock.wall()


async def test_rejected_token_requeues_instead_of_failing(make: Build) -> None:
    """A token the platform keeps rejecting is the gateway's problem: the submission waits."""
    rig = await make()
    rig.platform.script["issue"] = [platform_answer({"code": "070301"})]
    queued = await rig.queue()
    await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.QUEUED, "auth") == (row.state, row.last_error_class)
    assert row.last_error is not None
    assert "credentials" in row.last_error


# -- the gateway's signature, refused by the platform (070601: check the clock) ----------------

CLOCK_REFUSED = {"code": "070601", "describe": "signature check failed"}


def platform_clock(clock: FakeClock, *, ahead: float, lenient: bool = True) -> Callable[..., Any]:
    """A reply for the `Platform` script from a platform whose clock is `ahead` of `clock`:
    070601 with its time in `Date` for a timestamp over 300 s off (any, unless `lenient`)."""

    def reply(signed: Any) -> UpstreamResponse:
        now = clock.wall() + ahead
        if lenient and abs(int(dict(signed.query)["timestamp"]) - now) <= 300:
            return OK
        date = email.utils.formatdate(now, usegmt=True)
        return platform_answer(CLOCK_REFUSED, headers={"Date": date}, request=signed)

    return reply


def timestamps(rig: Rig) -> list[int]:
    return [int(dict(r.query)["timestamp"]) for r in rig.upstream.requests]


async def test_clock_jump_is_corrected_and_delivered(make: Build) -> None:
    """The platform's clock an hour ahead: re-signed with its Date, delivered in one delivery."""
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        rig = await make(clock=clock, auth=signing_auth(clock, session))
        rig.platform.script["issue"] = [platform_clock(clock, ahead=3600)]
        queued = await rig.queue()
        await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.DELIVERED, 1) == (row.state, row.attempts)
    refused, resent = timestamps(rig)
    assert int(clock.wall()) + 3600 == pytest.approx(resent, abs=1)
    assert 3600 == pytest.approx(resent - refused, abs=1)


async def test_clock_refused_without_a_date_requeues_instead_of_failing(make: Build) -> None:
    """070601 without a Date to correct by is the gateway's setup, not the invoice: it waits."""
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        rig = await make(clock=clock, auth=signing_auth(clock, session))
        rig.platform.script["issue"] = [platform_answer(CLOCK_REFUSED), OK]
        queued = await rig.queue()
        await rig.dispatcher.drain_once()
        row = await rig.get(queued)
        assert (SubmissionState.QUEUED, "clock_skew") == (row.state, row.last_error_class)
        assert row.last_error is not None
        assert "NTP" in row.last_error
        assert not row.maybe_sent
        assert row.next_attempt_at is not None
        assert 1 == len(rig.upstream.requests)  # nothing learned, so no resend

        clock.advance(row.next_attempt_at - clock.wall())
        await rig.dispatcher.drain_once()
    assert SubmissionState.DELIVERED == (await rig.get(queued)).state


async def test_clock_refused_again_after_resigning_requeues_instead_of_failing(
    make: Build,
) -> None:
    """A re-signed request refused again is requeued (clock_skew), never failed."""
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        rig = await make(clock=clock, auth=signing_auth(clock, session))
        rig.platform.script["issue"] = [platform_clock(clock, ahead=3600, lenient=False)]
        queued = await rig.queue()
        await rig.dispatcher.drain_once()
    row = await rig.get(queued)
    assert (SubmissionState.QUEUED, "clock_skew") == (row.state, row.last_error_class)
    assert 2 == len(rig.upstream.requests)
    assert 0 == rig.dispatcher.stats.failed


async def test_lookup_first_finds_it_and_never_resends(make: Build) -> None:
    """Answer lost, and the lookup finds the invoice: delivered with it, nothing resent."""
    rig = await make()
    unknown = await rig.unknown()
    assert 1 == await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.DELIVERED, "lookup", ENTRY) == (
        row.state,
        (row.result or {}).get("evidence"),
        (row.result or {}).get("lookup"),
    )
    assert ([], 1) == (rig.upstream.sent("issue"), len(rig.upstream.sent("query")))


async def test_lookup_first_resends_only_once_absence_spans_the_settle_time(make: Build) -> None:
    """Not found is looked up again; only lookups spanning `settle` allow the one resend."""
    rig = await make()
    rig.platform.script["query"] = [NOTHING]
    unknown = await rig.unknown()
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.UNKNOWN, "not_found_yet", 1) == (
        row.state,
        row.last_error_class,
        row.attempts,
    )
    assert row.next_attempt_at is not None
    assert SETTLE == pytest.approx(row.next_attempt_at - rig.clock.wall())
    assert 0 == await rig.dispatcher.drain_once()  # not due before the settle time
    rig.clock.advance(SETTLE)
    assert 1 == await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.DELIVERED, 1, 2) == (
        row.state,
        len(rig.upstream.sent("issue")),
        len(rig.upstream.sent("query")),
    )


async def test_an_invoice_listed_late_is_found_not_issued_again(make: Build) -> None:
    """Regression for lookup lag: the first lookup misses an accepted invoice, the next one
    (after the settle time) finds it; it is never resent."""
    rig = await make()
    rig.platform.script["query"] = [NOTHING, FOUND]
    unknown = await rig.unknown()
    await rig.dispatcher.drain_once()
    rig.clock.advance(SETTLE)
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.DELIVERED, [], 2) == (
        row.state,
        rig.upstream.sent("issue"),
        len(rig.upstream.sent("query")),
    )


async def test_a_resend_that_went_astray_is_looked_for_afresh(make: Build) -> None:
    """After the resend its answer is lost too: the absence count starts again, so a late
    listing of the resent invoice is waited for instead of sending a third time."""
    rig = await make()
    rig.platform.script["query"] = [NOTHING]
    rig.platform.script["issue"] = [UpstreamTimeout("read timeout", sent=True)]
    unknown = await rig.unknown()
    await rig.dispatcher.drain_once()
    rig.clock.advance(SETTLE)
    await rig.dispatcher.drain_once()  # absence proven: resent, answer lost
    row = await rig.get(unknown)
    assert (SubmissionState.UNKNOWN, "timeout", 1) == (
        row.state,
        row.last_error_class,
        len(rig.upstream.sent("issue")),
    )
    rig.clock.advance(60)
    await rig.dispatcher.drain_once()  # a fresh first "not found": not proof yet
    row = await rig.get(unknown)
    assert ("not_found_yet", 1) == (row.last_error_class, len(rig.upstream.sent("issue")))


async def test_a_crash_after_the_resend_restarts_the_absence_count(make: Build) -> None:
    """The gateway dies right after resending (the lease expires): the old absence record no
    longer counts, and nothing is resent on a single 'not found'."""
    rig = await make()
    rig.platform.script["query"] = [NOTHING]
    unknown = await rig.unknown()
    await rig.dispatcher.drain_once()
    claimed = await rig.store.claim_due(
        now=rig.clock.wall() + SETTLE, limit=1, owner="crashed", lease_seconds=1.0
    )
    assert [unknown.id] == [row.id for row in claimed]
    rig.clock.advance(SETTLE + 2)
    assert 1 == await rig.store.reclaim(now=rig.clock.wall())
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert ("not_found_yet", [], 1) == (
        row.last_error_class,
        rig.upstream.sent("issue"),
        (row.result or {})["absence"]["count"],
    )


async def test_a_failed_lookup_resends_nothing(make: Build) -> None:
    """A lookup that cannot answer leaves it unknown; nothing is resent meanwhile."""
    rig = await make()
    rig.platform.script["query"] = [BUSY]
    unknown = await rig.unknown()
    await rig.dispatcher.drain_once()
    row = await rig.get(unknown)
    assert (SubmissionState.UNKNOWN, "lookup_failed", []) == (
        row.state,
        row.last_error_class,
        rig.upstream.sent("issue"),
    )


async def test_a_long_token_hold_never_makes_a_submission_dead(make: Build) -> None:
    """More refusals for want of a token than `max_attempts` (a quota hold waiting for an
    operator): the submission stays queued, and is delivered once a token can be had."""
    rig = await make(outbox={"max_attempts": 3})
    rig.platform.script["issue"] = [TokenUnavailable("token quota used up", cause="quota")]
    queued = await rig.queue()
    for _ in range(6):
        await rig.dispatcher.drain_once()
        rig.clock.advance(120)
    row = await rig.get(queued)
    assert (SubmissionState.QUEUED, 0) == (row.state, row.attempts)
    assert row.next_attempt_at is not None
    # Held until an operator acts: tried again only at the back-off's cap (60 s here).
    assert 60.0 == pytest.approx(row.next_attempt_at - row.updated_at)
    rig.platform.script["issue"] = [OK]
    await rig.dispatcher.drain_once()
    assert SubmissionState.DELIVERED == (await rig.get(queued)).state
