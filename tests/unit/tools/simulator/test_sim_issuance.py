"""How an accepted invoice ends (20 → 21 → 2, or 22, or 24), batched queries, and a lookup that
lags issuance."""

from __future__ import annotations

import pytest

from gateway.tools.simulator import FAST_INVOICE_RED, INVOICE_INSPECTION, QUERY_INVOICE_RESULT


async def query(platform, **numbers):
    body = await platform.call(QUERY_INVOICE_RESULT, numbers)
    assert "E0000" == body["code"]
    return body["result"]


async def status_of(platform, order_no):
    [result] = await query(platform, orderNos=[order_no])
    return result


@pytest.mark.parametrize("settings", [{"sign_delay_s": 2.0}], indirect=True)
async def test_issued_invoice_is_signing_then_done_with_its_pdf(platform, clock):
    """After issue_delay_s the invoice is 21 (issued, signing) with its number but no PDF; after
    sign_delay_s more it is 2 with a PDF address."""
    await platform.issue("ORD-1")
    clock.advance(1)
    signing = await status_of(platform, "ORD-1")
    clock.advance(2)
    done = await status_of(platform, "ORD-1")

    assert ("21", "开票成功签章中", "") == (
        signing["status"],
        signing["statusMsg"],
        signing["pdfUrl"],
    )
    assert signing["invoiceNo"] == done["invoiceNo"] != ""
    assert ("2", f"https://invoices.simulator.invalid/{done['invoiceNo']}.pdf") == (
        done["status"],
        done["pdfUrl"],
    )


@pytest.mark.parametrize("settings", [{"fail_issuance_rate": 1.0}], indirect=True)
async def test_issuance_drawn_to_fail_ends_22_with_a_fail_cause(platform, clock):
    """With fail_issuance_rate 1 an accepted invoice ends 22 with a failCause, no number, no PDF."""
    accepted = await platform.issue("ORD-1")
    clock.advance(1)
    result = await status_of(platform, "ORD-1")
    ledger = await platform.ledger()

    assert "E0000" == accepted["code"]
    assert ("22", "开票失败", "", "") == (
        result["status"],
        result["statusMsg"],
        result["invoiceNo"],
        result["pdfUrl"],
    )
    assert "" != result["failCause"]
    assert (1, 0) == (ledger["totals"]["failed"], ledger["orders"]["ORD-1"]["issued"])


@pytest.mark.parametrize("settings", [{"fail_signing_rate": 1.0}], indirect=True)
async def test_signing_drawn_to_fail_ends_24_issued_but_unsigned(platform, clock):
    """With fail_signing_rate 1 the invoice is issued (it has its number and counts as issued for
    the order) but ends 24 with a failCause and no PDF."""
    await platform.issue("ORD-1")
    clock.advance(1)
    result = await status_of(platform, "ORD-1")
    ledger = await platform.ledger()

    assert ("24", "开票成功签章失败", "") == (
        result["status"],
        result["statusMsg"],
        result["pdfUrl"],
    )
    assert "" != result["failCause"]
    assert 20 == len(result["invoiceNo"])
    assert (1, 1) == (ledger["totals"]["sign_failed"], ledger["orders"]["ORD-1"]["issued"])


@pytest.mark.parametrize("settings", [{"fail_issuance_rate": 0.5}], indirect=True)
async def test_failure_rate_fails_about_that_share(platform, clock):
    """fail_issuance_rate 0.5 fails roughly half of 200 issuances (seeded, so repeatable)."""
    for n in range(200):
        await platform.issue(f"ORD-{n}")
    clock.advance(1)
    failed = (await platform.ledger())["totals"]["failed"]

    assert 70 <= failed <= 130


@pytest.mark.parametrize("settings", [{"fail_signing_rate": 1.0}], indirect=True)
async def test_invoice_whose_signing_failed_can_be_verified_and_reversed(platform, clock):
    """A 24 invoice exists at the tax bureau: inspection finds it and a red-letter reverses it."""
    await platform.issue("ORD-1")
    clock.advance(1)
    original = await status_of(platform, "ORD-1")
    inspected = await platform.call(
        INVOICE_INSPECTION,
        {"invoiceNum": original["invoiceNo"], "invoiceDate": "2026-01-01", "amount": "113.00"},
    )
    red = await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    )

    assert ("E0000", "E0000") == (inspected["code"], red["code"])


@pytest.mark.parametrize("settings", [{"sign_delay_s": 2.0}], indirect=True)
async def test_invoice_still_signing_cannot_be_reversed_yet(platform, clock):
    """A red-letter for an original in 21 is E9202, like one still issuing."""
    await platform.issue("ORD-1")
    clock.advance(1)
    red = await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    )

    assert "E9202" == red["code"]


async def test_query_answers_fifty_order_numbers_at_once(platform, clock):
    """One queryInvoiceResult answers up to 50 order numbers, in the order asked."""
    order_nos = [f"ORD-{n:02d}" for n in range(50)]
    for order_no in order_nos:
        await platform.issue(order_no)
    clock.advance(1)
    results = await query(platform, orderNos=list(reversed(order_nos)))

    assert list(reversed(order_nos)) == [result["orderNo"] for result in results]
    assert {"2"} == {result["status"] for result in results}


async def test_query_of_more_than_fifty_numbers_is_answered_0201(platform):
    """51 order numbers in one query are a format error."""
    body = await platform.call(QUERY_INVOICE_RESULT, {"orderNos": [f"O{n}" for n in range(51)]})

    assert "0201" == body["code"]


@pytest.mark.parametrize("settings", [{"dedup": False}], indirect=True)
async def test_query_by_a_reused_order_number_finds_every_invoice(platform):
    """With dedup off an order number issued twice is answered with both invoices."""
    first = (await platform.issue("ORD-1"))["result"]["invoiceSerialNum"]
    second = (await platform.issue("ORD-1"))["result"]["invoiceSerialNum"]

    assert [first, second] == [r["serialNo"] for r in await query(platform, orderNos=["ORD-1"])]


@pytest.mark.parametrize("settings", [{"lookup_lag_s": 5.0}], indirect=True)
async def test_lookup_lag_hides_an_accepted_invoice_then_shows_it(platform, clock):
    """With lookup_lag_s 5 an accepted invoice is unknown to queryInvoiceResult (by order or
    serial number) for 5 s, then listed; meanwhile a resend is still E9106."""
    serial = (await platform.issue("ORD-1"))["result"]["invoiceSerialNum"]
    clock.advance(4.9)
    hidden = await query(platform, orderNos=["ORD-1"]), await query(platform, serialNos=[serial])
    resend = await platform.issue("ORD-1")
    clock.advance(0.1)
    [shown] = await query(platform, orderNos=["ORD-1"])

    assert ([], []) == hidden
    assert "E9106" == resend["code"]
    assert (serial, "2") == (shown["serialNo"], shown["status"])
