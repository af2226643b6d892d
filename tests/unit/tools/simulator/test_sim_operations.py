"""The four operations: issue, query, red-letter reversal, inspection."""

from __future__ import annotations

from gateway.tools.simulator import (
    FAST_INVOICE_RED,
    INVOICE_INSPECTION,
    QUERY_INVOICE_RESULT,
    REQUEST_BILLING,
)


async def query(platform, **numbers):
    body = await platform.call(QUERY_INVOICE_RESULT, numbers)
    assert "E0000" == body["code"]
    return body["result"]


async def issued(platform, clock, order_no):
    """Issue an order and let issuance finish; returns its query result."""
    assert "E0000" == (await platform.issue(order_no))["code"]
    clock.advance(platform.settings.issue_delay_s)
    [result] = await query(platform, orderNos=[order_no])
    return result


async def test_issue_is_accepted_with_a_serial_number(platform):
    """requestBillingNew answers E0000 with an invoiceSerialNum."""
    body = await platform.issue("ORD-1")

    assert "E0000" == body["code"]
    assert 20 == len(body["result"]["invoiceSerialNum"])


async def test_issuance_finishes_after_the_issue_delay(platform, clock):
    """Status is 20 (issuing) until issue_delay_s has passed, then 2 with number and time."""
    serial = (await platform.issue("ORD-1"))["result"]["invoiceSerialNum"]
    clock.advance(0.999)
    [during] = await query(platform, serialNos=[serial])
    clock.advance(0.001)
    [after] = await query(platform, serialNos=[serial])

    assert ("20", "", None) == (during["status"], during["invoiceNo"], during["invoiceTime"])
    assert ("2", "开票完成（最终状态）") == (after["status"], after["statusMsg"])
    assert 20 == len(after["invoiceNo"])
    assert round(clock.wall() * 1000) == after["invoiceTime"]
    assert ("113.00", "100.00", "13.00") == (
        after["orderAmount"],
        after["exTaxAmount"],
        after["taxAmount"],
    )


async def test_invalid_buyer_tax_number_fails_asynchronously(platform, clock):
    """A buyerTaxNum with a wrong check character is accepted, then ends in status 22."""
    body = await platform.issue("ORD-1", buyerTaxNum="91110108000000001B")
    clock.advance(1)
    [result] = await query(platform, orderNos=["ORD-1"])

    assert "E0000" == body["code"]
    assert ("22", "开票失败") == (result["status"], result["statusMsg"])
    assert "91110108000000001B" in result["failCause"]


async def test_individual_buyer_without_tax_number_is_issued(platform, clock):
    """An empty buyerTaxNum (an individual) is fine."""
    body = await platform.issue("ORD-1", buyerTaxNum="")
    clock.advance(1)
    [result] = await query(platform, orderNos=["ORD-1"])

    assert ("E0000", "2") == (body["code"], result["status"])


async def test_reused_order_number_is_answered_e9106(platform):
    """A second issue with the same orderNo is a duplicate and is not recorded."""
    await platform.issue("ORD-1")
    body = await platform.issue("ORD-1")
    ledger = await platform.ledger()

    assert "E9106" == body["code"]
    assert (1, 1) == (ledger["totals"]["accepted"], ledger["totals"]["duplicates_rejected"])


async def test_reused_order_number_of_a_failed_issue_is_still_a_duplicate(platform, clock):
    """A failed issuance keeps its orderNo: resubmitting it is E9106, as on the platform."""
    await platform.issue("ORD-1", buyerTaxNum="bad")
    clock.advance(1)

    assert "E9106" == (await platform.issue("ORD-1"))["code"]


async def test_missing_required_fields_are_answered_0201_and_not_recorded(platform):
    """Empty orderNo, buyerName or invoiceDetail are 0201 and leave the ledger untouched."""
    answers = [
        await platform.issue(""),
        await platform.issue("ORD-2", buyerName=" "),
        await platform.issue("ORD-3", invoiceDetail=[]),
        await platform.issue("ORD-4", invoiceDetail=[{"goodsName": "x", "price": "abc"}]),
        await platform.call(REQUEST_BILLING, {"noOrder": True}),
    ]
    ledger = await platform.ledger()

    assert ["0201"] * 5 == [answer["code"] for answer in answers]
    assert 0 == ledger["totals"]["accepted"]
    assert 5 == ledger["counters"]["invalid_request"]


async def test_body_that_is_not_json_is_answered_0201(platform):
    """A signed body that is not JSON is a format error, not a crash."""
    body = await platform.call(REQUEST_BILLING, b"<order/>")

    assert "0201" == body["code"]


async def test_query_by_order_numbers_skips_unknown_ones(platform):
    """queryInvoiceResult finds by order number, once each, and leaves unknown numbers out."""
    await platform.issue("ORD-1")
    await platform.issue("ORD-2")
    results = await query(platform, orderNos=["ORD-2", "x", "ORD-1", "ORD-2"])

    assert ["ORD-2", "ORD-1"] == [result["orderNo"] for result in results]


