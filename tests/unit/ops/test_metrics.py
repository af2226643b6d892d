"""Upstream answers as metrics: business codes by their own label, configuration refusals apart."""

from __future__ import annotations

import json

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import BusinessCodesConfig
from gateway.ops.metrics import Metrics
from gateway.resilience.failures import FailureClassifier, Verdict
from gateway.upstream.models import UpstreamResponse
from tests.support.fakes import FakeClock

CODES = BusinessCodesConfig()
CLASSIFIER = FailureClassifier(CODES, FakeClock())
QUERY = "nuonuo.OpeMplatform.queryInvoiceResult"


def answered(code: str) -> Verdict:
    head = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    body = json.dumps({"code": code}).encode()
    return CLASSIFIER.of_response(UpstreamResponse(status=200, headers=head, body=body))


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_configuration_refusals_are_counted_apart_by_code() -> None:
    """070302 counts as a configuration error; a verdict on the request (0201) does not."""
    metrics = Metrics(operations=[QUERY], business_codes=CODES.listed())
    for code in ("070302", "070302", "0201"):
        metrics.attempt(QUERY, answered(code), 0.01)
    name = "gateway_upstream_configuration_errors_total"
    assert (2.0, None) == (
        sample(metrics, name, operation=QUERY, code="070302"),
        sample(metrics, name, operation=QUERY, code="0201"),
    )


def test_every_listed_code_is_its_own_label() -> None:
    """A code from any list (0203 included) is labelled by itself; an unlisted one is 'other'."""
    metrics = Metrics(operations=[QUERY], business_codes=CODES.listed())
    for code in ("0203", "070204", "070315"):
        metrics.attempt(QUERY, answered(code), 0.01)
    name = "gateway_upstream_business_codes_total"
    assert [1.0, 1.0, 1.0, None] == [
        sample(metrics, name, operation=QUERY, code=code)
        for code in ("0203", "070204", "other", "070315")
    ]
