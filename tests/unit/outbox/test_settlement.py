"""The settlement table: every failure class means the same for a submission on the live path
(the client waiting) and on the dispatcher's (from the outbox)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config import BreakerConfig, OutboxConfig
from gateway.edge.intake import Intake
from gateway.edge.outcomes import Exchange
from gateway.operations import OperationRule, RequestBody
from gateway.outbox.dispatcher import Dispatcher
from gateway.outbox.settlement import RULES, Settlement
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.submissions import (
    NewSubmission,
    Submission,
    SubmissionQuery,
    SubmissionState,
    fingerprint,
)
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.failures import FailureClass, Verdict
from gateway.resilience.pipeline import Outcome
from gateway.resilience.retry import Backoff
from gateway.upstream.models import UpstreamRequest, UpstreamResponse
from tests.support.fakes import FakeClock, platform_answer
from tests.support.operations import ISSUE, QUERY, SERVICES

OPERATION = OperationRule.from_config(ISSUE).operation
BODY = json.dumps({"order": {"orderNo": "ORD-1", "buyerName": "某某公司"}}).encode()

#: The platform's answer behind each failure class that comes with one.
ANSWERS: dict[FailureClass, tuple[UpstreamResponse, str | None]] = {
    FailureClass.BUSY: (platform_answer({"code": "040102"}), "040102"),
    FailureClass.QUOTA: (platform_answer({"code": "070201"}), "070201"),
    FailureClass.AUTH: (platform_answer({"code": "070301"}), "070301"),
    FailureClass.CLOCK_SKEW: (platform_answer({"code": "070601"}), "070601"),
    FailureClass.PERMANENT: (platform_answer({"code": "0201"}), "0201"),
    FailureClass.DUPLICATE: (platform_answer({"code": "E9106"}), "E9106"),
    FailureClass.HTTP_5XX: (platform_answer({"error": "down"}, status=503), None),
    FailureClass.HTTP_429: (platform_answer({"error": "slow down"}, status=429), None),
    FailureClass.HTTP_4XX: (platform_answer({"error": "bad"}, status=404), None),
    FailureClass.UNPARSABLE: (platform_answer(status=200), None),
}
#: What each settlement leaves the row in after one sending of a never-sent submission.
EXPECTED_STATE = {
    Settlement.RETRY: SubmissionState.QUEUED,
    Settlement.RECONCILE: SubmissionState.UNKNOWN,
    Settlement.FAILED: SubmissionState.FAILED,
    # A duplicate code for an order number this gateway never sent: used elsewhere.
    Settlement.DUPLICATE: SubmissionState.FAILED,
}


def outcome_of(failure: FailureClass) -> Outcome:
    """One attempt that ended in `failure`, with the answer the platform would have sent."""
    response, code = ANSWERS.get(failure, (None, None))
    return Outcome(
        verdict=Verdict(failure, response, code=code),
        attempts=1,
        failures=[failure],
        stopped_by="not retryable",
        sent=failure.sent,
    )


class ScriptedPipeline:
    """Stands in for the resilience pipeline: every request ends in the same outcome."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.sent: list[str] = []

    async def execute(self, request: UpstreamRequest, operation: Any, **_: Any) -> Outcome:
        self.sent.append(operation.name)
        return self.outcome


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A fresh SQLite outbox file."""
    opened = await SqliteStore.open(tmp_path / "outbox.db", synchronous="NORMAL")
    yield opened
    await opened.close()


def breakers(clock: FakeClock) -> BreakerRegistry:
    return BreakerRegistry(BreakerConfig(failure_threshold=1000, min_calls=10**6), clock)


async def only_row(store: SqliteStore) -> Submission:
    page = await store.query(SubmissionQuery(), limit=10, cursor=None)
    assert 1 == len(page.items)
    return page.items[0]


async def live(store: SqliteStore, outcome: Outcome) -> tuple[int, Submission]:
    """Submit through the intake as the proxy does; the client's status and the row."""
    clock = FakeClock()
    intake = Intake(
        store=store,
        pipeline=ScriptedPipeline(outcome),  # type: ignore[arg-type]
        breakers=breakers(clock),
        clock=clock,
        owner="proxy",
        lease_seconds=60.0,
        backoff=Backoff.from_config(OutboxConfig().backoff),
        rng=random.Random(1),
    )
    headers = CIMultiDict({"method": "issue", "Content-Type": "application/json"})
    outgoing = UpstreamRequest("POST", SERVICES, (), headers, BODY, operation="issue")
    request = make_mocked_request("POST", SERVICES, headers=headers)
    exchange = Exchange(request_id="req-1", tenant="t1", operation=OPERATION)
    response = await intake.submit(request, outgoing, OPERATION, RequestBody(BODY), exchange)
    return response.status, await only_row(store)


