"""Reconciliation lookups: the lookup request, and what its answer is taken to mean."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import (
    BreakerConfig,
    BusinessCodesConfig,
    OperationConfig,
    RetryBudgetConfig,
    RetryPolicyConfig,
)
from gateway.errors import ConfigError, UpstreamTimeout
from gateway.operations import OperationKind
from gateway.outbox.reconcile import LookupStatus, Reconciler
from gateway.outbox.submissions import Submission, SubmissionState
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.failures import FailureClass, FailureClassifier
from gateway.resilience.pipeline import Outcome, ResiliencePipeline
from gateway.resilience.retry import RetryBudget, RetryPolicy
from gateway.upstream.models import UpstreamRequest, UpstreamResponse
from tests.support.fakes import FakeClock, HandlerUpstream, platform_answer

ISSUE = OperationConfig.model_validate(
    {
        "name": "issue",
        "kind": "submit",
        "match": {"method": "POST", "path": "/open/v1/services", "headers": {"method": "issue"}},
        "business_key": "/order/orderNo",
        "reconcile": {
            "lookup": "query",
            "body": {"orderNos": ["{business_key}"], "keep": "{business_key}!", "n": 1},
            "result_pointer": "/result/0",
        },
    }
)
QUERY = OperationConfig.model_validate(
    {
        "name": "query",
        "kind": "read",
        "match": {"method": "POST", "path": "/open/v1/services", "headers": {"method": "query"}},
    }
)
ENTRY = {"serialNo": "S-1", "orderNo": "ORD-1", "status": 20, "statusMsg": "开票中"}


class SpyPipeline(ResiliencePipeline):
    """The real pipeline, recording how it was asked to run."""

    calls: list[dict[str, Any]]

    async def execute(self, request: UpstreamRequest, operation: Any, **kwargs: Any) -> Outcome:
        self.calls.append({"operation": operation, **kwargs})
        return await super().execute(request, operation, **kwargs)


def make(handler: Any) -> tuple[Reconciler, SpyPipeline, HandlerUpstream]:
    clock = FakeClock()
    upstream = HandlerUpstream(clock, handler)
    read = RetryPolicy.resolve(
        RetryPolicyConfig.model_validate(
            {
                "deadline": 10.0,
                "attempts": 3,
                "backoff": {"base": 0.1, "cap": 0.5},
                "retry_on": ["busy", "timeout", "http_5xx"],
                "retry_after_cap": 5.0,
            }
        ),
        RetryPolicyConfig(),
    )
    pipeline = SpyPipeline(
        upstream=upstream,
        classifier=FailureClassifier(BusinessCodesConfig(), clock),
        breakers=BreakerRegistry(BreakerConfig(failure_threshold=1000, min_calls=10**6), clock),
        budget=RetryBudget(RetryBudgetConfig(ratio=1.0, min_retries=10**6), clock),
        policies={},
        kind_policies={kind: read for kind in OperationKind},
        attempt_timeout=3.0,
        clock=clock,
        rng=random.Random(1),
    )
    pipeline.calls = []
    reconciler = Reconciler.for_operation(
        ISSUE, {"issue": ISSUE, "query": QUERY}, pipeline=pipeline
    )
    assert reconciler is not None
    return reconciler, pipeline, upstream


def submission(business_key: str | None = "ORD-1") -> Submission:
    body = json.dumps({"order": {"orderNo": business_key}}).encode()
    return Submission(
        id="sub_1",
        tenant="t1",
        operation="issue",
        idempotency_key=business_key,
        fingerprint="f",
        business_key=business_key,
        ordering_key=None,
        method="POST",
        path="/open/v1/services",
        query=(),
        headers=(("method", "issue"),),
        body=body,
        request_id="req-1",
        state=SubmissionState.DELIVERING,
        acknowledged=True,
        attempts=1,
        maybe_sent=True,
        last_error_class=None,
        last_error=None,
        response=None,
        result=None,
        created_at=0.0,
        updated_at=0.0,
        next_attempt_at=None,
        lease_owner="d",
        lease_expires_at=60.0,
        fence=1,
    )


def answer(result: Any, code: str = "E0000") -> UpstreamResponse:
    return platform_answer({"code": code, "describe": "", "result": result})


def test_lookup_request_comes_from_the_lookup_operation_and_the_template() -> None:
    """Method, path and headers from the lookup's match; the placeholder filled; JSON body."""
    reconciler, _, _ = make(lambda _r: answer([]))
    request = reconciler.request_for(submission())
    assert ("POST", "/open/v1/services", ()) == (request.method, request.path, request.query)
    assert "query" == request.headers["method"]
    assert "application/json" == request.headers["Content-Type"]
    assert "req-1" == request.headers["X-Request-Id"]
    assert "query" == request.operation
    expected = {"orderNos": ["ORD-1"], "keep": "{business_key}!", "n": 1}
    assert expected == json.loads(request.body)


async def test_found_entry_is_returned_as_is() -> None:
    """An entry at the result pointer is found, even while the platform is still issuing it."""
    reconciler, pipeline, upstream = make(lambda _r: answer([ENTRY]))
    result = await reconciler.lookup(submission())
    assert LookupStatus.FOUND == result.status
    assert ENTRY == result.entry
    assert 1 == len(upstream.requests)
    assert {"operation": reconciler.operation, "live": False} == pipeline.calls[0]
    assert OperationKind.READ == reconciler.operation.kind


