"""The four platform operations (docs/design.md#operations), on a call that passed every check,
under the method names of both of the vendor's product lines.

Each takes the parsed JSON body and answers a `Reply`; all ledger changes happen synchronously
inside it, so a call is either processed entirely or not at all.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final

from gateway.tools.simulator import codes
from gateway.tools.simulator.ledger import (
    STATUS_MESSAGES,
    Amounts,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Ledger,
)
from gateway.tools.simulator.tax_numbers import buyer_fail_cause
from gateway.tools.simulator.wire import Reply

REQUEST_BILLING: Final = "nuonuo.OpeMplatform.requestBillingNew"
QUERY_INVOICE_RESULT: Final = "nuonuo.OpeMplatform.queryInvoiceResult"
FAST_INVOICE_RED: Final = "nuonuo.OpeMplatform.fastInvoiceRed"
INVOICE_INSPECTION: Final = "nuonuo.electronInvoice.invoiceInspection"
#: The same ledger under the names of the vendor's electronic-invoice (ElectronInvoice) line,
#: whose SDKs send the issue and query bodies above; its red-letter goes through requestBillingNew
#: (`order.invoiceType` "2" naming the original's `invoiceNum`) or its quick full reversal.
ELECTRON_REQUEST_BILLING: Final = "nuonuo.ElectronInvoice.requestBillingNew"
ELECTRON_QUERY_INVOICE_RESULT: Final = "nuonuo.ElectronInvoice.queryInvoiceResult"
ELECTRON_FAST_INVOICE_RED: Final = "nuonuo.ElectronInvoice.unifiedfastInvoiceRed"

#: queryInvoiceResult looks up at most this many serial or order numbers per call.
MAX_QUERY_NUMBERS: Final = 50
#: Why an issuance drawn to fail (`fail_issuance_rate`, `fail_signing_rate`) failed.
DRAWN_ISSUANCE_FAILURE: Final = "开票失败：税局系统繁忙，请稍后重试开票（模拟故障）"
DRAWN_SIGNING_FAILURE: Final = "签章失败：签章服务异常（模拟故障）"
#: Where a finished invoice's PDF would be; the `.invalid` domain never resolves.
PDF_URL: Final = "https://invoices.simulator.invalid/{invoice_no}.pdf"
RED_REASONS: Final = {
    "1": "销货退回",
    "2": "开票有误",
    "3": "服务中止",
    "4": "销售折让",
}
_CENT: Final = Decimal("0.01")
_LIMIT: Final = Decimal(10) ** 12
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


@dataclass(frozen=True, slots=True)
class OperationContext:
    """What an operation may see and change; `now` is monotonic, `wall` Unix seconds. The rest
    are the platform's settings of the moment (`PlatformSettings`)."""

    ledger: Ledger
    seller_tax_num: str
    now: float
    wall: float
    issue_delay_s: float
    #: Answer E9106 to a reused order number; off, issue it again.
    dedup: bool
    sign_delay_s: float = 0.0
    #: queryInvoiceResult lists an invoice only this long after it was accepted.
    lookup_lag_s: float = 0.0
    #: Shares of accepted blue invoices drawn to end 22 (issuance failed) or 24 (signing failed).
    fail_issuance_rate: float = 0.0
    fail_signing_rate: float = 0.0
    #: What those shares are drawn with (seeded by the simulator's `--seed`).
    rng: random.Random = field(default_factory=random.Random)

    def draw(self, rate: float, cause: str) -> str | None:
        """`cause` with probability `rate`, else None (no draw at all when `rate` is 0, so runs
        without failure rates see the same random sequence as before)."""
        if rate > 0 and self.rng.random() < rate:
            return cause
        return None

    def listed(self, entry: Invoice) -> bool:
        """Whether the lookup index has caught up with `entry` (`lookup_lag_s`)."""
        return self.now >= entry.accepted_at + self.lookup_lag_s


Operation = Callable[[OperationContext, Mapping[str, Any]], Reply]


class InvalidRequest(Exception):
    """The body lacks a required field or has one in the wrong format (answered 0201)."""


def answer(code: str, describe: str | None = None, result: object = None) -> Reply:
    """A platform answer `{"code", "describe"[, "result"]}`."""
    payload: dict[str, Any] = {"code": code, "describe": describe or codes.DESCRIPTIONS[code]}
    if result is not None:
        payload["result"] = result
    return Reply.json(payload)


