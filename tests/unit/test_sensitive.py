"""One definition of sensitive fields (gateway/sensitive.py), and every consumer masking by it:
the logs, the admin API's viewer views, exports, and problem details that echo a request."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gateway.edge.problem import problem_response
from gateway.errors import BadRequest
from gateway.jsonpointer import JsonPointer
from gateway.ops.admin.views import detail, export_view
from gateway.ops.logs import MaskSensitive
from gateway.outbox.submissions import Submission, SubmissionState
from gateway.sensitive import INVOICE_FIELDS, is_sensitive, is_sensitive_pointer, mask
from tests.unit.ops.admin.conftest import stored_row

#: A value of each sensitive field, each shaped like the real thing.
VALUES = {
    "/order/buyerTaxNum": "91110108MA01ABCD2X",
    "/order/buyerPhone": "13812345678",
    "/order/buyerTel": "010-62345678",
    "/order/buyerAddress": "北京市海淀区中关村大街1号",
    "/order/buyerAccount": "6222020200112233445",
    "/order/buyerEmail": "finance@buyer.example.cn",
    "/order/email": "ap@buyer.example.cn",
    "/order/salerTaxNum": "91310115MA1H7XYZ9Q",
    "/order/salerTel": "021-55556666",
    "/order/salerAddress": "上海市浦东新区世纪大道100号",
    "/order/salerAccount": "6217000010001234567",
}
#: Fields of the same body that are not personal data and stay as they are.
PLAIN = {"orderNo": "SO-20261127-0001", "buyerName": "北京示例科技有限公司", "invoiceType": "1"}


def invoice() -> dict[str, Any]:
    order: dict[str, Any] = dict(PLAIN)
    for pointer, value in VALUES.items():
        order[pointer.rsplit("/", 1)[1]] = value
    return {"order": order}


def submission() -> Submission:
    body = json.dumps(invoice(), ensure_ascii=False).encode()
    row = stored_row("SO-20261127-0001", SubmissionState.DEAD, at=1.0e9)
    return dataclasses.replace(row, body=body)


def assert_masked(document: Any) -> None:
    """Every sensitive field of `document` masked, every plain one whole."""
    for pointer, value in VALUES.items():
        shown = JsonPointer(pointer).resolve(document)
        assert value != shown, pointer
        assert "*" in shown, pointer
    for key, value in PLAIN.items():
        assert value == document["order"][key]


def test_every_invoice_field_is_recognised_by_name_and_pointer() -> None:
    assert set(INVOICE_FIELDS) == set(VALUES)
    for pointer in INVOICE_FIELDS:
        assert is_sensitive(pointer.rsplit("/", 1)[1]), pointer
        assert is_sensitive_pointer(pointer), pointer
    assert not any(is_sensitive(key) for key in PLAIN)
    assert not is_sensitive_pointer("/order/orderNo")


def test_mask_hides_every_field_of_the_definition() -> None:
    assert_masked(mask(invoice()))


def test_logs_mask_by_the_definition() -> None:
    event = MaskSensitive()(None, "info", {"event": "forwarded", "body": invoice()})
    assert_masked(event["body"])


def test_viewer_views_mask_by_the_definition() -> None:
    assert_masked(detail(submission(), reveal=False)["payload"])
    assert invoice() == detail(submission(), reveal=True)["payload"]


def test_masked_export_lines_mask_by_the_definition() -> None:
    line = export_view(submission())
    assert line["masked"] is True
    assert "body" not in line
    assert_masked(line["payload"])


@pytest.mark.parametrize("pointer", sorted(VALUES))
def test_problem_details_do_not_echo_personal_data(pointer: str) -> None:
    """A problem's detail (free text) is masked by shape, its extra members also by name."""
    value = VALUES[pointer]
    response = problem_response(
        status=400,
        slug="bad-request",
        title="Bad request",
        detail=BadRequest(f"{pointer}: cannot use {value!r} here").detail,
        request_id="r1",
        extra={"field": pointer, pointer.rsplit("/", 1)[1]: value},
    )
    assert isinstance(response.body, bytes)
    problem = json.loads(response.body)
    assert value not in problem[pointer.rsplit("/", 1)[1]]
    if not any("\u4e00" <= char <= "\u9fff" for char in value):  # addresses have no shape
        assert value not in problem["detail"], problem["detail"]
    assert pointer == problem["field"]
