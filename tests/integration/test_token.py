"""The platform access token against real processes: tokens from a host of their own, and the
token quota (about 50 calls per 30 days) never burnt, whatever the token endpoint answers.

The simulator stands in for the platform (with `token_host=True` its token endpoint listens on a
port of its own, as the platform's token host does); the gateway runs the default profile's
token limits, not the fast ones the other integration tests use.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.integration.test_core_gateway import ISSUE, QUERY, counters, invoice
from tests.integration.test_oncall_cli import OPERATOR_TOKEN, cli, cli_json, cli_json_lines
from tests.integration.test_outbox import FAST_OUTBOX, FAST_RESILIENCE, wait_delivered
from tests.support.harness import Gateway, Simulator
from tests.support.processes import APP_SECRET

#: The default profile's token limits (tests/support relaxes them for everyone else).
PROFILE_TOKEN_CALLS = {"per_hour": 5, "per_day": 20, "backoff": {"base": "30s", "cap": "15m"}}
OVERRIDES: dict[str, Any] = {
    # Queued submissions are retried every half second: each retry would be a token call if the
    # guard let it through. Nothing goes dead meanwhile.
    "outbox": {**FAST_OUTBOX, "max_attempts": 100_000},
    "resilience": FAST_RESILIENCE,
    "upstream.timeout": "2s",
    "upstream.auth.token_calls": PROFILE_TOKEN_CALLS,
}
ADMIN_ENV = {"GATEWAY_ADMIN_TOKEN": OPERATOR_TOKEN}
#: "A minute of traffic", time-scaled: every half second the dispatcher retries each queued
#: submission, so this is hundreds of chances to ask for a token.
TRAFFIC_S = 12.0
MAX_ROUNDS = 1000
PROBLEM = "urn:invoice-gateway:problem:upstream-auth-unavailable"


def token_calls(sim: Simulator) -> tuple[int, int]:
    """(token requests the token endpoint got, token requests the API listener got)."""
    seen = counters(sim)
    return int(seen["token_calls"]), int(seen.get("token_calls_to_api_host", 0))


def traffic(gw: Gateway, seconds: float) -> tuple[dict[str, str], list[tuple[int, Any]]]:
    """An invoice and a query at a time for `seconds` (at most `MAX_ROUNDS` of each): each
    submission's order number by its id, and each query's status and answer."""
    orders: dict[str, str] = {}
    reads: list[tuple[int, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(orders) < MAX_ROUNDS:
        body = invoice()
        status, _, answer = gw.call(ISSUE, body)
        assert 202 == status, answer
        orders[str(answer["submission_id"])] = body["order"]["orderNo"]
        status, _, answer = gw.call(QUERY, {"orderNos": ["any"]})
        reads.append((status, answer))
    return orders, reads


def metric(gw: Gateway, sample: str) -> float:
    return gw.metric(sample)


def issued_once(sim: Simulator, orders: list[str]) -> bool:
    ledger = sim.ledger()["orders"]
    return all(ledger.get(order, {}).get("issued") == 1 for order in orders)


def test_tokens_come_from_their_own_host(tmp_path: Path) -> None:
    """With the token endpoint on a host of its own, the gateway asks there, once, and the API
    host never gets a token request."""
    with (
        Simulator.start(tmp_path / "sim", token_host=True) as sim,
        Gateway.start(
            tmp_path / "gw",
            sim.url,
            overrides={**OVERRIDES, "upstream.auth.token_url": sim.token_url},
        ) as gw,
    ):
        for _ in range(5):
            status, _, answer = gw.call(ISSUE, invoice())
            assert 200 == status, answer
            status, _, answer = gw.call(QUERY, {"orderNos": ["any"]})
            assert 200 == status, answer
        assert (1, 0) == token_calls(sim)
        assert sim.token_url != f"{sim.url}/accessToken"


def test_quota_refused_never_storms_and_an_operator_ends_it(tmp_path: Path) -> None:
    """The token endpoint answers 070306: one token call through twelve seconds of traffic and
    hundreds of outbox retries; submissions are kept (202), reads name the cause; once the
    platform allows tokens again, `invoice-gateway token refresh` gets one and every submission
    is delivered, once."""
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2", token_host=True) as sim:
        sim.fault(kind="quota", operations=["accessToken"])
        with Gateway.start(
            tmp_path / "gw",
            sim.url,
            overrides={**OVERRIDES, "upstream.auth.token_url": sim.token_url},
            env=ADMIN_ENV,
        ) as gw:
            orders, reads = traffic(gw, TRAFFIC_S)

            assert (1, 0) == token_calls(sim)
            assert [503] * len(reads) == [status for status, _ in reads]
            detail = reads[-1][1]["detail"]
            assert PROBLEM == reads[-1][1]["type"]
            assert "token quota is used up" in detail
            assert "invoice-gateway token refresh" in detail
            assert 1.0 == metric(gw, 'gateway_token_refreshes_total{result="quota"}')
            assert 1.0 == metric(gw, 'gateway_token_hold{cause="quota"}')
            assert 1.0 == metric(gw, "gateway_token_calls_30d")
            status = cli_json(gw, "token", "status")
            assert ("quota", True) == (
                status["hold"]["cause"],
                status["hold"]["operator_may_end"],
            )

            # Still refused: the operator's refresh asks once and says so.
            refused = cli(gw, "token", "refresh", "--reason", "vendor says the quota is reset")
            assert 1 == refused.returncode, refused.stdout
            assert "token quota is used up" in refused.stderr
            assert (2, 0) == token_calls(sim)

            sim.clear_faults()
            renewed = cli_json(
                gw, "token", "refresh", "--reason", "vendor reset the quota (ticket 4711)"
            )
            assert renewed["hold"] is None
            assert (3, 0) == token_calls(sim)

            views = wait_delivered(gw, list(orders), timeout=60.0)
            assert len(orders) == len(views)
            assert issued_once(sim, list(orders.values()))
            assert (3, 0) == token_calls(sim)

            audit = cli_json_lines(gw, "outbox", "audit", "--limit", "5")
            reasons = {entry["reason"] for entry in audit if entry["action"] == "token-refresh"}
            assert {
                "vendor says the quota is reset",
                "vendor reset the quota (ticket 4711)",
            } == reasons


def test_wrong_secret_is_a_configuration_error_until_the_configuration_changes(
    tmp_path: Path,
) -> None:
    """070305: one token call, none more through traffic or a restart with the same secret;
    reads name the key to fix; a restart with the right secret asks once and delivers."""
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2") as sim:
        wrong = {**ADMIN_ENV, "NUONUO_APP_SECRET": "not-the-app-secret"}
        with Gateway.start(tmp_path / "gw", sim.url, overrides=OVERRIDES, env=wrong) as gw:
            orders, reads = traffic(gw, TRAFFIC_S / 2)
            assert (1, 1) == (token_calls(sim)[0], counters(sim)["bad_credentials"])
            assert "upstream.auth.app_secret" in reads[-1][1]["detail"]
            assert 1.0 == metric(gw, 'gateway_token_hold{cause="config_error"}')

            gw.restart()
            status, _, answer = gw.call(QUERY, {"orderNos": ["any"]})
            assert (503, 1) == (status, token_calls(sim)[0])
            assert "upstream.auth.app_secret" in answer["detail"]

            gw.env["NUONUO_APP_SECRET"] = APP_SECRET
            gw.restart()
            views = wait_delivered(gw, list(orders), timeout=60.0)
            assert len(orders) == len(views)
            assert issued_once(sim, list(orders.values()))
            assert 2 == token_calls(sim)[0]
