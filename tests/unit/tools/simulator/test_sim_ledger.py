"""The ledger, doubles without duplicate detection, reset, and the package surface."""

from __future__ import annotations

import inspect

import pytest

import gateway.tools.simulator
from gateway.tools.simulator import FAST_INVOICE_RED, is_valid_tax_number, make_tax_number


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
        "failed": 1,
        "duplicates_rejected": 1,
        "doubles": 0,
    } == ledger["totals"]
    assert {"issued": 1, "serialNos": [serial]} == ledger["orders"]["ORD-1"]
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


@pytest.mark.parametrize("settings", [{"duplicate_detection": False}], indirect=True)
async def test_without_duplicate_detection_a_reused_order_is_issued_twice(platform, clock):
    """With duplicate_detection off a reused orderNo is issued again and shows as a double."""
    first = await platform.issue("ORD-1")
    second = await platform.issue("ORD-1")
    clock.advance(1)
    ledger = await platform.ledger()

    assert ("E0000", "E0000") == (first["code"], second["code"])
    assert (2, 2, 1) == (
        ledger["totals"]["issued"],
        ledger["orders"]["ORD-1"]["issued"],
        ledger["totals"]["doubles"],
    )
    assert ["ORD-1"] == ledger["doubles"]


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