def request_billing(ctx: OperationContext, body: Mapping[str, Any]) -> Reply:
    """Issue a blue invoice: accepted at once, issued (or failed) `issue_delay_s` later."""
    order = body.get("order")
    if not isinstance(order, dict):
        raise InvalidRequest("order 必须是对象")
    order_no = _required_text(order, "orderNo")
    buyer_name = _required_text(order, "buyerName")
    buyer_tax_num = _optional_text(order, "buyerTaxNum")
    amounts = _order_amounts(order.get("invoiceDetail"))
    ctx.ledger.count_send(ctx.seller_tax_num, order_no)
    if ctx.dedup and ctx.ledger.by_order(ctx.seller_tax_num, order_no):
        ctx.ledger.duplicates_rejected += 1
        return answer(codes.DUPLICATE_ORDER, f"订单编号[{order_no}]已存在，请勿重复提交")
    fail_cause = buyer_fail_cause(buyer_tax_num) or ctx.draw(
        ctx.fail_issuance_rate, DRAWN_ISSUANCE_FAILURE
    )
    sign_fail_cause = None
    if fail_cause is None:
        sign_fail_cause = ctx.draw(ctx.fail_signing_rate, DRAWN_SIGNING_FAILURE)
    entry = ctx.ledger.record(
        order_no=order_no,
        seller_tax_num=ctx.seller_tax_num,
        kind=InvoiceKind.BLUE,
        buyer_name=buyer_name,
        buyer_tax_num=buyer_tax_num,
        amounts=amounts,
        now=ctx.now,
        wall=ctx.wall,
        issue_delay_s=ctx.issue_delay_s,
        sign_delay_s=ctx.sign_delay_s,
        fail_cause=fail_cause,
        sign_fail_cause=sign_fail_cause,
    )
    return answer(codes.SUCCESS, "开票提交成功", {"invoiceSerialNum": entry.serial_no})


def query_invoice_result(ctx: OperationContext, body: Mapping[str, Any]) -> Reply:
    """Status of up to 50 invoices by serial number, or else by order number (given both, the
    platform goes by the serial numbers). Numbers it does not know, or has not indexed yet
    (`lookup_lag_s`), are left out; an order number reused with deduplication off finds every
    invoice issued under it."""
    serial_nos = _number_list(body, "serialNos")
    order_nos = _number_list(body, "orderNos")
    if not serial_nos and not order_nos:
        raise InvalidRequest("serialNos 与 orderNos 不能同时为空")
    candidates: list[Invoice] = []
    if serial_nos:
        for serial_no in serial_nos:
            entry = ctx.ledger.by_serial(serial_no)
            if entry is not None and entry.seller_tax_num == ctx.seller_tax_num:
                candidates.append(entry)
    else:
        for order_no in order_nos:
            candidates.extend(ctx.ledger.by_order(ctx.seller_tax_num, order_no))
    found = {entry.serial_no: entry for entry in candidates if ctx.listed(entry)}
    result = [_query_view(entry, ctx.now) for entry in found.values()]
    return answer(codes.SUCCESS, "查询成功", result)


def fast_invoice_red(ctx: OperationContext, body: Mapping[str, Any]) -> Reply:
    """Reverse an issued blue invoice with a red one carrying its own order number."""
    order_no = _required_text(body, "orderNo")
    original_order_no = _required_text(body, "originalOrderNo")
    red_reason = str(body.get("redReason", ""))
    if red_reason not in RED_REASONS:
        raise InvalidRequest("redReason 必须是 1、2、3 或 4")
    blues = [
        e
        for e in ctx.ledger.by_order(ctx.seller_tax_num, original_order_no)
        if e.kind is InvoiceKind.BLUE
    ]
    return _reverse(ctx, order_no, red_reason, blues, f"原蓝票订单[{original_order_no}]")


def electron_request_billing(ctx: OperationContext, body: Mapping[str, Any]) -> Reply:
    """requestBillingNew of the ElectronInvoice line: a blue invoice, as `request_billing`; or,
    with `order.invoiceType` "2", a red one reversing the blue invoice whose number
    `order.invoiceNum` gives (the original's order number is not part of this shape)."""
    order = body.get("order")
    invoice_type = str(order.get("invoiceType") or "1") if isinstance(order, dict) else "1"
    if invoice_type not in ("1", "2"):
        raise InvalidRequest("invoiceType 必须是 1（蓝票）或 2（红票）")
    if not isinstance(order, dict) or invoice_type == "1":
        return request_billing(ctx, body)
    order_no = _required_text(order, "orderNo")
    invoice_num = _required_text(order, "invoiceNum")
    red_reason = str(order.get("redReason") or "1")  # the vendor's default: 销货退回
    if red_reason not in RED_REASONS:
        raise InvalidRequest("redReason 必须是 1、2、3 或 4")
    original = ctx.ledger.by_invoice_no(invoice_num)
    blues = (
        [original]
        if original is not None
        and original.kind is InvoiceKind.BLUE
        and original.seller_tax_num == ctx.seller_tax_num
        else []
    )
    return _reverse(ctx, order_no, red_reason, blues, f"原蓝票[{invoice_num}]")


