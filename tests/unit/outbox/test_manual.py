"""The manual-issuance layout: one row per invoice line, amounts as the platform works them out,
CSV with a BOM, a workbook of text cells."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from openpyxl import load_workbook

from gateway.outbox.manual import (
    COLUMNS,
    HEADERS,
    ManualExport,
    NotAnInvoice,
    invoice_lines,
    write_csv,
    write_xlsx,
)
from gateway.outbox.submissions import NewSubmission, Submission, SubmissionState, fingerprint


def stuck(order: Any, *, key: str = "SO-1", tenant: str = "demo") -> Submission:
    body = json.dumps({"order": order}, ensure_ascii=False).encode()
    new = NewSubmission(
        tenant=tenant,
        operation="issue",
        idempotency_key=key,
        fingerprint=fingerprint(body),
        business_key=key,
        ordering_key=None,
        method="POST",
        path="/open/v1/services",
        query=(),
        headers=(),
        body=body,
        request_id="r",
    )
    return Submission.of(
        new,
        id=f"sub_{key}",
        state=SubmissionState.DEAD,
        acknowledged=True,
        attempts=2,
        maybe_sent=False,
        last_error_class=None,
        last_error=None,
        response=None,
        result=None,
        created_at=0.0,
        updated_at=0.0,
        next_attempt_at=None,
        lease_owner=None,
        lease_expires_at=None,
        fence=1,
    )


def line(**fields: str) -> dict[str, str]:
    return {"goodsName": "技术服务费", **fields}


def amounts(**fields: str) -> tuple[str, str, str]:
    [row] = invoice_lines(stuck({"orderNo": "SO-1", "invoiceDetail": [line(**fields)]}))
    return row["amount"], row["tax"], row["total"]


def test_each_line_is_a_row_with_the_buyer_whole() -> None:
    order = {
        "orderNo": "SO-9",
        "buyerName": "北京示例科技有限公司",
        "buyerTaxNum": "91110108MA01ABCD2X",
        "buyerAddress": "北京市海淀区",
        "buyerTel": "010-12345678",
        "buyerAccount": "招商银行 6214830000000000",
        "invoiceDetail": [line(num="1", price="106"), line(goodsName="软件", goodsCode="106")],
    }
    rows = invoice_lines(stuck(order))
    tax_num = "91110108MA01ABCD2X"
    assert [("SO-9", tax_num, "技术服务费"), ("SO-9", tax_num, "软件")] == [
        (row["order_no"], row["buyer_tax_num"], row["goods_name"]) for row in rows
    ]
    assert ("010-12345678", "招商银行 6214830000000000") == (
        rows[0]["buyer_phone"],
        rows[0]["buyer_account"],
    )
    assert {key for key, _ in COLUMNS} == set(rows[0])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # Price including tax (the default): 1000 → 943.40 + 56.60.
        ({"num": "1", "price": "1000", "taxRate": "0.06"}, ("943.40", "56.60", "1000.00")),
        # withTaxFlag 0: the price is without tax.
        (
            {"num": "2", "price": "100", "taxRate": "0.13", "withTaxFlag": "0"},
            ("200.00", "26.00", "226.00"),
        ),
        # Given amounts are taken as they are.
        (
            {"taxExcludedAmount": "10.00", "tax": "0.60", "taxRate": "0.06"},
            ("10.00", "0.60", "10.60"),
        ),
        ({"taxIncludedAmount": "106", "taxRate": "0.06"}, ("100.00", "6.00", "106.00")),
        ({"taxIncludedAmount": "106", "tax": "5.99"}, ("100.01", "5.99", "106.00")),
        ({"taxExcludedAmount": "100", "taxRate": "0.13"}, ("100.00", "13.00", "113.00")),
    ],
)
def test_amounts_as_given_else_as_the_platform_works_them_out(
    fields: dict[str, str], expected: tuple[str, str, str]
) -> None:
    assert expected == amounts(**fields)


@pytest.mark.parametrize(
    "order",
    [None, {"orderNo": "SO-1"}, {"orderNo": "SO-1", "invoiceDetail": [line(price="abc")]}],
)
def test_a_body_that_is_not_an_invoice_is_skipped_with_why(order: Any) -> None:
    with pytest.raises(NotAnInvoice):
        invoice_lines(stuck(order))
    export = ManualExport()
    export.add(stuck(order))
    export.add(stuck({"invoiceDetail": [line(price="5")]}, key="SO-2", tenant="other"))
    assert (["sub_SO-2"], ["other"], ["sub_SO-1"]) == (
        export.submission_ids,
        export.tenants,
        [skipped["submission_id"] for skipped in export.skipped],
    )
    expected = {"invoices": 1, "lines": 1, "amount": "5.00", "tax": "0.00", "total": "5.00"}
    assert expected.items() <= export.totals().items()


def test_csv_has_a_bom_and_the_workbook_the_same_text_cells() -> None:
    rows = [["SO-1", "=HYPERLINK(1)", "0012", "", *["x"] * (len(HEADERS) - 4)]]
    text = io.BytesIO()
    write_csv(HEADERS, rows, text)
    assert text.getvalue().startswith(b"\xef\xbb\xbf" + HEADERS[0].encode())
    book = io.BytesIO()
    write_xlsx(HEADERS, rows, book)
    sheet = load_workbook(io.BytesIO(book.getvalue())).active
    assert sheet is not None
    cells = [list(row) for row in sheet.iter_rows(values_only=True)]
    # Text stays text: no formula, no number, leading zeros kept; empty text is an empty cell.
    expected = ["SO-1", "=HYPERLINK(1)", "0012", None, *["x"] * (len(HEADERS) - 4)]
    assert [list(HEADERS), expected] == cells
