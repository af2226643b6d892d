"""Viewers see personal and banking data masked, by field name, at any depth; operators see it."""

from __future__ import annotations

import pytest

from gateway.app import Gateway
from gateway.ops.admin.masking import mask_edit, visible_headers
from gateway.sensitive import is_sensitive, mask, mask_value
from tests.unit.ops.admin.conftest import OPERATOR, TAX_NUM, VIEWER, AdminClient, seed


def test_tax_number_keeps_four_characters_at_each_end() -> None:
    """The issue's example: an 18-character tax number shows its first and last four."""
    assert "9111**********CD2X" == mask_value("91110108MA01ABCD2X")


@pytest.mark.parametrize(
    ("value", "masked"),
    [("13812345678", "13*******78"), ("12345", "*****"), ("", ""), (12345678, "12****78")],
)
def test_short_values_show_less(value: object, masked: str) -> None:
    """Shorter values keep two characters at each end, very short ones none; numbers too."""
    assert masked == mask_value(value)


@pytest.mark.parametrize(
    "key",
    [
        "buyerTaxNum",
        "buyer_tax_num",
        "salerTaxNum",
        "buyerPhone",
        "buyerTel",
        "mobile",
        "email",
        "buyerEmail",
        "buyerAddress",
        "bankAccount",
        "buyerAccount",
        "idCardNo",
        "id_number",
        "passportNo",
    ],
)
def test_sensitive_names(key: str) -> None:
    """Tax numbers, phones, emails, addresses, bank accounts and ID numbers, in any spelling."""
    assert is_sensitive(key)


@pytest.mark.parametrize(
    "key", ["orderNo", "buyerName", "goodsName", "price", "invoiceDate", "taxRate", "code"]
)
def test_ordinary_names(key: str) -> None:
    """Order numbers, names of goods, amounts and codes stay readable."""
    assert not is_sensitive(key)


def test_mask_is_recursive_and_leaves_other_fields_alone() -> None:
    """Nested objects and lists are masked by key name; everything else is copied as is."""
    document = {
        "order": {
            "orderNo": "SO-1",
            "buyerTaxNum": TAX_NUM,
            "contacts": [{"email": "zhang.san@example.com", "name": "张三"}],
            "buyerAddress": {"city": "北京市海淀区", "street": "中关村大街1号"},
        },
        "count": 2,
    }
    assert {
        "order": {
            "orderNo": "SO-1",
            "buyerTaxNum": "9111**********CD2X",
            "contacts": [{"email": "zhan*************.com", "name": "张三"}],
            "buyerAddress": {"city": "北京**淀区", "street": "中关***1号"},
        },
        "count": 2,
    } == mask(document)
    assert TAX_NUM == document["order"]["buyerTaxNum"]  # the original is untouched


def test_edit_details_are_masked_by_the_pointer() -> None:
    """An edit's before/after are masked when its pointer names a sensitive field."""
    details = {"pointer": "/order/buyerTaxNum", "before": TAX_NUM, "after": "91110108MA01WXYZ9K"}
    assert {
        "pointer": "/order/buyerTaxNum",
        "before": "9111**********CD2X",
        "after": "9111**********YZ9K",
    } == mask_edit(details)
    plain = {"pointer": "/order/buyerName", "before": "甲", "after": "乙"}
    assert plain == mask_edit(plain)


def test_credential_headers_are_never_shown() -> None:
    """Authorization, cookies and API keys are hidden from everybody."""
    headers = (("Authorization", "Bearer x"), ("X-Api-Key", "k"), ("method", "issue"))
    assert [["Authorization", "***"], ["X-Api-Key", "***"], ["method", "issue"]] == (
        visible_headers(headers)
    )


async def test_viewer_sees_the_payload_masked(client: AdminClient, gateway: Gateway) -> None:
    """GET one submission: a viewer's payload has the tax number and phone masked."""
    row = await seed(gateway, "SO-MASK")
    response = await client.get(f"/admin/v1/submissions/{row.id}", headers=VIEWER)
    assert 200 == response.status
    order = (await response.json())["payload"]["order"]
    assert ("9111**********CD2X", "13*******78") == (order["buyerTaxNum"], order["buyerPhone"])
    assert "SO-MASK" == order["orderNo"]


async def test_operator_sees_the_payload_whole(client: AdminClient, gateway: Gateway) -> None:
    """The same submission, for an operator: every field as sent."""
    row = await seed(gateway, "SO-MASK")
    response = await client.get(f"/admin/v1/submissions/{row.id}", headers=OPERATOR)
    order = (await response.json())["payload"]["order"]
    assert (TAX_NUM, "13812345678") == (order["buyerTaxNum"], order["buyerPhone"])


async def test_viewer_does_not_see_a_non_json_body(client: AdminClient, gateway: Gateway) -> None:
    """A body that is not JSON cannot be masked field by field, so viewers do not see it."""
    row = await seed(gateway, "SO-RAW", body=b"buyerTaxNum=" + TAX_NUM.encode())
    viewer = await (await client.get(f"/admin/v1/submissions/{row.id}", headers=VIEWER)).json()
    operator = await (await client.get(f"/admin/v1/submissions/{row.id}", headers=OPERATOR)).json()
    assert TAX_NUM not in str(viewer)
    assert "payload_b64" not in viewer
    assert TAX_NUM in operator["payload"]
    assert operator["payload_b64"]


async def test_viewer_sees_edit_audit_masked(client: AdminClient, gateway: Gateway) -> None:
    """An edit of the tax number shows before/after masked in a viewer's audit log."""
    row = await seed(gateway, "SO-EDIT")
    edit = {"pointer": "/order/buyerTaxNum", "value": "91110108MA01WXYZ9K", "reason": "typo"}
    response = await client.patch(
        f"/admin/v1/submissions/{row.id}/payload", json=edit, headers=OPERATOR
    )
    assert 200 == response.status, await response.text()
    viewer = (await (await client.get("/admin/v1/audit", headers=VIEWER)).json())["items"][0]
    operator = (await (await client.get("/admin/v1/audit", headers=OPERATOR)).json())["items"][0]
    assert ("9111**********CD2X", "9111**********YZ9K") == (
        viewer["details"]["before"],
        viewer["details"]["after"],
    )
    assert (TAX_NUM, "91110108MA01WXYZ9K") == (
        operator["details"]["before"],
        operator["details"]["after"],
    )
