"""The ledger, doubles and sends per order number with deduplication off, reset, and the package
surface."""

from __future__ import annotations

import inspect

import aiohttp
import pytest

import gateway.tools.simulator
from gateway.tools.simulator import (
    FAST_INVOICE_RED,
    REQUEST_BILLING,
    is_valid_tax_number,
    make_tax_number,
)


async def test_ledger_lists_invoices_orders_totals_and_counters(platform, clock):
    """GET /_sim/ledger shows each invoice, per-order counts, totals and counters."""
    serial = (await platform.issue("ORD-1"))["result"]["invoiceSerialNum"]
    await platform.issue("ORD-1")
    await platform.issue("ORD-2", buyerTaxNum="bad")
    clock.advance(1)
    await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    )

    ledger = await platform.ledger()

    assert {
        "accepted": 3,
        "issued": 1,
        "red": 0,
        "issuing": 1,
        "signing": 0,
        "failed": 1,
        "sign_failed": 0,
        "sends": 4,
        "duplicates_rejected": 1,
        "doubles": 0,
    } == ledger["totals"]
    assert {"sends": 2, "issued": 1, "serialNos": [serial]} == ledger["orders"]["ORD-1"]
    assert 0 == ledger["orders"]["ORD-2"]["issued"]
    assert ["blue", "blue", "red"] == [invoice["kind"] for invoice in ledger["invoices"]]
    assert ("RED-1", "ORD-1", "20") == (
        ledger["invoices"][2]["orderNo"],
        ledger["invoices"][2]["originalOrderNo"],
        ledger["invoices"][2]["status"],
    )
    assert {"token_calls", "calls", "rejected_signature", "stale_timestamp", "bad_token"} <= set(
        ledger["counters"]
    )


async def test_ledger_summary_leaves_out_invoices(platform):
    """?invoices=0 answers totals, doubles and counters only."""
    await platform.issue("ORD-1")

    _, summary = await platform.control("GET", "/_sim/ledger?invoices=0")

    assert {"totals", "doubles", "counters"} == set(summary)


@pytest.mark.parametrize("settings", [{"dedup": False}], indirect=True)
async def test_with_dedup_off_a_reused_order_is_issued_twice_and_both_sends_count(platform, clock):
    """With dedup off a reused orderNo gets a second serial number, shows as a double, and the
    order's sends count both requests."""
    first = await platform.issue("ORD-1")
    second = await platform.issue("ORD-1")
    clock.advance(1)
    ledger = await platform.ledger()
    order = ledger["orders"]["ORD-1"]

    assert ("E0000", "E0000") == (first["code"], second["code"])
    assert [first["result"]["invoiceSerialNum"], second["result"]["invoiceSerialNum"]] == order[
        "serialNos"
    ]
    assert (2, 2, 2, 1) == (
        order["sends"],
        order["issued"],
        ledger["totals"]["issued"],
        ledger["totals"]["doubles"],
    )
    assert ["ORD-1"] == ledger["doubles"]


async def test_with_dedup_on_a_resend_counts_as_a_send_but_not_an_invoice(platform):
    """A resend answered E9106 is a send of its order number; the order still has one invoice."""
    await platform.issue("ORD-1")
    await platform.issue("ORD-1")
    await platform.issue("ORD-1")
    order = (await platform.ledger())["orders"]["ORD-1"]

    assert (3, 1) == (order["sends"], len(order["serialNos"]))


async def test_sends_count_processed_requests_only(platform):
    """A 0201 or a call a fault answered instead is no send; one whose answer was lost after
    processing is."""
    await platform.token()
    await platform.issue("ORD-1", buyerName="")
    await platform.add_fault(kind="busy", operations=[REQUEST_BILLING], count=1)
    await platform.issue("ORD-1")
    await platform.add_fault(kind="answer_lost", operations=[REQUEST_BILLING], count=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await platform.issue("ORD-1")
    order = (await platform.ledger())["orders"]["ORD-1"]

    assert (1, 1) == (order["sends"], order["issued"])


async def test_reset_clears_ledger_faults_tokens_and_counters(platform):
    """After POST /_sim/reset nothing of the earlier run is left; old tokens are unknown."""
    token = await platform.token()
    await platform.issue("ORD-1")
    await platform.add_fault(kind="busy", after_s=100)

    status, _ = await platform.control("POST", "/_sim/reset")
    ledger = await platform.ledger()
    _, listing = await platform.control("GET", "/_sim/faults")
    reused = await platform.call(FAST_INVOICE_RED, {}, token=token)

    assert 200 == status
    assert (0, [], 0) == (ledger["totals"]["accepted"], listing["faults"], len(ledger["invoices"]))
    assert {"token_calls": 0, "calls": {}} == {
        "token_calls": ledger["counters"]["token_calls"],
        "calls": ledger["counters"]["calls"],
    }
    assert "070301" == reused["code"]


async def test_health_answers_200(platform):
    """GET /_sim/health is 200 whatever the fault rules say."""
    await platform.add_fault(kind="http_error")

    assert (200, {"status": "ok"}) == await platform.control("GET", "/_sim/health")


def test_public_names_are_exactly_all():
    """The package exports what `__all__` lists, and `__all__` lists only real names."""
    exported = {
        name
        for name, value in vars(gateway.tools.simulator).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }

    assert sorted(exported) == sorted(gateway.tools.simulator.__all__)


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("91350100M000100Y43", True),  # a published example of a unified social credit code
        ("91350100M000100Y44", False),
        (make_tax_number(7), True),
        ("110108123456789", True),  # legacy 15-character number: no check character
        ("abc", False),
    ],
)
def test_tax_number_check(number, valid):
    """The GB 32100 check character decides whether an issuance to that buyer fails."""
    assert valid == is_valid_tax_number(number)