def _reverse(
    ctx: OperationContext, order_no: str, red_reason: str, blues: list[Invoice], original_name: str
) -> Reply:
    """A red invoice under `order_no` reversing the first of `blues` that can be reversed."""
    ledger, seller = ctx.ledger, ctx.seller_tax_num
    ledger.count_send(seller, order_no)
    if ctx.dedup and ledger.by_order(seller, order_no):
        ledger.duplicates_rejected += 1
        return answer(codes.DUPLICATE_ORDER, f"订单编号[{order_no}]已存在，请勿重复提交")
    if not blues:
        return answer(codes.RED_ORIGINAL_NOT_FOUND, f"{original_name}不存在")
    # Issued and done with (signed, or signing failed): an invoice still issuing or signing
    # cannot be reversed yet.
    issued = [e for e in blues if e.status(ctx.now).numbered and e.status(ctx.now).final]
    if not issued:
        return answer(codes.RED_ORIGINAL_NOT_ISSUED, f"{original_name}尚未开具成功，不能红冲")
    unreversed = [e for e in issued if not ledger.reversals_of(e, ctx.now)]
    if not unreversed:
        return answer(codes.RED_ALREADY_REVERSED, f"{original_name}已红冲")
    original = unreversed[0]
    entry = ledger.record(
        order_no=order_no,
        seller_tax_num=seller,
        kind=InvoiceKind.RED,
        buyer_name=original.buyer_name,
        buyer_tax_num=original.buyer_tax_num,
        amounts=original.amounts.negated(),
        now=ctx.now,
        wall=ctx.wall,
        issue_delay_s=ctx.issue_delay_s,
        sign_delay_s=ctx.sign_delay_s,
        original=original,
        red_reason=red_reason,
    )
    return answer(codes.SUCCESS, "红冲提交成功", {"invoiceSerialNum": entry.serial_no})


def invoice_inspection(ctx: OperationContext, body: Mapping[str, Any]) -> Reply:
    """Verify (查验) an issued invoice by number, date and amount including tax."""
    invoice_num = _required_text(body, "invoiceNum")
    date_match = _DATE.fullmatch(_required_text(body, "invoiceDate"))
    if date_match is None:
        raise InvalidRequest("invoiceDate 格式应为 YYYY-MM-DD 或 YYYYMMDD")
    invoice_date = "-".join(date_match.groups())
    amount = _decimal(body.get("amount"), "amount", None)
    entry = ctx.ledger.by_invoice_no(invoice_num)
    if entry is None or not entry.status(ctx.now).numbered:
        return answer(codes.INSPECTION_NOT_FOUND, f"查无此票：{invoice_num}")
    if entry.issued_date() != invoice_date or entry.amounts.with_tax != amount:
        return answer(codes.INSPECTION_MISMATCH, "发票日期或金额与查验信息不一致")
    reversed_ = bool(ctx.ledger.reversals_of(entry, ctx.now))
    result = {
        "invoiceNum": entry.invoice_no,
        "invoiceDate": entry.issued_date(),
        "invoiceType": "2" if entry.kind is InvoiceKind.RED else "1",
        "amount": str(entry.amounts.with_tax),
        "exTaxAmount": str(entry.amounts.without_tax),
        "taxAmount": str(entry.amounts.tax),
        "buyerName": entry.buyer_name,
        "buyerTaxNum": entry.buyer_tax_num,
        "salerTaxNum": entry.seller_tax_num,
        "state": "3" if reversed_ else "0",
        "stateMsg": "已红冲" if reversed_ else "正常",
    }
    return answer(codes.SUCCESS, "查验成功", result)


#: The operations by `method` header.
OPERATIONS: Final[Mapping[str, Operation]] = {
    REQUEST_BILLING: request_billing,
    QUERY_INVOICE_RESULT: query_invoice_result,
    FAST_INVOICE_RED: fast_invoice_red,
    INVOICE_INSPECTION: invoice_inspection,
    ELECTRON_REQUEST_BILLING: electron_request_billing,
    ELECTRON_QUERY_INVOICE_RESULT: query_invoice_result,
    ELECTRON_FAST_INVOICE_RED: fast_invoice_red,
}