async def test_query_with_both_kinds_of_number_goes_by_the_serial_numbers(platform):
    """Given serial and order numbers, the platform looks up the serial numbers only."""
    serial = (await platform.issue("ORD-1"))["result"]["invoiceSerialNum"]
    await platform.issue("ORD-2")
    results = await query(platform, serialNos=[serial, "nope"], orderNos=["ORD-2"])

    assert ["ORD-1"] == [result["orderNo"] for result in results]


async def test_query_without_any_number_is_answered_0201(platform):
    """At least one serial or order number is required (SDKs' [""] counts as none)."""
    body = await platform.call(QUERY_INVOICE_RESULT, {"serialNos": [], "orderNos": [""]})

    assert "0201" == body["code"]


async def test_red_letter_of_an_unknown_order_is_answered_e9201(platform):
    """Reversing an order that was never issued is refused."""
    body = await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "nope", "redReason": "1"}
    )

    assert "E9201" == body["code"]


async def test_red_letter_of_an_invoice_still_issuing_is_answered_e9202(platform):
    """A red-letter that overtakes its original's issuance is refused, nothing recorded."""
    await platform.issue("ORD-1")
    body = await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "2"}
    )

    assert "E9202" == body["code"]
    assert 1 == (await platform.ledger())["totals"]["accepted"]


async def test_red_letter_of_an_issued_invoice_is_recorded_and_linked(platform, clock):
    """The reversal gets its own serial number, negative amounts and a link to the original."""
    await issued(platform, clock, "ORD-1")
    body = await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    )
    clock.advance(1)
    [red] = await query(platform, orderNos=["RED-1"])
    ledger = await platform.ledger()

    assert "E0000" == body["code"]
    assert ("2", "2", "ORD-1", "-113.00") == (
        red["status"],
        red["invoiceType"],
        red["originalOrderNo"],
        red["orderAmount"],
    )
    assert (1, 1) == (ledger["totals"]["issued"], ledger["totals"]["red"])


async def test_second_red_letter_of_the_same_original_is_answered_e9203(platform, clock):
    """An invoice is reversed once; a second reversal under another orderNo is refused."""
    await issued(platform, clock, "ORD-1")
    await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    )
    body = await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-2", "originalOrderNo": "ORD-1", "redReason": "1"}
    )

    assert "E9203" == body["code"]


async def test_red_letter_reusing_its_own_order_number_is_answered_e9106(platform, clock):
    """The red-letter's own orderNo is checked for duplicates like any order's."""
    await issued(platform, clock, "ORD-1")
    red = {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    first = await platform.call(FAST_INVOICE_RED, red)
    second = await platform.call(FAST_INVOICE_RED, red)

    assert ("E0000", "E9106") == (first["code"], second["code"])


async def test_red_letter_with_invalid_reason_is_answered_0201(platform, clock):
    """redReason must be one of "1".."4"."""
    await issued(platform, clock, "ORD-1")
    body = await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "9"}
    )

    assert "0201" == body["code"]


async def test_inspection_verifies_an_issued_invoice(platform, clock):
    """invoiceInspection with the right number, date and amount answers the invoice's data."""
    result = await issued(platform, clock, "ORD-1")
    date = "2026-01-01"  # the manual clock starts at 2026-01-01 08:00 Beijing time
    body = await platform.call(
        INVOICE_INSPECTION,
        {"invoiceNum": result["invoiceNo"], "invoiceDate": date, "amount": "113"},
    )

    assert "E0000" == body["code"]
    assert (result["invoiceNo"], "113.00", "0") == (
        body["result"]["invoiceNum"],
        body["result"]["amount"],
        body["result"]["state"],
    )


async def test_inspection_shows_a_reversed_invoice_as_reversed(platform, clock):
    """After a red-letter, inspecting the original reports state 3 (已红冲)."""
    result = await issued(platform, clock, "ORD-1")
    await platform.call(
        FAST_INVOICE_RED, {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    )
    body = await platform.call(
        INVOICE_INSPECTION,
        {"invoiceNum": result["invoiceNo"], "invoiceDate": "20260101", "amount": 113},
    )

    assert ("E0000", "3") == (body["code"], body["result"]["state"])


async def test_inspection_of_unknown_or_mismatching_invoices(platform, clock):
    """An unknown number is E9301; a known one with a wrong amount is E9302."""
    result = await issued(platform, clock, "ORD-1")
    unknown = await platform.call(
        INVOICE_INSPECTION,
        {"invoiceNum": "0" * 20, "invoiceDate": "2026-01-01", "amount": "113"},
    )
    mismatch = await platform.call(
        INVOICE_INSPECTION,
        {"invoiceNum": result["invoiceNo"], "invoiceDate": "2026-01-01", "amount": "112.99"},
    )

    assert ("E9301", "E9302") == (unknown["code"], mismatch["code"])


async def test_inspection_without_date_is_answered_0201(platform):
    """invoiceNum, invoiceDate and amount are all required."""
    body = await platform.call(INVOICE_INSPECTION, {"invoiceNum": "1", "amount": "1"})

    assert "0201" == body["code"]
