"""The manual-issuance export: stuck invoices laid out for the tax bureau portal's batch import
(docs/manual-issuance.md).

When the platform is down for hours, the business issues the stuck invoices by hand in the tax
bureau's portal. This module turns each stuck submission's body (the platform's
`requestBillingNew` order) into one row per invoice line, with the buyer's data whole (that is
the export's purpose: the portal needs it), and writes the rows as CSV (UTF-8 with a BOM, so
Excel opens it as UTF-8) or as an Excel workbook.

The column headers are in `COLUMNS`, and only there. They name the fields the way the tax
bureau's e-invoice data elements do (购买方名称, 购买方纳税人识别号, 商品和服务税收分类编码, …);
the portal's own template could not be checked against an official copy, so the operator
compares them with the template the portal offers for download (docs/manual-issuance.md).

Amounts the body does not give are worked out the way the platform does: a line's total is
`price * num`, including tax unless `withTaxFlag` is `0`; the tax is the difference between the
totals with and without tax, each rounded to the cent.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import IO, Any, Final

from gateway.outbox.submissions import Submission

#: (key, header) of every column, in the portal's order: one row per invoice line.
COLUMNS: Final = (
    ("order_no", "订单号"),
    ("buyer_name", "购买方名称"),
    ("buyer_tax_num", "购买方纳税人识别号"),
    ("buyer_address", "购买方地址"),
    ("buyer_phone", "购买方电话"),
    ("buyer_account", "购买方开户银行及账号"),
    ("goods_name", "项目名称"),
    ("goods_code", "商品和服务税收分类编码"),
    ("spec_type", "规格型号"),
    ("unit", "单位"),
    ("quantity", "数量"),
    ("unit_price", "单价"),
    ("price_with_tax", "单价含税"),
    ("amount", "金额(不含税)"),
    ("tax_rate", "税率"),
    ("tax", "税额"),
    ("total", "价税合计"),
)
HEADERS: Final = tuple(header for _, header in COLUMNS)
#: The sheet's name in the workbook.
SHEET: Final = "批量开具"
#: A BOM first, so Excel reads the CSV as UTF-8 (without it, Chinese text is garbled).
CSV_ENCODING: Final = "utf-8-sig"
FORMATS: Final = ("csv", "xlsx")

_CENT: Final = Decimal("0.01")


class NotAnInvoice(ValueError):
    """The submission's body is not an invoice order this export can lay out."""


def _text(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)


def _number(value: Any, name: str) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise NotAnInvoice(f"{name} is not a number: {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise NotAnInvoice(f"{name} is not a number: {value!r}") from None
    if not number.is_finite():
        raise NotAnInvoice(f"{name} is not a number: {value!r}")
    return number


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, ROUND_HALF_UP)


def _amounts(line: Mapping[str, Any], where: str) -> tuple[Decimal, Decimal]:
    """The line's amount without tax and its tax, as given, else as the platform works them
    out."""
    rate = _number(line.get("taxRate"), f"{where}.taxRate") or Decimal(0)
    without = _number(line.get("taxExcludedAmount"), f"{where}.taxExcludedAmount")
    tax = _number(line.get("tax"), f"{where}.tax")
    if without is not None and tax is not None:
        return _cents(without), _cents(tax)
    including = _number(line.get("taxIncludedAmount"), f"{where}.taxIncludedAmount")
    if without is not None:
        including = _cents(without * (1 + rate))
    elif including is None:
        price = _number(line.get("price"), f"{where}.price") or Decimal(0)
        num = _number(line.get("num"), f"{where}.num")
        total = price * (Decimal(1) if num is None else num)
        if str(line.get("withTaxFlag", "1")).strip() == "0":
            without, including = _cents(total), _cents(total * (1 + rate))
        else:
            including = _cents(total)
    including = _cents(including)
    if without is None:
        without = _cents(including / (1 + rate)) if tax is None else including - _cents(tax)
    return _cents(without), _cents(including - without if tax is None else tax)


