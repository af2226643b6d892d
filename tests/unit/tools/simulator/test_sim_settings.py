"""Settings switched at run time through `GET` / `PATCH /_sim/settings`."""

from __future__ import annotations

import pytest

from gateway.tools.simulator import QUERY_INVOICE_RESULT, REQUEST_BILLING

DEFAULTS = {
    "dedup": True,
    "lookup_lag_s": 0.0,
    "issue_delay_s": 1.0,
    "sign_delay_s": 0.0,
    "fail_issuance_rate": 0.0,
    "fail_signing_rate": 0.0,
    "disabled_apis": [],
    "isv_codes": {},
    "isv_withdrawn": [],
}


async def test_settings_show_what_can_be_switched(platform):
    """GET /_sim/settings answers every switchable setting with its current value."""
    assert (200, DEFAULTS) == await platform.control("GET", "/_sim/settings")


async def test_dedup_switched_off_at_run_time_issues_a_reused_order_again(platform):
    """PATCH {"dedup": false}: the next reuse of an order number is issued, not E9106."""
    await platform.issue("ORD-1")
    before = await platform.issue("ORD-1")
    status, settings = await platform.control("PATCH", "/_sim/settings", {"dedup": False})
    after = await platform.issue("ORD-1")
    order = (await platform.ledger())["orders"]["ORD-1"]

    assert (200, {**DEFAULTS, "dedup": False}) == (status, settings)
    assert ("E9106", "E0000") == (before["code"], after["code"])
    assert (3, 2) == (order["sends"], len(order["serialNos"]))


async def test_lookup_lag_switched_at_run_time_counts_for_invoices_already_accepted(
    platform, clock
):
    """A lag set after acceptance hides an invoice accepted less than that long ago."""
    await platform.issue("ORD-1")
    clock.advance(1)
    await platform.control("PATCH", "/_sim/settings", {"lookup_lag_s": 10})
    body = await platform.call(QUERY_INVOICE_RESULT, {"orderNos": ["ORD-1"]})

    assert [] == body["result"]


async def test_issue_delay_switched_at_run_time_counts_for_later_invoices(platform, clock):
    """A new issue_delay_s applies to invoices accepted afterwards; earlier ones keep theirs."""
    await platform.issue("ORD-1")
    await platform.control("PATCH", "/_sim/settings", {"issue_delay_s": 10})
    await platform.issue("ORD-2")
    clock.advance(1)
    body = await platform.call(QUERY_INVOICE_RESULT, {"orderNos": ["ORD-1", "ORD-2"]})

    assert ["2", "20"] == [result["status"] for result in body["result"]]


async def test_api_switched_off_at_run_time_is_answered_070302(platform):
    """disabled_apis lists operations answered 070302 from then on."""
    await platform.control("PATCH", "/_sim/settings", {"disabled_apis": [REQUEST_BILLING]})

    assert "070302" == (await platform.issue("ORD-1"))["code"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"dedup": "off"}, "'dedup'"),
        ({"lookup_lag_s": -1}, "'lookup_lag_s'"),
        ({"fail_issuance_rate": 2}, "'fail_issuance_rate'"),
        ({"disabled_apis": ["nope"]}, "'disabled_apis'"),
        ({"app_secret": "x"}, "'app_secret'"),
        (["dedup"], "JSON object"),
    ],
)
async def test_bad_settings_change_is_400_and_changes_nothing(platform, change, named):
    """An invalid change names the field, and no setting changes (not even valid ones)."""
    status, body = await platform.control(
        "PATCH",
        "/_sim/settings",
        {"issue_delay_s": 5, **change} if isinstance(change, dict) else change,
    )
    _, settings = await platform.control("GET", "/_sim/settings")

    assert 400 == status
    assert named in body["error"]
    assert DEFAULTS == settings


async def test_reset_restores_the_settings_the_simulator_started_with(platform):
    """POST /_sim/reset undoes settings changed at run time."""
    await platform.control("PATCH", "/_sim/settings", {"dedup": False, "lookup_lag_s": 3})
    await platform.control("POST", "/_sim/reset")

    assert (200, DEFAULTS) == await platform.control("GET", "/_sim/settings")
