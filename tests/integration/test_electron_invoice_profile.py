"""The ElectronInvoice product line's profile (config/electron-invoice.yaml) end to end: a real
gateway process on that profile, a simulator that does not deduplicate, a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_core_gateway import invoice
from tests.integration.test_outbox import OVERRIDES, serial_of, wait_delivered
from tests.support.harness import Gateway, Simulator
from tests.support.processes import http_json, wait_until

PROFILE = "electron-invoice.yaml"
ISSUE = "nuonuo.ElectronInvoice.requestBillingNew"
QUERY = "nuonuo.ElectronInvoice.queryInvoiceResult"
QUICK_RED = "nuonuo.ElectronInvoice.unifiedfastInvoiceRed"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    """A simulator that issues a reused order number again: a blind resend shows as a double."""
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2", dedup=False) as sim:
        yield sim


@pytest.fixture
def gw(tmp_path: Path, sim: Simulator) -> Iterator[Gateway]:
    """A gateway process on the ElectronInvoice profile, pointed at the simulator."""
    with Gateway.start(tmp_path / "gw", sim.url, overrides=OVERRIDES, profile=PROFILE) as gw:
        yield gw


def query(gw: Gateway, order_no: str) -> list[dict[str, Any]]:
    """The platform's entries for `order_no`, asked through the gateway as this line's SDKs ask."""
    status, _, body = gw.call(QUERY, {"orderNos": [order_no], "isOfferInvoiceDetail": "0"})
    assert (200, "E0000") == (status, body["code"]), body
    return list(body["result"])


def issued(gw: Gateway, order_no: str) -> dict[str, Any]:
    """`order_no`'s entry once the platform has issued it (status 2)."""
    return dict(
        wait_until(
            lambda: next((e for e in query(gw, order_no) if e["status"] == "2"), None),
            timeout=10,
            what=f"{order_no} issued",
        )
    )


def test_issue_query_and_red_letter_by_invoice_number(gw: Gateway, sim: Simulator) -> None:
    """An issue is answered at once and sent once; the query finds it issued; the line's
    red-letter (requestBillingNew, invoiceType 2, the blue's invoiceNum) reverses it."""
    blue = invoice()
    order_no = blue["order"]["orderNo"]
    status, headers, answer = gw.call(ISSUE, blue)
    entry = issued(gw, order_no)
    red_order_no = f"{order_no}-R"
    red = {
        "order": {
            **blue["order"],
            "orderNo": red_order_no,
            "invoiceType": "2",
            "invoiceCode": "",
            "invoiceNum": entry["invoiceNo"],
            "redReason": "2",
        }
    }
    red_status, _, red_answer = gw.call(ISSUE, red)
    [red_entry] = query(gw, red_order_no)

    assert (200, "E0000") == (status, answer["code"]), answer
    assert answer["result"]["invoiceSerialNum"] == entry["serialNo"]
    assert (200, "E0000") == (red_status, red_answer["code"]), red_answer
    assert ("2", order_no) == (red_entry["invoiceType"], red_entry["originalOrderNo"])
    assert (1, 1) == (sim.sends(order_no), sim.sends(red_order_no))
    assert "forwarded" == headers["X-Gateway-Outcome"]
    assert {ISSUE: 1, f"{ISSUE}:red": 1} == submits_by_operation(gw)


def submits_by_operation(gw: Gateway) -> dict[str, int]:
    """Client requests per configured submit operation, from the gateway's /metrics."""
    status, _, text = http_json("GET", f"{gw.admin_url}/metrics")
    assert 200 == status
    counts: dict[str, int] = {}
    for line in str(text).splitlines():
        if line.startswith("gateway_requests_total{") and "Invoice.requestBillingNew" in line:
            operation = line.split('operation="', 1)[1].split('"', 1)[0]
            counts[operation] = counts.get(operation, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_lost_answer_is_reconciled_by_lookup_with_one_send(gw: Gateway, sim: Simulator) -> None:
    """The platform issues, then drops the answer: the gateway finds the invoice by this line's
    queryInvoiceResult and never sends the order number a second time."""
    query(gw, "warm-up")  # a token first, so the lost answer is the issue's
    sim.fault(kind="answer_lost", operations=[ISSUE], count=1)
    blue = invoice()
    order_no = blue["order"]["orderNo"]
    status, _, answer = gw.call(ISSUE, blue)
    assert 202 == status, answer
    [view] = wait_delivered(gw, [answer["submission_id"]]).values()
    again_status, again_headers, again = gw.call(ISSUE, blue)
    order = sim.ledger()["orders"][order_no]

    assert (1, 1) == (order["sends"], order["issued"])
    assert (True, "lookup") == (view["result"]["reconciled"], view["result"]["evidence"])
    assert order["serialNos"] == [serial_of(view)]
    assert (200, "true") == (again_status, again_headers.get("X-Gateway-Reconciled"))
    assert serial_of(view) == again["result"]["invoiceSerialNum"]


def test_red_letter_queued_during_an_outage_waits_behind_its_original(
    gw: Gateway, sim: Simulator
) -> None:
    """Both submitted while the platform refuses connections: both queued; once it is back the
    original is issued first (sent once) and the quick red-letter reverses it."""
    query(gw, "warm-up")
    fault = sim.fault(kind="refuse")
    blue = invoice()
    order_no = blue["order"]["orderNo"]
    red_order_no = f"{order_no}-R"
    red = {"orderNo": red_order_no, "originalOrderNo": order_no, "redReason": "1"}
    first_status, _, first = gw.call(ISSUE, blue)
    second_status, _, second = gw.call(QUICK_RED, red)
    queued = {
        gw.status(first["submission_id"])["status"],
        gw.status(second["submission_id"])["status"],
    }
    sim.clear_faults()
    views = wait_delivered(gw, [first["submission_id"], second["submission_id"]])
    ledger = sim.ledger()
    invoices = {entry["orderNo"]: entry for entry in ledger["invoices"]}

    assert (202, 202) == (first_status, second_status), (first, second, fault)
    assert queued <= {"queued", "delivering"}
    assert ("blue", "red") == (invoices[order_no]["kind"], invoices[red_order_no]["kind"])
    assert order_no == invoices[red_order_no]["originalOrderNo"]
    assert invoices[order_no]["acceptedAt"] < invoices[red_order_no]["acceptedAt"]
    assert (
        views[first["submission_id"]]["delivered_at"]
        < views[second["submission_id"]]["delivered_at"]
    )
    # The red-letter may have been refused while its original was still issuing (E9202, retried);
    # it is issued once.
    assert (1, 1) == (ledger["orders"][order_no]["sends"], ledger["orders"][red_order_no]["issued"])
    assert 0 == ledger["totals"]["doubles"]
