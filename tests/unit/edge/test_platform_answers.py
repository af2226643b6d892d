"""Answers in the platform's terms for SDK clients (edge/platform_answers.py)."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from gateway.edge.platform_answers import gateway_serial, submission_id_of, translate
from gateway.edge.problem import problem_response
from gateway.outbox.submissions import new_submission_id


def test_the_gateway_serial_is_the_submission_id_and_back() -> None:
    submission_id = new_submission_id()
    serial = gateway_serial(submission_id)
    assert serial is not None
    assert serial.startswith("GW")
    assert 34 == len(serial)
    assert submission_id == submission_id_of(serial)


@pytest.mark.parametrize("serial", ["26120708222000000001", "GW123", "gw" + "a" * 32, ""])
def test_other_serials_are_not_the_gateways(serial: str) -> None:
    assert submission_id_of(serial) is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "040102"),
        (504, "040102"),
        (429, "040102"),
        (409, "040102"),
        (422, "E9106"),
        (404, "070501"),
        (400, "0201"),
        (413, "0201"),
    ],
)
def test_a_gateway_problem_becomes_the_platforms_code(status: int, code: str) -> None:
    problem = problem_response(
        status=status,
        slug="x",
        title="Something",
        detail="d",
        request_id="r",
        headers={"Retry-After": "5"},
    )
    answer = translate(problem)
    assert 200 == answer.status
    assert code == json.loads(bytes(answer.body))["code"]  # type: ignore[arg-type]
    assert "5" == answer.headers["Retry-After"]


def test_the_platforms_own_answer_is_left_as_it_came() -> None:
    relayed = web.json_response({"code": "0201", "describe": "必填参数为空"})
    assert translate(relayed) is relayed
