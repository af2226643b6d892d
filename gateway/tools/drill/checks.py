"""The ledger check: what the client was told, what the gateway recorded, what the platform issued.

Every order of a drill is checked against the gateway's outbox (its final row) and the
platform's ledger (how many live invoices carry its order number):

    acknowledged (200 E0000 or 202)   the row is final: delivered → issued exactly once;
                                      failed (the platform's verdict, after queueing) → issued 0
    refused / rejected                issued 0 (the client was told it was not issued)
    unanswered                        a failure in itself: the client never got a settling answer

and, whatever the client saw: no order number issued twice, no invoice the drill never asked
for, no row left waiting (queued, delivering, unknown) or needing on-call (dead). A run passes
when every one of those counts is zero. How many order numbers the platform received more than
once (`resent`) is reported, not judged: a resend is fine as long as it issued nothing twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.tools.drill.integrator import Book, Settled

#: Outbox states after which nothing more happens without on-call.
FINAL_STATES: Final = frozenset({"delivered", "failed"})


@dataclass(frozen=True, slots=True)
class Issued:
    """The platform's side: live invoices per order number, and its own totals."""

    by_order: Mapping[str, int]
    doubles: int
    duplicates_rejected: int
    faults_hit: Mapping[str, int] = field(default_factory=dict)
    #: Requests to issue the platform processed per order number (the simulator counts them; a
    #: staging platform's lookups cannot).
    sends_by_order: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_ledger(cls, ledger: Mapping[str, Any]) -> Issued:
        """From the simulator's `GET /_sim/ledger` (with invoices)."""
        orders = ledger.get("orders", {})
        totals = ledger.get("totals", {})
        counters = ledger.get("counters", {})
        return cls(
            by_order={str(k): int(v.get("issued", 0)) for k, v in orders.items()},
            doubles=int(totals.get("doubles", 0)),
            duplicates_rejected=int(totals.get("duplicates_rejected", 0)),
            faults_hit={str(k): int(v) for k, v in counters.get("faults_hit", {}).items()},
            sends_by_order={str(k): int(v.get("sends", 0)) for k, v in orders.items()},
        )


@dataclass
class Check:
    """The counts of the ledger check, with the order numbers behind each failing count."""

    submitted: int = 0
    forwarded: int = 0
    queued: int = 0
    refused: int = 0
    rejected: int = 0
    issued_once: int = 0
    #: The platform refused after queueing: acknowledged, final `failed`, never issued.
    failed_after_queueing: int = 0
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    stuck: Counter[str] = field(default_factory=Counter)
    stuck_orders: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    #: The client was told "not issued" (refused, rejected, failed) but the platform issued it.
    contradicted: list[str] = field(default_factory=list)
    #: Issued, but the drill never asked for that order number.
    unknown: list[str] = field(default_factory=list)
    #: Duplicate-code answers: resends after a lost answer that the platform caught.
    duplicates_rejected: int = 0
    #: Order numbers the platform received more than once (informational).
    resent: list[str] = field(default_factory=list)
    #: Outbox rows by final state, and the refusal codes the client saw.
    row_states: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)

    @property
    def acknowledged(self) -> int:
        return self.forwarded + self.queued

    @property
    def passed(self) -> bool:
        return not (
            self.lost
            or self.doubled
            or self.stuck
            or self.unanswered
            or self.contradicted
            or self.unknown
        )

    def problems(self) -> list[str]:
        """Each failing count in words, with up to five order numbers."""
        found: list[tuple[str, list[str]]] = [
            ("acknowledged but never issued (LOST)", self.lost),
            ("issued more than once (DOUBLED)", self.doubled),
            (f"not finished in the outbox ({describe(self.stuck)})", self.stuck_orders),
            ("never got a settling answer, even after retries", self.unanswered),
            ("told 'not issued' but issued", self.contradicted),
            ("issued though the drill never asked for it", self.unknown),
        ]
        return [
            f"{len(orders)} {what}: {', '.join(orders[:5])}{' …' if len(orders) > 5 else ''}"
            for what, orders in found
            if orders
        ]

    def summary(self) -> str:
        """The one line a run ends with."""
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: {self.submitted} submitted, {self.acknowledged} acknowledged "
            f"({self.forwarded} forwarded, {self.queued} queued), {self.issued_once} issued "
            f"exactly once, {len(self.lost)} lost, {len(self.doubled)} issued twice, "
            f"{sum(self.stuck.values())} stuck, {len(self.unanswered)} unanswered"
        )


def describe(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if n) or "none"


def check(book: Book, rows: Iterable[Mapping[str, Any]], issued: Issued) -> Check:
    """Check every order of `book` against the outbox `rows` (export records of the drill's
    tenant) and what the platform `issued`."""
    by_key = {str(row.get("business_key")): row for row in rows}
    result = Check(submitted=len(book.orders), duplicates_rejected=issued.duplicates_rejected)
    for row in by_key.values():
        state = str(row.get("state"))
        result.row_states[state] += 1
        if state not in FINAL_STATES:
            result.stuck[state] += 1
            result.stuck_orders.append(str(row.get("business_key")))
    for order_no, order in book.orders.items():
        times = issued.by_order.get(order_no, 0)
        if times > 1:
            result.doubled.append(order_no)
        if order.settled is Settled.ACKNOWLEDGED:
            if order.queued:
                result.queued += 1
            else:
                result.forwarded += 1
            _check_acknowledged(result, order_no, by_key.get(order_no), times, queued=order.queued)
        elif order.settled in (Settled.REFUSED, Settled.REJECTED):
            if order.settled is Settled.REFUSED:
                result.refused += 1
                result.refusals[order.detail or "refused"] += 1
            else:
                result.rejected += 1
            if times:
                result.contradicted.append(order_no)
        else:
            result.unanswered.append(order_no)
    result.unknown = sorted(k for k, n in issued.by_order.items() if n and k not in book.orders)
    result.resent = sorted(k for k, n in issued.sends_by_order.items() if n > 1)
    if issued.doubles and not result.doubled:
        named = sorted(k for k, n in issued.by_order.items() if n > 1)
        result.doubled = named or [f"({issued.doubles} not named by the platform)"]
    return result


def _check_acknowledged(
    result: Check, order_no: str, row: Mapping[str, Any] | None, times: int, *, queued: bool
) -> None:
    """An order the client was told was taken on: forwarded (200 E0000) must be issued exactly
    once whatever its row says; queued (202) too, unless the platform refused it later."""
    if row is None:  # the gateway kept no record of what it acknowledged
        result.stuck["without an outbox record"] += 1
        result.stuck_orders.append(order_no)
    state = str(row.get("state")) if row is not None else None
    if state == "failed" and queued:
        result.failed_after_queueing += 1
        if times:
            result.contradicted.append(order_no)
    elif state in ("delivered", "failed") or state is None:
        if times == 0:
            result.lost.append(order_no)  # no row at all is lost too: nothing will send it
        elif times == 1:
            result.issued_once += 1
    # Rows in any other state are counted as stuck already.