async def dispatched(store: SqliteStore, outcome: Outcome) -> Submission:
    """Queue the submission, then let the dispatcher deliver it once."""
    clock = FakeClock()
    new = NewSubmission(
        tenant="t1",
        operation="issue",
        idempotency_key="ORD-1",
        fingerprint=fingerprint(BODY),
        business_key="ORD-1",
        ordering_key=None,
        method="POST",
        path=SERVICES,
        query=(),
        headers=(("method", "issue"), ("Content-Type", "application/json")),
        body=BODY,
        request_id="req-1",
    )
    await store.admit(new, queue=True, owner="proxy", lease_seconds=60.0, now=clock.wall())
    pipeline = ScriptedPipeline(outcome)
    dispatcher = Dispatcher(
        store=store,
        pipeline=pipeline,  # type: ignore[arg-type]
        breakers=breakers(clock),
        operations=[ISSUE, QUERY],
        config=OutboxConfig(),
        send_timeout=3.0,
        clock=clock,
        owner="dispatcher",
        rng=random.Random(1),
    )
    assert 1 == await dispatcher.drain_once()
    assert "issue" == pipeline.sent[0]
    return await only_row(store)


def test_every_failure_class_has_a_row() -> None:
    """A new failure class cannot be added without saying what it does to a submission."""
    assert set(FailureClass) == set(RULES)


@pytest.mark.parametrize("failure", list(FailureClass), ids=str)
async def test_live_path_and_dispatcher_agree(
    tmp_path: Path, store: SqliteStore, failure: FailureClass
) -> None:
    """One sending ending in `failure` leaves the row in the table's state on both paths."""
    expected = EXPECTED_STATE[RULES[failure].settles]
    status, by_live = await live(store, outcome_of(failure))
    other = await SqliteStore.open(tmp_path / "dispatched.db", synchronous="NORMAL")
    try:
        by_dispatcher = await dispatched(other, outcome_of(failure))
    finally:
        await other.close()
    assert (expected, expected) == (by_live.state, by_dispatcher.state)
    assert by_live.maybe_sent == by_dispatcher.maybe_sent == RULES[failure].may_have_acted
    if expected is SubmissionState.FAILED:
        assert ANSWERS[failure][0].status == status  # the platform's own answer, relayed
    else:
        assert 202 == status  # accepted into the outbox


@pytest.mark.parametrize("code", ["070201", "070204"])
async def test_live_quota_answer_is_queued_not_failed(store: SqliteStore, code: str) -> None:
    """Regression: a live submission answered with a quota code was recorded `failed` while
    the dispatcher requeued the same answer; a quota resets, so both wait and retry."""
    outcome = Outcome(
        verdict=Verdict(FailureClass.QUOTA, platform_answer({"code": code}), code=code),
        attempts=1,
        failures=[FailureClass.QUOTA],
        sent=True,
    )
    status, row = await live(store, outcome)
    assert (202, SubmissionState.QUEUED, "quota") == (status, row.state, row.last_error_class)


async def test_success_is_delivered_on_both_paths(tmp_path: Path, store: SqliteStore) -> None:
    """E0000 delivers the row and hands the client the platform's answer."""
    success = Outcome(verdict=Verdict(None, platform_answer()), attempts=1, sent=True)
    status, by_live = await live(store, success)
    other = await SqliteStore.open(tmp_path / "dispatched.db", synchronous="NORMAL")
    try:
        by_dispatcher = await dispatched(other, success)
    finally:
        await other.close()
    assert (200, SubmissionState.DELIVERED, SubmissionState.DELIVERED) == (
        status,
        by_live.state,
        by_dispatcher.state,
    )
