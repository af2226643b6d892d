"""The real gateway process in front of the real simulator process (issue: core gateway)."""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.tools.simulator.tax_numbers import make_tax_number
from gateway.upstream.auth.signature import new_nonce, new_senid, sign
from tests.support.harness import Gateway, Simulator
from tests.support.processes import APP_KEY, APP_SECRET, USER_TAX, http_json, wait_until

ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
QUERY = "nuonuo.OpeMplatform.queryInvoiceResult"
INSPECT = "nuonuo.electronInvoice.invoiceInspection"
REJECTION_COUNTERS = ("rejected_signature", "stale_timestamp", "bad_token", "unknown_app_key")


def invoice(order_no: str | None = None) -> dict[str, Any]:
    return {
        "order": {
            "orderNo": order_no or f"SO-{uuid.uuid4().hex[:16]}",
            "invoiceDate": "2026-11-27 10:00:00",
            "buyerName": "北京示例科技有限公司",
            "buyerTaxNum": make_tax_number(random.randrange(10**9)),
            "salerTaxNum": USER_TAX,
            "invoiceType": "1",
            "invoiceDetail": [
                {
                    "goodsName": "技术服务费",
                    "num": "1",
                    "price": "1000.00",
                    "taxRate": "0.06",
                    "withTax": "1",
                }
            ],
        }
    }


def counters(sim: Simulator) -> dict[str, Any]:
    return dict(sim.ledger()["counters"])


def test_invoice_issued_once_through_gateway(gateway: Gateway, simulator: Simulator) -> None:
    """An invoice sent through the gateway is answered E0000 and appears once in the ledger."""
    body = invoice()
    status, headers, answer = gateway.call(ISSUE, body)
    assert 200 == status, answer
    assert "E0000" == answer["code"]
    assert answer["result"]["invoiceSerialNum"]
    assert "forwarded" == headers["X-Gateway-Outcome"]
    ledger = simulator.ledger()
    order = ledger["orders"][body["order"]["orderNo"]]
    assert 1 == order["issued"]
    assert [answer["result"]["invoiceSerialNum"]] == order["serialNos"]
    assert 0 == ledger["totals"]["doubles"]


def test_read_returns_the_simulators_answer(gateway: Gateway, simulator: Simulator) -> None:
    """A read through the gateway returns what the platform says about the invoice."""
    body = invoice()
    _, _, issued = gateway.call(ISSUE, body)
    serial = issued["result"]["invoiceSerialNum"]

    def finished() -> dict[str, Any] | None:
        status, _, answer = gateway.call(QUERY, {"serialNos": [serial]})
        assert 200 == status, answer
        [entry] = answer["result"]
        return answer if entry["status"] == "2" else None

    answer = wait_until(finished, timeout=15, interval=0.2, what="issuance to finish")
    [entry] = answer["result"]
    assert body["order"]["orderNo"] == entry["orderNo"]
    assert serial == entry["serialNo"]


def _direct_call(
    sim: Simulator, body: dict[str, Any], *, secret: str, timestamp: int, token: str
) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    senid, nonce = new_senid(), new_nonce()
    signature = sign(
        app_secret=secret,
        app_key=APP_KEY,
        senid=senid,
        nonce=nonce,
        timestamp=str(timestamp),
        body=raw,
    )
    url = (
        f"{sim.url}/open/v1/services?senid={senid}&nonce={nonce}"
        f"&timestamp={timestamp}&appkey={APP_KEY}"
    )
    _, _, answer = http_json(
        "POST",
        url,
        raw=raw,
        headers={
            "method": ISSUE,
            "accessToken": token,
            "userTax": USER_TAX,
            "X-Nuonuo-Sign": signature,
            "Content-Type": "application/json",
        },
    )
    return dict(answer)


