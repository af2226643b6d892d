"""The ElectronInvoice line's method names: the same ledger and behaviour as the default names."""

from __future__ import annotations

from gateway.tools.simulator import (
    ELECTRON_FAST_INVOICE_RED,
    ELECTRON_QUERY_INVOICE_RESULT,
    ELECTRON_REQUEST_BILLING,
    QUERY_INVOICE_RESULT,
)


async def electron_issue(platform, order_no, **fields):
    return await platform.call(ELECTRON_REQUEST_BILLING, platform.order(order_no, **fields))


async def electron_query(platform, **numbers):
    body = await platform.call(
        ELECTRON_QUERY_INVOICE_RESULT, {"isOfferInvoiceDetail": "0", **numbers}
    )
    assert "E0000" == body["code"]
    return body["result"]


async def issued_number(platform, clock, order_no):
    """Issue `order_no` by the ElectronInvoice name, let issuance finish; its invoice number."""
    assert "E0000" == (await electron_issue(platform, order_no))["code"]
    clock.advance(platform.settings.issue_delay_s)
    [entry] = await electron_query(platform, orderNos=[order_no])
    return entry["invoiceNo"]


def red_order(order_no, invoice_num, **fields):
    """A red-letter in the ElectronInvoice line's requestBillingNew shape."""
    return {
        "order": {
            "orderNo": order_no,
            "invoiceType": "2",
            "invoiceCode": "",
            "invoiceNum": invoice_num,
            "redReason": "2",
            **fields,
        }
    }


async def test_electron_issue_lands_in_the_same_ledger(platform, clock):
    """An invoice issued under the ElectronInvoice name is found by either line's query."""
    serial = (await electron_issue(platform, "ORD-1"))["result"]["invoiceSerialNum"]
    clock.advance(platform.settings.issue_delay_s)
    [electron] = await electron_query(platform, orderNos=["ORD-1"])
    default = await platform.call(QUERY_INVOICE_RESULT, {"orderNos": ["ORD-1"]})

    assert (serial, "2") == (electron["serialNo"], electron["status"])
    assert [electron] == default["result"]


async def test_electron_issue_reusing_an_order_number_is_answered_e9106(platform):
    """Deduplication by order number holds across the two lines' names."""
    await platform.issue("ORD-1")
    body = await electron_issue(platform, "ORD-1")

    assert "E9106" == body["code"]
    assert 2 == (await platform.ledger())["orders"]["ORD-1"]["sends"]


async def test_electron_red_letter_by_invoice_number_reverses_the_original(platform, clock):
    """invoiceType 2 with the blue's invoiceNum records a red invoice linked to the blue."""
    invoice_num = await issued_number(platform, clock, "ORD-1")
    body = await platform.call(ELECTRON_REQUEST_BILLING, red_order("RED-1", invoice_num))
    clock.advance(platform.settings.issue_delay_s)
    [red] = await electron_query(platform, orderNos=["RED-1"])

    assert "E0000" == body["code"]
    assert ("2", "2", "ORD-1", "-113.00", "2") == (
        red["status"],
        red["invoiceType"],
        red["originalOrderNo"],
        red["orderAmount"],
        red["redReason"],
    )


async def test_electron_red_letter_of_an_unknown_invoice_number_is_answered_e9201(platform):
    """A red-letter naming an invoice number the platform never issued is refused."""
    body = await platform.call(ELECTRON_REQUEST_BILLING, red_order("RED-1", "26110000000000000999"))

    assert "E9201" == body["code"]


async def test_electron_red_letter_of_an_invoice_still_signing_is_answered_e9202(platform, clock):
    """A red-letter naming an invoice issued but not yet done with (signing) is refused."""
    status, _ = await platform.control("PATCH", "/_sim/settings", {"sign_delay_s": 5})
    invoice_num = await issued_number(platform, clock, "ORD-1")
    body = await platform.call(ELECTRON_REQUEST_BILLING, red_order("RED-1", invoice_num))

    assert (200, "E9202") == (status, body["code"])


async def test_electron_red_letter_without_invoice_number_is_answered_0201(platform):
    """invoiceType 2 without the original's invoiceNum is malformed; nothing is recorded."""
    body = await platform.call(
        ELECTRON_REQUEST_BILLING, {"order": {"orderNo": "RED-1", "invoiceType": "2"}}
    )

    assert "0201" == body["code"]
    assert 0 == (await platform.ledger())["totals"]["sends"]


async def test_electron_unknown_invoice_type_is_answered_0201(platform):
    """invoiceType is 1 (blue) or 2 (red)."""
    body = await electron_issue(platform, "ORD-1", invoiceType="3")

    assert "0201" == body["code"]


async def test_electron_quick_red_letter_takes_the_fast_invoice_red_body(platform, clock):
    """nuonuo.ElectronInvoice.unifiedfastInvoiceRed reverses by original order number, once."""
    await issued_number(platform, clock, "ORD-1")
    red = {"orderNo": "RED-1", "originalOrderNo": "ORD-1", "redReason": "1"}
    first = await platform.call(ELECTRON_FAST_INVOICE_RED, red)
    again = await platform.call(ELECTRON_FAST_INVOICE_RED, {**red, "orderNo": "RED-2"})

    assert ("E0000", "E9203") == (first["code"], again["code"])