@pytest.mark.parametrize("result", [[], None, {}])
async def test_nothing_at_the_pointer_is_not_found(result: Any) -> None:
    """A successful answer with nothing at the result pointer means the platform has none."""
    reconciler, _, _ = make(lambda _r: answer(result))
    found = await reconciler.lookup(submission())
    assert LookupStatus.NOT_FOUND == found.status
    assert found.entry is None


async def test_transient_failures_are_retried_then_reported() -> None:
    """The lookup is a read: retried within its policy, then reported failed with the class."""
    reconciler, _, upstream = make(lambda _r: answer(None, code="040102"))
    found = await reconciler.lookup(submission())
    assert LookupStatus.FAILED == found.status
    assert FailureClass.BUSY == found.failure
    assert 3 == len(upstream.requests)


async def test_answer_lost_then_answered_is_found() -> None:
    """A lookup whose first answer was lost is simply asked again."""
    replies: list[Any] = [UpstreamTimeout("read timeout", sent=True), answer([ENTRY])]
    reconciler, _, upstream = make(lambda _r: replies.pop(0))
    found = await reconciler.lookup(submission())
    assert LookupStatus.FOUND == found.status
    assert 2 == len(upstream.requests)


async def test_error_code_is_a_failed_lookup() -> None:
    """A permanent code from the lookup is a failure, not 'not found'."""
    reconciler, _, _ = make(lambda _r: answer(None, code="0201"))
    found = await reconciler.lookup(submission())
    assert (LookupStatus.FAILED, FailureClass.PERMANENT, "0201") == (
        found.status,
        found.failure,
        found.code,
    )


async def test_unreadable_success_is_a_failed_lookup() -> None:
    """A success that is not JSON cannot say what exists: failed, not 'not found'."""
    plain = UpstreamResponse(
        status=200,
        headers=CIMultiDictProxy(CIMultiDict({"Content-Type": "text/plain"})),
        body=b"ok",
    )
    reconciler, _, _ = make(lambda _r: plain)
    found = await reconciler.lookup(submission())
    assert (LookupStatus.FAILED, FailureClass.UNPARSABLE) == (found.status, found.failure)


async def test_without_business_key_nothing_is_sent() -> None:
    """A submission without a business key cannot be looked up; nothing goes out."""
    reconciler, _, upstream = make(lambda _r: answer([ENTRY]))
    found = await reconciler.lookup(submission(business_key=None))
    assert LookupStatus.FAILED == found.status
    assert [] == upstream.requests


def test_operation_without_rule_has_no_reconciler() -> None:
    """No `reconcile` section, no reconciler: such submissions are parked for on-call."""
    plain = ISSUE.model_copy(update={"reconcile": None})
    pipeline = make(lambda _r: answer([]))[1]
    assert Reconciler.for_operation(plain, {"query": QUERY}, pipeline=pipeline) is None


def test_lookup_with_a_path_prefix_is_refused() -> None:
    """A lookup matched by a path prefix has no path to send to: a configuration error."""
    prefixed = QUERY.model_copy(
        update={"match": QUERY.match.model_copy(update={"path": "/open/*"})}
    )
    pipeline = make(lambda _r: answer([]))[1]
    with pytest.raises(ConfigError, match="exact path"):
        Reconciler.for_operation(ISSUE, {"query": prefixed}, pipeline=pipeline)


def test_reconciled_answer_is_the_result_never_the_duplicate_code() -> None:
    """Without a template a client asking again gets the submission's status and what the
    lookup found, marked as the gateway's own answer."""
    reconciler, _, _ = make(lambda _request: answer([ENTRY]))
    stored = reconciler.answer_for(submission(), ENTRY)
    assert 200 == stored.status
    assert ("X-Gateway-Reconciled", "true") in stored.headers
    document = json.loads(stored.body)
    assert {"submission_id": "sub_1", "status": "delivered", "reconciled": True} == {
        key: document[key] for key in ("submission_id", "status", "reconciled")
    }
    assert ENTRY == document["lookup"]


def test_reconciled_answer_fills_the_configured_template() -> None:
    """`answer` gives the platform's success shape, filled from the lookup's entry."""
    rule = ISSUE.model_copy(
        update={
            "reconcile": ISSUE.reconcile.model_copy(  # type: ignore[union-attr]
                update={
                    "answer": {
                        "code": "E0000",
                        "result": {
                            "invoiceSerialNum": "{lookup:/serialNo}",
                            "missing": "{lookup:/x}",
                        },
                        "orderNo": "{business_key}",
                        "literal": "{not a placeholder}",
                    }
                }
            )
        }
    )
    _, pipeline, _ = make(lambda _request: answer([ENTRY]))
    reconciler = Reconciler.for_operation(rule, {"issue": rule, "query": QUERY}, pipeline=pipeline)
    assert reconciler is not None
    document = json.loads(reconciler.answer_for(submission(), ENTRY).body)
    assert {
        "code": "E0000",
        "result": {"invoiceSerialNum": "S-1", "missing": None},
        "orderNo": "ORD-1",
        "literal": "{not a placeholder}",
    } == document
