"""Operation classification by method, path, header and JSON pointer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import OperationConfig
from gateway.errors import BadRequest, OperationNotAllowed
from gateway.jsonpointer import MISSING, JsonPointer
from gateway.operations import UNMATCHED, Classifier, OperationKind, RequestBody


def rule(name: str, kind: str, **match: Any) -> OperationConfig:
    return OperationConfig.model_validate({"name": name, "kind": kind, "match": match})


def body(document: Any) -> RequestBody:
    return RequestBody(json.dumps(document).encode())


CLASSIFIER = Classifier.from_config(
    [
        rule(
            "issue", "submit", method="POST", path="/open/v1/services", headers={"Method": "issue"}
        ),
        rule("query", "read", method="POST", path="/open/v1/services", headers={"method": "query"}),
        rule("by-body", "submit", path="/v2/*", body=[{"pointer": "/action", "equals": "issue"}]),
        rule("has-field", "read", path="/v2/*", body=[{"pointer": "/lookup/0"}]),
        rule("health", "passthrough", method="GET", path="/status"),
    ],
    unmatched="passthrough",
)


def test_header_match_is_case_insensitive_on_name() -> None:
    """Header names match regardless of case; values must be exact."""
    op = CLASSIFIER.classify("POST", "/open/v1/services", {"method": "issue"}, body({}))
    assert ("issue", OperationKind.SUBMIT) == (op.name, op.kind)


def test_header_value_must_match_exactly() -> None:
    """A different header value does not match."""
    op = CLASSIFIER.classify("POST", "/open/v1/services", {"method": "Issue"}, body({}))
    assert UNMATCHED == op


def test_method_must_match() -> None:
    """A GET does not match a POST rule."""
    assert UNMATCHED == CLASSIFIER.classify(
        "GET", "/open/v1/services", {"method": "issue"}, body({})
    )


def test_path_prefix_and_json_pointer_equals() -> None:
    """A prefix path and a JSON pointer value select the operation."""
    op = CLASSIFIER.classify("PUT", "/v2/anything", {}, body({"action": "issue"}))
    assert "by-body" == op.name


def test_json_pointer_presence() -> None:
    """A pointer without `equals` matches when any value is there."""
    op = CLASSIFIER.classify("POST", "/v2/x", {}, body({"lookup": [0]}))
    assert "has-field" == op.name


def test_non_json_body_does_not_match_body_rules() -> None:
    """A body rule never matches a body that is not JSON (and classification does not fail)."""
    op = CLASSIFIER.classify("POST", "/v2/x", {}, RequestBody(b"not json"))
    assert UNMATCHED == op


def test_exact_path_does_not_match_prefix() -> None:
    """An exact path rule does not match a longer path."""
    assert UNMATCHED == CLASSIFIER.classify("GET", "/status/x", {}, body({}))


def test_first_rule_wins() -> None:
    """Rules are tried in configuration order."""
    classifier = Classifier.from_config(
        [rule("a", "read", path="/x"), rule("b", "submit", path="/x")], unmatched="passthrough"
    )
    assert "a" == classifier.classify("POST", "/x", {}, body({})).name


def test_unmatched_rejected_when_configured() -> None:
    """With unmatched=reject an unknown operation is refused, naming what was sent."""
    classifier = Classifier.from_config([], unmatched="reject")
    with pytest.raises(OperationNotAllowed, match="POST /x matches no configured operation"):
        classifier.classify("POST", "/x", {}, body({}))


def test_request_body_json_error() -> None:
    """A body that is not JSON raises BadRequest when parsed."""
    with pytest.raises(BadRequest, match="not valid JSON"):
        RequestBody(b"{oops").json()


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", {"a/b": 1, "m~n": 2, "list": [10, 20]}),
        ("/a~1b", 1),
        ("/m~0n", 2),
        ("/list/1", 20),
        ("/list/2", MISSING),
        ("/list/01", MISSING),
        ("/list/-", MISSING),
        ("/nope", MISSING),
        ("/a~1b/deeper", MISSING),
    ],
)
def test_json_pointer_rfc6901(pointer: str, expected: Any) -> None:
    """JSON pointers follow RFC 6901 escaping and array indexing."""
    document = {"a/b": 1, "m~n": 2, "list": [10, 20]}
    assert expected == JsonPointer(pointer).resolve(document)


def test_json_pointer_must_start_with_slash() -> None:
    """A pointer that does not start with '/' is refused."""
    with pytest.raises(ValueError, match="starts with '/'"):
        JsonPointer("order/orderNo")
