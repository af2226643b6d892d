"""The token endpoint for a service provider's application: a merchant's authorization code,
once, for a token tied to its tax number; refresh tokens after; 070401 for a token sent with
another merchant's tax number."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.tools.simulator import QUERY_INVOICE_RESULT, REQUEST_BILLING
from gateway.tools.simulator.tokens import user_id_of

QUERY = {"orderNos": ["nothing-here"]}
TAX_A = "91330100AAAAAAAAAA"
TAX_B = "91330100BBBBBBBBBB"
CODES = {"isv_codes": {"code-a": TAX_A, "code-b": TAX_B}}
CALLBACK = "https://isv.example.com/cb"

pytestmark = pytest.mark.parametrize("settings", [CODES], indirect=True)


async def exchange(platform: Any, code: str, tax: str) -> dict[str, Any]:
    response = await platform.fetch_token(
        grant_type="authorization_code", code=code, taxNum=tax, redirect_uri=CALLBACK
    )
    assert 200 == response.status
    body: dict[str, Any] = await response.json()
    return body


async def refresh(platform: Any, refresh_token: str, user_id: str) -> dict[str, Any]:
    response = await platform.fetch_token(
        grant_type="refresh_token", refresh_token=refresh_token, client_id=user_id
    )
    body: dict[str, Any] = await response.json()
    return body


async def test_a_code_gives_a_merchant_token_once(platform):
    """A configured code with its merchant's taxNum gives access_token, refresh_token,
    expires_in and the merchant's userId; the same code again is refused (070308)."""
    first = await exchange(platform, "code-a", TAX_A)
    assert {"access_token", "refresh_token", "expires_in", "userId"} == set(first)
    assert ("86400", user_id_of(TAX_A)) == (first["expires_in"], first["userId"])
    again = await exchange(platform, "code-a", TAX_A)
    assert "070308" == again["error"]


async def test_a_code_with_another_tax_number_is_refused(platform):
    """A code presented with a taxNum other than its merchant's is refused."""
    assert "070308" == (await exchange(platform, "code-a", TAX_B))["error"]


async def test_a_refresh_token_renews_once(platform):
    """refresh_token with the merchant's user id as client_id gives a new pair; the used refresh
    token, or one sent with another user id, is refused (070309)."""
    first = await exchange(platform, "code-a", TAX_A)
    assert "070309" == (await refresh(platform, first["refresh_token"], "someone"))["error"]
    second = await refresh(platform, first["refresh_token"], first["userId"])
    assert first["access_token"] != second["access_token"]
    assert "070309" == (await refresh(platform, first["refresh_token"], first["userId"]))["error"]
    counters = (await platform.ledger())["counters"]
    assert (1, 1, 2) == (
        counters["codes_exchanged"],
        counters["refreshes"],
        counters["merchant_grants_refused"],
    )


async def test_a_withdrawn_authorization_refuses_refresh(platform):
    """After the merchant withdraws (isv_withdrawn), its refresh token is refused."""
    first = await exchange(platform, "code-a", TAX_A)
    status, _ = await platform.control("PATCH", "/_sim/settings", {"isv_withdrawn": [TAX_A]})
    assert 200 == status
    assert "070309" == (await refresh(platform, first["refresh_token"], first["userId"]))["error"]


async def test_a_merchant_token_is_good_with_its_own_tax_number_only(platform):
    """Merchant A's token with A's tax number is served, recorded under A; with B's it is
    answered 070401 (the caller does not match the token) and counted."""
    token = (await exchange(platform, "code-a", TAX_A))["access_token"]
    order = platform.order("A-1", salerTaxNum=TAX_A)
    ok = await platform.call(REQUEST_BILLING, order, token=token, user_tax=TAX_A)
    assert "E0000" == ok["code"], ok
    mismatch = await platform.call(QUERY_INVOICE_RESULT, QUERY, token=token, user_tax=TAX_B)
    assert "070401" == mismatch["code"]
    ledger = await platform.ledger()
    assert [TAX_A] == [invoice["sellerTaxNum"] for invoice in ledger["invoices"]]
    assert 1 == ledger["counters"]["caller_mismatch"]


async def test_codes_can_be_added_at_run_time(platform):
    """PATCH isv_codes replaces the accepted codes (a merchant authorized again)."""
    status, shown = await platform.control(
        "PATCH", "/_sim/settings", {"isv_codes": {"code-a2": TAX_A}}
    )
    assert (200, {"code-a2": TAX_A}) == (status, shown["isv_codes"])
    assert "access_token" in await exchange(platform, "code-a2", TAX_A)
    assert "070308" == (await exchange(platform, "code-b", TAX_B))["error"]
