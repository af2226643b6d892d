"""Every failure gets exactly one class (the platform's business codes, transport errors)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import BusinessCodesConfig
from gateway.errors import (
    AnswerTruncated,
    ConnectionLost,
    GatewayError,
    TokenUnavailable,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.resilience.failures import FailureClass, FailureClassifier
from gateway.upstream.models import UpstreamResponse
from tests.support.fakes import FakeClock

CLASSIFIER = FailureClassifier(BusinessCodesConfig(), FakeClock())


def response(
    status: int, body: Any, content_type: str = "application/json", **headers: str
) -> UpstreamResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type, **headers}))
    return UpstreamResponse(status=status, headers=head, body=raw)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"code": "E0000", "result": {}}, None),
        (200, {"code": "040102", "describe": "busy"}, FailureClass.BUSY),
        (200, {"code": "070301"}, FailureClass.AUTH),
        (200, {"code": "070601"}, FailureClass.CLOCK_SKEW),
        (200, {"code": "070201"}, FailureClass.QUOTA),
        (200, {"code": "070204"}, FailureClass.QUOTA),
        (200, {"code": "0200"}, FailureClass.PERMANENT),
        (200, {"code": "0201"}, FailureClass.PERMANENT),
        (200, {"code": "0202"}, FailureClass.PERMANENT),
        (200, {"code": "0203"}, FailureClass.PERMANENT),
        (200, {"code": "070302"}, FailureClass.PERMANENT),
        (200, {"code": "070401"}, FailureClass.PERMANENT),
        (200, {"code": "070501"}, FailureClass.PERMANENT),
        (200, {"code": "E9106"}, FailureClass.DUPLICATE),
        (200, {"code": "070602"}, FailureClass.PERMANENT),  # not the vendor's: unknown
        (200, {"code": "070315"}, FailureClass.PERMANENT),  # meaning unpublished: unknown
        (200, {"code": "X-NEW-CODE"}, FailureClass.PERMANENT),
        (200, {"no": "code"}, None),
        (200, b'{"code": "E00', FailureClass.UNPARSABLE),
        (503, {"code": "E0000"}, FailureClass.HTTP_5XX),
        (500, b"oops", FailureClass.HTTP_5XX),
        (429, b"", FailureClass.HTTP_429),
        (404, b"", FailureClass.HTTP_4XX),
        (302, b"", FailureClass.PERMANENT),
    ],
)
def test_response_classes(status: int, body: Any, expected: FailureClass | None) -> None:
    """HTTP status and the business code in the body decide the class."""
    assert expected == CLASSIFIER.of_response(response(status, body)).failure


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0202", FailureClass.BUSY),
        ("0203", FailureClass.BUSY),
        ("040102", FailureClass.BUSY),
        ("0201", FailureClass.PERMANENT),
        ("070601", FailureClass.CLOCK_SKEW),
        ("E0000", None),
    ],
)
def test_read_answers_retry_billing_and_processing_exceptions(
    code: str, expected: FailureClass | None
) -> None:
    """For a read, 0202/0203 are worth asking again; other codes keep their meaning."""
    assert expected == CLASSIFIER.of_response(response(200, {"code": code}), read=True).failure


@pytest.mark.parametrize("code", ["070302", "070401", "070501"])
def test_configuration_codes_are_permanent_and_say_so(code: str) -> None:
    """API not enabled, caller not the token's, no such API: a verdict on the gateway's setup."""
    for read in (False, True):
        verdict = CLASSIFIER.of_response(response(200, {"code": code}), read=read)
        assert (FailureClass.PERMANENT, True) == (verdict.failure, verdict.misconfigured)


def test_request_verdicts_are_not_configuration_problems() -> None:
    """A verdict on the request itself (a field missing) is not flagged as the gateway's setup."""
    assert not CLASSIFIER.of_response(response(200, {"code": "0201"})).misconfigured


def test_default_codes_are_all_listed_once() -> None:
    """`listed()` holds every configured code once: each gets a metric label of its own."""
    listed = BusinessCodesConfig().listed()
    assert sorted(set(listed)) == sorted(listed)
    assert {"0200", "0201", "0202", "0203", "070204", "070302", "070601", "E9106"} <= set(listed)
    assert "070602" not in listed


def test_a_read_only_retryable_code_may_not_be_listed_elsewhere() -> None:
    """`retryable_for_reads` is one more list: a code in it and in `permanent` is refused."""
    with pytest.raises(ValueError, match="listed under both"):
        BusinessCodesConfig(permanent=["0202"])


def test_opaque_bodies_are_not_failures() -> None:
    """A non-JSON success (e.g. a PDF) is forwarded, not mistaken for a truncated answer."""
    assert CLASSIFIER.of_response(response(200, b"%PDF-1.7", "application/pdf")).ok


def test_numeric_codes_compare_as_text() -> None:
    """A code sent as a number still matches its configured text."""
    codes = BusinessCodesConfig(retryable=["40102"])
    classifier = FailureClassifier(codes, FakeClock())
    assert FailureClass.BUSY == classifier.of_response(response(200, {"code": 40102})).failure


def test_retry_after_is_read_from_429() -> None:
    """The Retry-After of a 429 travels with the verdict."""
    verdict = CLASSIFIER.of_response(response(429, b"", **{"Retry-After": "7"}))
    assert 7.0 == verdict.retry_after


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UpstreamUnreachable("refused"), FailureClass.REFUSED),
        (UpstreamTimeout("connect", sent=False), FailureClass.CONNECT_TIMEOUT),
        (UpstreamTimeout("read", sent=True), FailureClass.TIMEOUT),
        (AnswerTruncated("cut"), FailureClass.TRUNCATED),
        (ConnectionLost("reset"), FailureClass.CONNECTION_LOST),
        (TokenUnavailable("no token"), FailureClass.TOKEN_UNAVAILABLE),
    ],
)
def test_error_classes(error: GatewayError, expected: FailureClass) -> None:
    """Transport errors are told apart by whether the request left."""
    assert expected == CLASSIFIER.of_error(error).failure


def test_class_properties() -> None:
    """Not-sent, answer-lost and breaker-tripping sets are what resilience relies on."""
    assert not FailureClass.REFUSED.sent
    assert not FailureClass.CIRCUIT_OPEN.sent
    assert FailureClass.TIMEOUT.answer_lost
    assert not FailureClass.BUSY.answer_lost
    assert FailureClass.HTTP_5XX.trips_breaker
    assert FailureClass.TIMEOUT.trips_breaker
    assert not FailureClass.PERMANENT.trips_breaker
    assert not FailureClass.HTTP_4XX.trips_breaker
    assert not FailureClass.DUPLICATE.trips_breaker
    assert not FailureClass.AUTH.trips_breaker
    assert not FailureClass.CLOCK_SKEW.sent  # refused unread: the platform did not act
    assert not FailureClass.CLOCK_SKEW.trips_breaker  # our clock, not the platform's health


def test_overlapping_code_lists_are_refused() -> None:
    """A code listed as both success and retryable is a configuration error."""
    with pytest.raises(ValueError, match="listed under both"):
        BusinessCodesConfig(success=["E0000"], retryable=["E0000"])
