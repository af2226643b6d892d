"""Schemathesis over every operation of the admin API's OpenAPI document, on a real gateway.

Each operation is fuzzed three times: with an operator token, with a viewer token and with no
token, on valid and invalid input (schemathesis' positive and negative modes). Whatever the
input, the API never answers 5xx; where the document declares an answer,
the answer conforms to it; without a token every operation answers 401, and a viewer token
answers 403 on every operator operation. Bounded: `MAX_EXAMPLES` per operation and role. The
number of cases sent is printed at the end of the run (tests/conftest.py, "fuzz counts").
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.ops.admin.routes import openapi_document
from tests.conftest import FUZZ_COUNTS_PROPERTY
from tests.integration.test_admin_api import ADMIN, ADMIN_ENV, OPERATOR_TOKEN, VIEWER_TOKEN
from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_outbox import OVERRIDES
from tests.support.harness import Gateway, Simulator

pytestmark = pytest.mark.integration

#: Generated cases per operation and role (the document's own examples come on top): some 1,260
#: cases in all, about 13 s alone and well under 40 s beside the rest of the suite on 2 cores.
MAX_EXAMPLES = 15
TOKENS = {"operator": OPERATOR_TOKEN, "viewer": VIEWER_TOKEN, "none": None}
#: Checks on an answer the caller's role entitles them to.
ENTITLED_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with both tokens and one delivered submission (so lists are not empty)."""
    workdir = tmp_path_factory.mktemp("admin-fuzz")
    sim = Simulator.start(workdir / "sim")
    try:
        overrides = copy.deepcopy({**OVERRIDES, **ADMIN})
        gateway = Gateway.start(workdir / "gw", sim.url, overrides=overrides, env=ADMIN_ENV)
        try:
            status, _, answer = gateway.call(ISSUE, invoice("FUZZ-0001"))
            assert status in (200, 202), answer
            yield gateway
        finally:
            gateway.process.stop()
    finally:
        sim.process.stop()


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_ctx: Any, value: Any) -> bytes:
    """An import body: a list of objects as JSON Lines, anything else as one line."""
    lines = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _schema() -> Any:
    return schemathesis.openapi.from_dict(json.loads(openapi_document()))


def _operator_only(operation: Any) -> bool:
    """Whether the document says only operators may call this operation."""
    return bool("operator" == operation.definition.raw.get("x-required-role"))


def _operations() -> list[Any]:
    return [result.ok() for result in _schema().get_all_operations()]


def test_the_document_is_fuzzed_whole() -> None:
    """Every route the admin app serves is an operation of the document, so fuzzing the document
    covers every route (test_admin_api checks the two agree)."""
    assert 25 <= len(_operations())


@pytest.mark.parametrize("role", list(TOKENS))
def test_admin_api_under_fuzzing(
    fuzz_gateway: Gateway, role: str, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses: dict[int, int] = {}
    operations = _operations()
    for operation in operations:
        _fuzz(operation, role, fuzz_gateway.admin_url, statuses)
    cases = sum(statuses.values())
    line = f"admin API, {role} token: {cases} cases, statuses {dict(sorted(statuses.items()))}"
    record_property(FUZZ_COUNTS_PROPERTY, line)
    with capsys.disabled():
        print(f"\n{line}")
    assert cases >= len(operations)


def _fuzz(operation: Any, role: str, base_url: str, statuses: dict[int, int]) -> None:
    """`MAX_EXAMPLES` generated cases of one operation, as `role`, each answer checked."""
    token = TOKENS[role]
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    operator_only = _operator_only(operation)

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(
        case=operation.as_strategy(GenerationMode.POSITIVE)
        | operation.as_strategy(GenerationMode.NEGATIVE)
    )
    def fuzz(case: Any) -> None:
        # The credentials are this test's (the role under test), never generated ones.
        case.headers = {
            k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
        }
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        where = f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
        # A negative case against the security scheme is sent without the token: judged by what
        # was sent.
        if response.request.headers.get("Authorization") is None:
            assert 401 == response.status_code, where
            case.validate_response(response, checks=[not_a_server_error])
        elif role == "viewer" and operator_only:
            assert 403 == response.status_code, where
            case.validate_response(response, checks=[not_a_server_error])
        else:
            assert response.status_code not in (401, 403), where
            case.validate_response(response, checks=ENTITLED_CHECKS)

    fuzz()