def _token(sim: Simulator) -> str:
    _, _, answer = http_json(
        "POST",
        f"{sim.url}/accessToken",
        raw=f"client_id={APP_KEY}&client_secret={APP_SECRET}&grant_type=client_credentials".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    return str(answer["access_token"])


def test_simulator_rejects_bad_signature_and_stale_timestamp(simulator: Simulator) -> None:
    """The simulator really checks signatures and the 300 s window (the next test relies on it)."""
    token = _token(simulator)
    now = int(time.time())
    bad = _direct_call(simulator, invoice(), secret="wrong-secret", timestamp=now, token=token)
    stale = _direct_call(simulator, invoice(), secret=APP_SECRET, timestamp=now - 301, token=token)
    good = _direct_call(simulator, invoice(), secret=APP_SECRET, timestamp=now, token=token)
    assert "070601" == bad["code"]
    assert stale["code"] not in ("E0000", None)
    assert "E0000" == good["code"]
    seen = counters(simulator)
    assert 1 == seen["rejected_signature"]
    assert 1 == seen["stale_timestamp"]


def test_gateway_requests_are_never_rejected_for_auth(
    gateway: Gateway, simulator: Simulator
) -> None:
    """Client-sent signatures and tokens are replaced; the platform never rejects the gateway."""
    forged = {
        "accessToken": "client-made-up-token",
        "X-Nuonuo-Sign": "Zm9yZ2Vk",
        "userTax": "000000000000000000",
    }
    for _ in range(20):
        status, _, answer = gateway.call(ISSUE, invoice(), headers=forged)
        assert 200 == status
        assert "E0000" == answer["code"], answer
    path = "/open/v1/services?senid=x&nonce=1&timestamp=1&appkey=someone-else"
    for _ in range(5):
        status, _, answer = gateway.call(QUERY, {"orderNos": ["nope"]}, path=path)
        assert "E0000" == answer["code"], answer
    seen = counters(simulator)
    assert {name: 0 for name in REJECTION_COUNTERS} == {n: seen[n] for n in REJECTION_COUNTERS}
    assert 1 == seen["token_calls"]


def test_restart_reuses_stored_token(gateway: Gateway, simulator: Simulator) -> None:
    """After a restart the gateway signs with the token it stored; no new token call."""
    status, _, _ = gateway.call(ISSUE, invoice())
    assert 200 == status
    assert 1 == counters(simulator)["token_calls"]
    gateway.restart()
    status, _, answer = gateway.call(ISSUE, invoice())
    assert 200 == status
    assert "E0000" == answer["code"]
    assert 1 == counters(simulator)["token_calls"]


def test_bad_input_never_reaches_the_platform(gateway: Gateway, simulator: Simulator) -> None:
    """Malformed JSON → 400, too large → 413, missing key → 401; the platform sees none of them."""
    gateway.call(QUERY, {"orderNos": []})  # warm up: token fetched, one call counted
    before = counters(simulator)
    status, headers, problem = gateway.call(ISSUE, None, raw=b'{"order": {"orderNo": ')
    assert 400 == status
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["request_id"] == headers["X-Request-Id"]
    status, _, problem = gateway.call(ISSUE, None, raw=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert 413 == status
    status, _, _ = gateway.call(ISSUE, invoice(), api_key="not-a-tenant")
    assert 401 == status
    status, _, _ = gateway.call(ISSUE, {"order": {"buyerName": "x"}})
    assert 400 == status
    assert before["calls"] == counters(simulator)["calls"]


def test_unknown_method_passthrough_by_default(gateway: Gateway, simulator: Simulator) -> None:
    """An unknown `method` passes through once to the platform, which answers for itself."""
    status, headers, answer = gateway.call("nuonuo.Unknown.method", {"x": 1})
    assert 200 == status
    assert "forwarded" == headers["X-Gateway-Outcome"]
    assert "E0000" != answer["code"]
    assert 1 == counters(simulator)["calls"].get("nuonuo.Unknown.method")


def test_unknown_method_rejected_when_configured(tmp_path: Path, simulator: Simulator) -> None:
    """With unmatched=reject an unknown `method` is 404 and never reaches the platform."""
    gw = Gateway.start(tmp_path / "strict", simulator.url, overrides={"unmatched": "reject"})
    try:
        status, _, problem = gw.call("nuonuo.Unknown.method", {"x": 1})
    finally:
        gw.process.stop()
    assert 404 == status
    assert "nuonuo.Unknown.method" not in counters(simulator)["calls"]
    assert "unknown-operation" in problem["type"]


def test_platform_down_is_a_clear_problem(tmp_path: Path, simulator: Simulator) -> None:
    """With the platform refusing connections the client gets a 503 problem+json."""
    gw = Gateway.start(tmp_path / "down", simulator.url)
    try:
        assert 200 == gw.call(QUERY, {"orderNos": ["x"]})[0]  # the token is fetched while up
        simulator.fault(kind="refuse", duration_s=30)
        status, headers, problem = gw.call(QUERY, {"orderNos": ["x"]})
    finally:
        simulator.clear_faults()
        gw.process.stop()
    assert 503 == status
    assert "upstream-unreachable" in problem["type"]
    assert "Retry-After" in headers
