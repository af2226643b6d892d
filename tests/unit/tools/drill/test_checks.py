"""The ledger check: every way a drill can fail is caught on data built by hand, and a clean
run passes."""

from __future__ import annotations

import pytest

from gateway.tools.drill.checks import Issued, check
from gateway.tools.drill.integrator import Settled
from tests.unit.tools.drill.books import book, delivered, issued, order, rows


def test_clean_book_passes() -> None:
    """Forwarded and queued orders, each delivered and issued once, pass; the summary says PASS."""
    found = check(
        book(order("A1"), order("A2", queued=True)),
        delivered(["A1", "A2"]),
        issued(A1=1, A2=1),
    )
    assert found.passed
    assert [] == found.problems()
    assert found.summary().startswith("PASS: 2 submitted, 2 acknowledged (1 forwarded, 1 queued)")
    assert 2 == found.issued_once
    assert {"delivered": 2} == dict(found.row_states)


@pytest.mark.parametrize("queued", [False, True])
def test_acknowledged_delivered_but_not_issued_is_lost(queued: bool) -> None:
    """An acknowledged order the outbox calls delivered but the platform never issued is lost."""
    found = check(book(order("A1", queued=queued)), delivered(["A1"]), issued())
    assert ["A1"] == found.lost
    assert not found.passed
    assert found.summary().startswith("FAIL")
    assert "1 lost" in found.summary()


def test_issued_twice_is_doubled() -> None:
    """An order number with two live invoices is doubled (and not counted as issued once)."""
    found = check(book(order("A1")), delivered(["A1"]), issued(A1=2, doubles=1))
    assert ["A1"] == found.doubled
    assert 0 == found.issued_once
    assert not found.passed


def test_refused_order_issued_twice_is_doubled() -> None:
    """Doubled is checked whatever the client was told."""
    found = check(book(order("A1", Settled.REFUSED)), rows(A1="failed"), issued(A1=2))
    assert ["A1"] == found.doubled
    assert not found.passed


def test_platform_double_of_an_order_outside_the_book_is_doubled() -> None:
    """The platform's `doubles` names order numbers the book has no order for, too."""
    found = check(book(order("A1")), delivered(["A1"]), issued(A1=1, X9=2, doubles=1))
    assert ["X9"] == found.doubled
    assert not found.passed


def test_platform_doubles_count_alone_fails_the_check() -> None:
    """A ledger reporting doubles fails the run even when no order number shows more than one
    invoice (a ledger read without its orders): the check must never pass over a double."""
    found = check(book(order("A1")), delivered(["A1"]), issued(A1=1, doubles=1))
    assert not found.passed


@pytest.mark.parametrize("state", ["queued", "delivering", "unknown", "dead"])
def test_row_not_final_is_stuck(state: str) -> None:
    """A row still waiting for the dispatcher, or needing on-call, is stuck."""
    found = check(book(order("A1", queued=True)), rows(A1=state), issued())
    assert {state: 1} == dict(found.stuck)
    assert ["A1"] == found.stuck_orders
    assert [] == found.lost  # counted once, as stuck
    assert not found.passed
    assert f"1 not finished in the outbox (1 {state}): A1" in found.problems()


def test_row_of_an_order_outside_the_book_is_checked_for_stuck_too() -> None:
    """Every row of the export is checked, not only the book's."""
    found = check(book(order("A1")), rows(A1="delivered", Z1="queued"), issued(A1=1))
    assert {"queued": 1} == dict(found.stuck)
    assert ["Z1"] == found.stuck_orders


def test_acknowledged_without_an_outbox_row_is_stuck() -> None:
    """The gateway acknowledged an order it kept no record of."""
    found = check(book(order("A1", queued=True)), [], issued(A1=1))
    assert {"without an outbox record": 1} == dict(found.stuck)
    assert ["A1"] == found.stuck_orders
    assert not found.passed
    assert "without an outbox record" in found.problems()[0]


def test_acknowledged_without_row_and_not_issued_is_also_lost() -> None:
    """No row and no invoice: nothing will ever send it."""
    found = check(book(order("A1", queued=True)), [], issued())
    assert ["A1"] == found.lost
    assert {"without an outbox record": 1} == dict(found.stuck)


@pytest.mark.parametrize("settled", [Settled.REFUSED, Settled.REJECTED])
def test_told_not_issued_but_issued_is_contradicted(settled: Settled) -> None:
    """A client told "refused" or "rejected" must not find the invoice issued."""
    found = check(book(order("A1", settled, detail="platform code 0201")), [], issued(A1=1))
    assert ["A1"] == found.contradicted
    assert not found.passed
    assert "1 told 'not issued' but issued: A1" in found.problems()


def test_failed_after_queueing_and_issued_is_contradicted() -> None:
    """A queued order the outbox marked failed must not have been issued."""
    found = check(book(order("A1", queued=True)), rows(A1="failed"), issued(A1=1))
    assert ["A1"] == found.contradicted
    assert not found.passed