def _query_view(entry: Invoice, now: float) -> dict[str, Any]:
    status = entry.status(now)
    numbered = status.numbered
    return {
        "serialNo": entry.serial_no,
        "orderNo": entry.order_no,
        "status": status.value,
        "statusMsg": STATUS_MESSAGES[status],
        "failCause": entry.cause(now),
        "invoiceType": "2" if entry.kind is InvoiceKind.RED else "1",
        # 数电票 have no separate invoice code: the 20-digit number identifies them.
        "invoiceCode": "",
        "invoiceNo": entry.invoice_no if numbered else "",
        "invoiceTime": round(entry.issued_wall * 1000) if numbered else None,
        # Only a signed invoice has its PDF.
        "pdfUrl": PDF_URL.format(invoice_no=entry.invoice_no)
        if status is InvoiceStatus.ISSUED
        else "",
        "buyerName": entry.buyer_name,
        "buyerTaxNum": entry.buyer_tax_num,
        "salerTaxNum": entry.seller_tax_num,
        "orderAmount": str(entry.amounts.with_tax),
        "exTaxAmount": str(entry.amounts.without_tax),
        "taxAmount": str(entry.amounts.tax),
        "originalOrderNo": entry.original_order_no or "",
        "redReason": entry.red_reason or "",
    }


def _required_text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} 不能为空")
    return value


def _optional_text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} 必须是字符串")
    return value.strip()


def _number_list(data: Mapping[str, Any], name: str) -> list[str]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"{name} 必须是字符串数组")
    numbers = [item for item in value if item]  # SDKs send [""] for "none"
    if len(numbers) > MAX_QUERY_NUMBERS:
        raise InvalidRequest(f"{name} 最多 {MAX_QUERY_NUMBERS} 个")
    return numbers


def _decimal(value: object, name: str, default: Decimal | None) -> Decimal:
    if value is None or value == "":
        if default is None:
            raise InvalidRequest(f"{name} 不能为空")
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest(f"{name} 必须是数字")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest(f"{name} 必须是数字，收到 {value!r}") from None
    # Bounded so that quantizing (and any invoice) stays sane: 1e12 yuan is beyond any invoice.
    if not number.is_finite() or abs(number) >= _LIMIT:
        raise InvalidRequest(f"{name} 必须是数字，收到 {value!r}")
    return number.quantize(_CENT, ROUND_HALF_UP) if name == "amount" else number


def _order_amounts(details: object) -> Amounts:
    """Totals of the invoice lines. Missing numbers: num 1, price 0, taxRate 0, withTaxFlag 1
    (prices include tax); `taxIncludedAmount`, when given, is the line total including tax."""
    if not isinstance(details, list) or not details:
        raise InvalidRequest("invoiceDetail 不能为空")
    with_tax = without_tax = Decimal(0)
    for index, line in enumerate(details):
        where = f"invoiceDetail[{index}]"
        if not isinstance(line, dict):
            raise InvalidRequest(f"{where} 必须是对象")
        _required_text(line, "goodsName")
        rate = _decimal(line.get("taxRate"), f"{where}.taxRate", Decimal(0))
        given = line.get("taxIncludedAmount")
        if given not in (None, ""):
            line_with_tax = _decimal(given, f"{where}.taxIncludedAmount", None)
            line_without_tax = (line_with_tax / (1 + rate)).quantize(_CENT, ROUND_HALF_UP)
        else:
            total = _decimal(line.get("price"), f"{where}.price", Decimal(0)) * _decimal(
                line.get("num"), f"{where}.num", Decimal(1)
            )
            if str(line.get("withTaxFlag", "1")) == "0":
                line_without_tax = total.quantize(_CENT, ROUND_HALF_UP)
                line_with_tax = (total * (1 + rate)).quantize(_CENT, ROUND_HALF_UP)
            else:
                line_with_tax = total.quantize(_CENT, ROUND_HALF_UP)
                line_without_tax = (total / (1 + rate)).quantize(_CENT, ROUND_HALF_UP)
        with_tax += line_with_tax.quantize(_CENT, ROUND_HALF_UP)
        without_tax += line_without_tax
    return Amounts(with_tax=with_tax, without_tax=without_tax, tax=with_tax - without_tax)
