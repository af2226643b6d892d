"""The ledger: every invoice the simulator accepted, so a run can prove nothing was lost or doubled.

An entry is written when the platform answers `E0000` to an issue or a red-letter request, and
never changes afterwards: its fate is drawn at acceptance and its status is a function of time,

    20 issuing ──ready_at──┬─► 22 failed                       (fail_cause)
                           └─► 21 signing ──signed_at──┬─► 24 signing failed   (sign_fail_cause)
                                                       └─► 2  done

so advancing a fake clock is all it takes to finish an issuance. Besides the invoices the ledger
counts **sends**: every valid request to issue under an order number (blue or red), whatever it was
answered, so a run can tell a resend the platform caught from one it issued again.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

#: Invoice dates and serial numbers are in Beijing time, as on the real platform.
BEIJING: Final = timezone(timedelta(hours=8), "CST")


class InvoiceKind(enum.StrEnum):
    BLUE = "blue"  # 蓝字发票: an ordinary invoice
    RED = "red"  # 红字发票: reverses a blue one


class InvoiceStatus(enum.StrEnum):
    """The platform's issuance states, with its own numbering. The platform also has 3
    (cancelled) and 31 (cancelling), reached only by a cancellation the simulator does not offer."""

    ISSUING = "20"
    SIGNING = "21"
    ISSUED = "2"
    FAILED = "22"
    SIGN_FAILED = "24"

    @property
    def numbered(self) -> bool:
        """Issued at the tax bureau: the invoice has its number, signed or not."""
        return self in (InvoiceStatus.SIGNING, InvoiceStatus.ISSUED, InvoiceStatus.SIGN_FAILED)

    @property
    def final(self) -> bool:
        """Nothing more will happen to the invoice (the platform says: stop querying)."""
        return self in (InvoiceStatus.ISSUED, InvoiceStatus.FAILED, InvoiceStatus.SIGN_FAILED)


STATUS_MESSAGES: Final = {
    InvoiceStatus.ISSUING: "开票中",
    InvoiceStatus.SIGNING: "开票成功签章中",
    InvoiceStatus.ISSUED: "开票完成（最终状态）",
    InvoiceStatus.FAILED: "开票失败",
    InvoiceStatus.SIGN_FAILED: "开票成功签章失败",
}


@dataclass(frozen=True, slots=True)
class Amounts:
    """Money on an invoice, in yuan with two decimals; negative on a red invoice."""

    with_tax: Decimal
    without_tax: Decimal
    tax: Decimal

    def negated(self) -> Amounts:
        return Amounts(-self.with_tax, -self.without_tax, -self.tax)


@dataclass(frozen=True, slots=True)
class Invoice:
    """One accepted issue (blue) or reversal (red). Times ending in `_at` are monotonic seconds."""

    serial_no: str
    order_no: str
    seller_tax_num: str
    kind: InvoiceKind
    buyer_name: str
    buyer_tax_num: str
    amounts: Amounts
    invoice_no: str
    accepted_at: float
    accepted_wall: float
    #: Issuance ends (issued or failed); signing ends at `signed_at`.
    ready_at: float
    signed_at: float
    fail_cause: str | None = None
    sign_fail_cause: str | None = None
    original_serial_no: str | None = None
    original_order_no: str | None = None
    red_reason: str | None = None

    def status(self, now: float) -> InvoiceStatus:
        """The issuance state at monotonic time `now`."""
        if now < self.ready_at:
            return InvoiceStatus.ISSUING
        if self.fail_cause is not None:
            return InvoiceStatus.FAILED
        if now < self.signed_at:
            return InvoiceStatus.SIGNING
        if self.sign_fail_cause is not None:
            return InvoiceStatus.SIGN_FAILED
        return InvoiceStatus.ISSUED

    def is_live(self, now: float) -> bool:
        """Anything but failed: an invoice that exists (signed or not), or soon will."""
        return self.status(now) is not InvoiceStatus.FAILED

    def cause(self, now: float) -> str:
        """Why it failed (status 22 or 24), else ""."""
        match self.status(now):
            case InvoiceStatus.FAILED:
                return self.fail_cause or ""
            case InvoiceStatus.SIGN_FAILED:
                return self.sign_fail_cause or ""
            case _:
                return ""

    @property
    def issued_wall(self) -> float:
        """Unix seconds at which issuance finished (or will)."""
        return self.accepted_wall + (self.ready_at - self.accepted_at)

    def issued_date(self) -> str:
        """The invoice date (开票日期) as YYYY-MM-DD, Beijing time."""
        return datetime.fromtimestamp(self.issued_wall, BEIJING).strftime("%Y-%m-%d")

    def to_json(self, now: float) -> dict[str, Any]:
        """The entry as shown by `GET /_sim/ledger`."""
        status = self.status(now)
        return {
            "serialNo": self.serial_no,
            "orderNo": self.order_no,
            "sellerTaxNum": self.seller_tax_num,
            "kind": self.kind.value,
            "status": status.value,
            "statusMsg": STATUS_MESSAGES[status],
            "failCause": self.cause(now),
            "invoiceNo": self.invoice_no if status.numbered else "",
            "buyerName": self.buyer_name,
            "buyerTaxNum": self.buyer_tax_num,
            "amount": str(self.amounts.with_tax),
            "originalOrderNo": self.original_order_no or "",
            "redReason": self.red_reason or "",
            "acceptedAt": round(self.accepted_wall, 3),
        }


class Ledger:
    """What the simulated platform has accepted, indexed the ways the operations look it up."""

    def __init__(self) -> None:
        self._invoices: list[Invoice] = []
        self._by_serial: dict[str, Invoice] = {}
        self._by_invoice_no: dict[str, Invoice] = {}
        self._by_order: defaultdict[tuple[str, str], list[Invoice]] = defaultdict(list)
        self._reds_by_original: defaultdict[str, list[Invoice]] = defaultdict(list)
        self._sends: Counter[tuple[str, str]] = Counter()
        self._sequence = itertools.count(1)
        #: How many submissions were answered `E9106` (order number already used).
        self.duplicates_rejected = 0

    def __len__(self) -> int:
        return len(self._invoices)

    def clear(self) -> None:
        """Forget everything, numbering included."""
        self._invoices.clear()
        self._by_serial.clear()
        self._by_invoice_no.clear()
        self._by_order.clear()
        self._reds_by_original.clear()
        self._sends.clear()
        self._sequence = itertools.count(1)
        self.duplicates_rejected = 0

    def count_send(self, seller_tax_num: str, order_no: str) -> None:
        """A valid request to issue under `order_no` reached the platform (whatever its answer)."""
        self._sends[(seller_tax_num, order_no)] += 1

    def sends(self, seller_tax_num: str, order_no: str) -> int:
        """Valid requests to issue under `order_no` the platform processed."""
        return self._sends[(seller_tax_num, order_no)]

    def by_order(self, seller_tax_num: str, order_no: str) -> list[Invoice]:
        """Entries for an order number of a seller, oldest first (more than one only with
        deduplication off)."""
        return list(self._by_order.get((seller_tax_num, order_no), ()))

    def by_serial(self, serial_no: str) -> Invoice | None:
        return self._by_serial.get(serial_no)

    def by_invoice_no(self, invoice_no: str) -> Invoice | None:
        return self._by_invoice_no.get(invoice_no)

    def reversals_of(self, original: Invoice, now: float) -> list[Invoice]:
        """Live red entries that reverse `original`."""
        reds = self._reds_by_original.get(original.serial_no, [])
        return [entry for entry in reds if entry.is_live(now)]

    def record(
        self,
        *,
        order_no: str,
        seller_tax_num: str,
        kind: InvoiceKind,
        buyer_name: str,
        buyer_tax_num: str,
        amounts: Amounts,
        now: float,
        wall: float,
        issue_delay_s: float,
        sign_delay_s: float = 0.0,
        fail_cause: str | None = None,
        sign_fail_cause: str | None = None,
        original: Invoice | None = None,
        red_reason: str | None = None,
    ) -> Invoice:
        """Accept an invoice: give it a serial number (流水号) and an invoice number (发票号码).
        It is issued (or fails with `fail_cause`) `issue_delay_s` later, then signed (or not,
        with `sign_fail_cause`) `sign_delay_s` after that."""
        sequence = next(self._sequence)
        local = datetime.fromtimestamp(wall, BEIJING)
        entry = Invoice(
            serial_no=f"{local:%y%m%d%H%M%S}{sequence:08d}",
            order_no=order_no,
            seller_tax_num=seller_tax_num,
            kind=kind,
            buyer_name=buyer_name,
            buyer_tax_num=buyer_tax_num,
            amounts=amounts,
            # 数电票 numbers: 20 digits, year + region code (11 = Beijing) + sequence.
            invoice_no=f"{local:%y}11{sequence:016d}",
            accepted_at=now,
            accepted_wall=wall,
            ready_at=now + issue_delay_s,
            signed_at=now + issue_delay_s + sign_delay_s,
            fail_cause=fail_cause,
            sign_fail_cause=sign_fail_cause,
            original_serial_no=original.serial_no if original is not None else None,
            original_order_no=original.order_no if original is not None else None,
            red_reason=red_reason,
        )
        self._invoices.append(entry)
        self._by_serial[entry.serial_no] = entry
        self._by_invoice_no[entry.invoice_no] = entry
        self._by_order[(seller_tax_num, order_no)].append(entry)
        if original is not None:
            self._reds_by_original[original.serial_no].append(entry)
        return entry

    def snapshot(self, now: float, *, with_invoices: bool = True) -> dict[str, Any]:
        """The ledger as served by `GET /_sim/ledger` (see `docs/simulator.md` for the shape)."""
        statuses = [(entry, entry.status(now)) for entry in self._invoices]
        orders: dict[str, dict[str, Any]] = {}
        for seller, order_no in dict.fromkeys([*self._by_order, *self._sends]):
            entries = self._by_order.get((seller, order_no), [])
            orders[order_no] = {
                "sends": self._sends[(seller, order_no)],
                "issued": sum(1 for entry in entries if entry.is_live(now)),
                "serialNos": [entry.serial_no for entry in entries],
            }
        doubles = sorted(order_no for order_no, order in orders.items() if order["issued"] > 1)

        def count(kind: InvoiceKind | None, status: InvoiceStatus) -> int:
            return sum(
                1 for entry, state in statuses if state is status and kind in (None, entry.kind)
            )

        snapshot: dict[str, Any] = {
            "totals": {
                "accepted": len(self._invoices),
                "issued": count(InvoiceKind.BLUE, InvoiceStatus.ISSUED),
                "red": count(InvoiceKind.RED, InvoiceStatus.ISSUED),
                "issuing": count(None, InvoiceStatus.ISSUING),
                "signing": count(None, InvoiceStatus.SIGNING),
                "failed": count(None, InvoiceStatus.FAILED),
                "sign_failed": count(None, InvoiceStatus.SIGN_FAILED),
                "sends": sum(self._sends.values()),
                "duplicates_rejected": self.duplicates_rejected,
                "doubles": len(doubles),
            },
            "doubles": doubles,
        }
        if with_invoices:
            snapshot["invoices"] = [entry.to_json(now) for entry in self._invoices]
            snapshot["orders"] = orders
        return snapshot
