"""Books, outbox rows and platform ledgers built by hand, for the check and the report."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.tools.drill.checks import Issued
from gateway.tools.drill.integrator import Book, Order, Settled


def order(
    order_no: str,
    settled: Settled | None = Settled.ACKNOWLEDGED,
    *,
    queued: bool = False,
    detail: str = "",
    sends: int = 1,
) -> Order:
    statuses = {
        Settled.ACKNOWLEDGED: 202 if queued else 200,
        Settled.REFUSED: 200,
        Settled.REJECTED: 400,
    }
    status = 0 if settled is None else statuses.get(settled, 0)
    return Order(
        order_no,
        {"order": {"orderNo": order_no}},
        sends=sends,
        settled=settled,
        status=status,
        detail=detail,
        queued=queued,
    )


def book(*orders: Order) -> Book:
    result = Book()
    for one in orders:
        result.orders[one.order_no] = one
    return result


def rows(**states: str) -> list[dict[str, Any]]:
    """Export records of the drill's tenant: business key → final state."""
    return [
        {"business_key": key, "state": state, "acknowledged": True} for key, state in states.items()
    ]


def issued(*, doubles: int = 0, duplicates_rejected: int = 0, **by_order: int) -> Issued:
    return Issued(by_order=by_order, doubles=doubles, duplicates_rejected=duplicates_rejected)


def delivered(order_nos: Iterable[str]) -> list[dict[str, Any]]:
    return rows(**dict.fromkeys(order_nos, "delivered"))