def test_failed_after_queueing_not_issued_passes() -> None:
    """The platform refusing a queued order later is a verdict, not a failure of the drill."""
    found = check(book(order("A1", queued=True)), rows(A1="failed"), issued())
    assert found.passed
    assert 1 == found.failed_after_queueing
    assert 1 == found.queued


def test_forwarded_then_failed_and_not_issued_is_lost() -> None:
    """An order answered 200 E0000 (forwarded: the client was told it was accepted) must end
    issued; a `failed` row for it with nothing issued is a lost invoice, not a verdict."""
    found = check(book(order("A1", queued=False)), rows(A1="failed"), issued())
    assert not found.passed
    assert ["A1"] == found.lost


def test_refusals_and_rejections_not_issued_pass() -> None:
    """Refused and rejected orders that were not issued pass, counted with their codes."""
    found = check(
        book(
            order("A1", Settled.REFUSED, detail="platform code 0201"),
            order("A2", Settled.REFUSED, detail="platform code 0201"),
            order("A3", Settled.REJECTED, detail="Bad request"),
        ),
        rows(A1="failed", A2="failed"),
        issued(),
    )
    assert found.passed
    assert (2, 1) == (found.refused, found.rejected)
    assert {"platform code 0201": 2} == dict(found.refusals)
    assert 0 == found.acknowledged


@pytest.mark.parametrize("settled", [Settled.UNANSWERED, None])
def test_unanswered_fails(settled: Settled | None) -> None:
    """An order that never got a settling answer fails the run, issued or not."""
    found = check(book(order("A1", settled)), [], issued(A1=1))
    assert ["A1"] == found.unanswered
    assert not found.passed
    assert "1 unanswered" in found.summary()


def test_issued_order_never_sent_is_unknown() -> None:
    """An invoice for an order number the drill never sent is found (a zero count is not)."""
    found = check(book(order("A1")), delivered(["A1"]), issued(A1=1, Z1=1, Z2=0))
    assert ["Z1"] == found.unknown
    assert not found.passed
    assert "1 issued though the drill never asked for it: Z1" in found.problems()


def test_duplicates_rejected_are_counted_not_failed() -> None:
    """Duplicate-code answers are what a resend after a lost answer looks like: no failure."""
    found = check(book(order("A1")), delivered(["A1"]), issued(A1=1, duplicates_rejected=3))
    assert 3 == found.duplicates_rejected
    assert found.passed


def test_problems_list_at_most_five_order_numbers() -> None:
    """Each problem names up to five order numbers, then an ellipsis."""
    names = [f"A{i}" for i in range(1, 8)]
    found = check(book(*(order(n) for n in names)), delivered(names), issued())
    assert ["7 acknowledged but never issued (LOST): A1, A2, A3, A4, A5 …"] == found.problems()


def test_problems_with_five_order_numbers_have_no_ellipsis() -> None:
    """Exactly five order numbers are all named, without an ellipsis."""
    names = [f"A{i}" for i in range(1, 6)]
    found = check(book(*(order(n) for n in names)), delivered(names), issued())
    assert ["5 acknowledged but never issued (LOST): A1, A2, A3, A4, A5"] == found.problems()


def test_issued_from_ledger_as_documented() -> None:
    """`Issued.from_ledger` reads the ledger shaped like docs/simulator.md "The ledger"."""
    ledger = {
        "totals": {
            "accepted": 3,
            "issued": 1,
            "red": 0,
            "issuing": 1,
            "failed": 1,
            "duplicates_rejected": 1,
            "doubles": 0,
        },
        "doubles": [],
        "invoices": [{"serialNo": "S1", "orderNo": "ORD-1", "kind": "blue", "status": "2"}],
        "orders": {
            "ORD-1": {"sends": 2, "issued": 1, "serialNos": ["S1"]},
            "ORD-2": {"serialNos": []},
        },
        "counters": {
            "token_calls": 2,
            "calls": {"accessToken": 2, "nuonuo.OpeMplatform.requestBillingNew": 3},
            "faults_hit": {"answer_lost": 1},
        },
    }
    assert Issued(
        by_order={"ORD-1": 1, "ORD-2": 0},
        doubles=0,
        duplicates_rejected=1,
        faults_hit={"answer_lost": 1},
        sends_by_order={"ORD-1": 2, "ORD-2": 0},
    ) == Issued.from_ledger(ledger)


def test_orders_sent_more_than_once_are_reported_not_failed() -> None:
    """An order number the platform received twice but issued once is listed as resent; the run
    still passes."""
    found = check(
        book(order("A1"), order("A2")),
        delivered(["A1", "A2"]),
        Issued(
            by_order={"A1": 1, "A2": 1},
            doubles=0,
            duplicates_rejected=1,
            sends_by_order={"A1": 2, "A2": 1},
        ),
    )
    assert ["A1"] == found.resent
    assert found.passed


def test_issued_from_ledger_without_orders() -> None:
    """A ledger read with `?invoices=0` has no orders: nothing issued per order, totals kept."""
    found = Issued.from_ledger({"totals": {"doubles": 2}, "counters": {}})
    assert ({}, 2, 0, {}) == (
        dict(found.by_order),
        found.doubles,
        found.duplicates_rejected,
        dict(found.faults_hit),
    )