def invoice_lines(submission: Submission) -> list[dict[str, str]]:
    """The submission's invoice as rows keyed as `COLUMNS`, one per line; `NotAnInvoice` when
    its body is not a `requestBillingNew` order with invoice lines."""
    try:
        document = json.loads(submission.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NotAnInvoice("the body is not JSON") from None
    order = document.get("order") if isinstance(document, dict) else None
    if not isinstance(order, dict):
        raise NotAnInvoice("the body has no order object")
    details = order.get("invoiceDetail")
    if not isinstance(details, list) or not details:
        raise NotAnInvoice("the order has no invoice lines (invoiceDetail)")
    order_no = _text(order, "orderNo") or (submission.business_key or "")
    buyer = {
        "order_no": order_no,
        "buyer_name": _text(order, "buyerName"),
        "buyer_tax_num": _text(order, "buyerTaxNum"),
        "buyer_address": _text(order, "buyerAddress"),
        "buyer_phone": _text(order, "buyerTel") or _text(order, "buyerPhone"),
        "buyer_account": _text(order, "buyerAccount"),
    }
    rows = []
    for index, line in enumerate(details):
        where = f"invoiceDetail[{index}]"
        if not isinstance(line, dict):
            raise NotAnInvoice(f"{where} is not an object")
        amount, tax = _amounts(line, where)
        rows.append(
            {
                **buyer,
                "goods_name": _text(line, "goodsName"),
                "goods_code": _text(line, "goodsCode"),
                "spec_type": _text(line, "specType"),
                "unit": _text(line, "unit"),
                "quantity": _text(line, "num"),
                "unit_price": _text(line, "price"),
                "price_with_tax": "否" if _text(line, "withTaxFlag") == "0" else "是",
                "amount": str(amount),
                "tax_rate": _text(line, "taxRate"),
                "tax": str(tax),
                "total": str(amount + tax),
            }
        )
    return rows


@dataclass(slots=True)
class ManualExport:
    """What an export holds: the rows, which submissions they came from, what was left out."""

    rows: list[dict[str, str]] = field(default_factory=list)
    submission_ids: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    #: Submissions left out, each with why (`{"submission_id", "business_key", "reason"}`).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: Order numbers of exported submissions an attempt may have reached the platform with (the
    #: answer was lost): the platform may have issued them; check before issuing by hand.
    maybe_sent: list[str] = field(default_factory=list)

    def add(self, submission: Submission) -> None:
        try:
            rows = invoice_lines(submission)
        except NotAnInvoice as exc:
            self.skipped.append(
                {
                    "submission_id": submission.id,
                    "business_key": submission.business_key,
                    "reason": str(exc),
                }
            )
            return
        self.rows.extend(rows)
        self.submission_ids.append(submission.id)
        if submission.maybe_sent:
            self.maybe_sent.append(rows[0]["order_no"])
        if submission.tenant not in self.tenants:
            self.tenants.append(submission.tenant)

    def totals(self) -> dict[str, Any]:
        amount = sum((Decimal(row["amount"]) for row in self.rows), Decimal(0))
        tax = sum((Decimal(row["tax"]) for row in self.rows), Decimal(0))
        return {
            "invoices": len(self.submission_ids),
            "lines": len(self.rows),
            "amount": str(amount),
            "tax": str(tax),
            "total": str(amount + tax),
            "skipped": len(self.skipped),
        }

    def to_json(self) -> dict[str, Any]:
        """As the admin API answers it: the headers, then each row as a list in their order."""
        return {
            "columns": list(HEADERS),
            "rows": [[row[key] for key, _ in COLUMNS] for row in self.rows],
            "totals": self.totals(),
            "submission_ids": list(self.submission_ids),
            "tenants": list(self.tenants),
            "skipped": list(self.skipped),
            "maybe_sent": list(self.maybe_sent),
        }


def write_csv(columns: Sequence[str], rows: Iterable[Sequence[str]], sink: IO[bytes]) -> None:
    """The rows under a header row, as CSV in UTF-8 with a BOM and CRLF line ends (Excel's)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    sink.write(text.getvalue().encode(CSV_ENCODING))


def write_xlsx(columns: Sequence[str], rows: Iterable[Sequence[str]], sink: IO[bytes]) -> None:
    """The rows under a header row, as an Excel workbook of one sheet. Every cell is text, so
    tax numbers, order numbers and amounts stay exactly as exported (no leading zeros lost, no
    floating point, nothing read as a formula)."""
    # Only the export needs it: nothing else loads it.
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    workbook = Workbook(write_only=False)
    sheet = workbook.active
    assert sheet is not None  # a new workbook always has one
    sheet.title = SHEET
    for row_number, values in enumerate([list(columns), *map(list, rows)], start=1):
        for column_number, value in enumerate(values, start=1):
            cell = sheet.cell(row=row_number, column=column_number)
            cell.value = value
            cell.data_type = "s"  # never a formula, whatever the text starts with
            cell.number_format = "@"
    for column_number, header in enumerate(columns, start=1):
        letter = get_column_letter(column_number)
        sheet.column_dimensions[letter].width = max(12, 2 * len(header) + 2)
    sheet.freeze_panes = "A2"
    workbook.save(sink)
