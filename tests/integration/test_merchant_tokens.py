"""A service provider's application against real processes: two merchant tenants, each with its
own authorization code, through one gateway; the simulator's token host hands out per-merchant
tokens and refuses a merchant's token with another merchant's tax number (070401)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.test_core_gateway import ISSUE, QUERY, counters, invoice
from tests.integration.test_oncall_cli import OPERATOR_TOKEN, cli_json
from tests.integration.test_outbox import FAST_OUTBOX, FAST_RESILIENCE
from tests.support.harness import Gateway, Simulator
from tests.support.processes import TENANT_KEY, USER_TAX, wait_until

TAX_A = "91330100MA2AAAAA1X"
TAX_B = "91330100MA2BBBBB2Y"
KEY_A, KEY_B = "tenant-key-shop-a", "tenant-key-shop-b"
CALLBACK = "https://isv.example.com/nuonuo/callback"
ENV = {
    "GATEWAY_ADMIN_TOKEN": OPERATOR_TOKEN,
    "SHOP_A_API_KEY": KEY_A,
    "SHOP_B_API_KEY": KEY_B,
    "SHOP_A_TAX": TAX_A,
    "SHOP_B_TAX": TAX_B,
    "SHOP_A_CODE": "code-a",
    "SHOP_B_CODE": "code-b",
}


def merchant(tenant: str, env: str) -> dict[str, Any]:
    return {
        "id": tenant,
        "api_key": {"env": f"{env}_API_KEY"},
        "upstream": {
            "user_tax": {"env": f"{env}_TAX"},
            "grant": "authorization_code",
            "code": {"env": f"{env}_CODE"},
            "redirect_uri": CALLBACK,
        },
    }


def overrides(sim: Simulator) -> dict[str, Any]:
    return {
        "outbox": {**FAST_OUTBOX, "max_attempts": 100_000},
        "resilience": FAST_RESILIENCE,
        "upstream.timeout": "2s",
        "upstream.auth.token_url": sim.token_url,
        "tenants": [
            {"id": "demo", "api_key": {"env": "GATEWAY_DEMO_API_KEY"}},
            merchant("shop-a", "SHOP_A"),
            merchant("shop-b", "SHOP_B"),
        ],
    }


def start_simulator(workdir: Path, *extra: str) -> Simulator:
    codes = ["--isv-code", f"code-a={TAX_A}", "--isv-code", f"code-b={TAX_B}"]
    return Simulator.start(workdir, "--issue-delay", "0.2", *codes, *extra, token_host=True)


def issue(gw: Gateway, api_key: str, tax: str) -> str:
    """One invoice for the merchant with tax number `tax`, answered at once; its order number."""
    body = invoice()
    body["order"]["salerTaxNum"] = tax
    status, _, answer = gw.call(ISSUE, body, api_key=api_key)
    assert (200, "E0000") == (status, answer.get("code")), answer
    return str(body["order"]["orderNo"])


def issue_as_each(gw: Gateway, *, rounds: int) -> dict[str, str]:
    """`rounds` invoices for each merchant and for the gateway's own tenant: order number →
    the seller's tax number it must be recorded under."""
    expected = {}
    for _ in range(rounds):
        for api_key, tax in ((KEY_A, TAX_A), (KEY_B, TAX_B), (TENANT_KEY, USER_TAX)):
            expected[issue(gw, api_key, tax)] = tax
    return expected


def sellers(sim: Simulator) -> dict[str, str]:
    """Each invoice's order number and the seller (tax number) the platform recorded it under."""
    return {entry["orderNo"]: entry["sellerTaxNum"] for entry in sim.ledger()["invoices"]}


def read(gw: Gateway, api_key: str) -> int:
    """One read as a tenant (a token is renewed when a call needs it); its status."""
    status, _, _ = gw.call(QUERY, {"orderNos": ["any"]}, api_key=api_key)
    return status


def tenant_tokens(gw: Gateway) -> dict[str, Any]:
    status, _, answer = gw.admin("GET", "/token", token=OPERATOR_TOKEN)
    assert 200 == status, answer
    return dict(answer["tenants"])


def test_each_merchant_is_signed_with_its_own_token_and_tax_number(tmp_path: Path) -> None:
    """Two merchants' invoices, and the gateway's own tenant's, each recorded under its own tax
    number with no 070401: one code exchange per merchant, one client_credentials token, and
    after a restart every token is reused without a token call."""
    with (
        start_simulator(tmp_path / "sim") as sim,
        Gateway.start(tmp_path / "gw", sim.url, overrides=overrides(sim), env=ENV) as gw,
    ):
        expected = issue_as_each(gw, rounds=3)
        seen = counters(sim)
        assert (3, 2, 0, 0) == (
            seen["token_calls"],
            seen["codes_exchanged"],
            seen["caller_mismatch"],
            seen["wrong_user_tax"],
        )
        assert expected == sellers(sim)
        tokens = tenant_tokens(gw)
        assert {"shop-a", "shop-b"} == set(tokens)
        assert {"authorization_code"} == {state["grant"] for state in tokens.values()}

        gw.restart()
        expected.update(issue_as_each(gw, rounds=2))
        seen = counters(sim)
        assert (3, 2, 0, 0) == (
            seen["token_calls"],
            seen["codes_exchanged"],
            seen["refreshes"],
            seen["caller_mismatch"],
        )
        assert expected == sellers(sim)


def test_one_merchants_refused_refresh_does_not_stop_the_other(tmp_path: Path) -> None:
    """Tokens live 3 s: shop-a withdraws its authorization, its refresh is refused once and it
    is held (reads name the new code it needs, submissions are queued) with no further token
    call, while shop-b's token keeps being refreshed and its invoices issued; `token status`
    shows both."""
    with (
        start_simulator(tmp_path / "sim", "--token-ttl", "3") as sim,
        Gateway.start(tmp_path / "gw", sim.url, overrides=overrides(sim), env=ENV) as gw,
    ):
        issue(gw, KEY_A, TAX_A)
        issue(gw, KEY_B, TAX_B)
        sim.change_settings(isv_withdrawn=[TAX_A])

        held = wait_until(
            lambda: (
                read(gw, KEY_A) == 503
                and (tenant_tokens(gw)["shop-a"]["hold"] or {}).get("cause") == "config_error"
            ),
            timeout=15.0,
            what="shop-a held after its refresh token was refused",
        )
        assert held
        refused = counters(sim)["merchant_grants_refused"]
        assert 1 == refused
        refreshed = counters(sim)["refreshes"]
        # shop-b is renewed at least twice more meanwhile, and its invoices still go through.
        wait_until(
            lambda: read(gw, KEY_B) == 200 and counters(sim)["refreshes"] >= refreshed + 2,
            timeout=15.0,
            what="shop-b's token renewed twice more",
        )
        order_b = issue(gw, KEY_B, TAX_B)
        assert TAX_B == sellers(sim)[order_b]

        status, _, answer = gw.call(QUERY, {"orderNos": ["any"]}, api_key=KEY_A)
        assert 503 == status, answer
        assert "tenants[1].upstream.code" in answer["detail"]
        body = invoice()
        body["order"]["salerTaxNum"] = TAX_A
        status, _, answer = gw.call(ISSUE, body, api_key=KEY_A)
        assert 202 == status, answer

        seen = counters(sim)
        assert (1, 0) == (seen["merchant_grants_refused"], seen["caller_mismatch"])
        shown = cli_json(gw, "token", "status")
        assert ("config_error", None) == (
            shown["tenants"]["shop-a"]["hold"]["cause"],
            shown["tenants"]["shop-b"]["hold"],
        )
