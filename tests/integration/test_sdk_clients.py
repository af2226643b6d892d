"""Vendor-SDK clients through the gateway with only the URL changed (docs/sdk-clients.md),
against real processes: the gateway issues their tokens, checks their signatures, and answers
them in the platform's terms — an outage included.

`VendorSdk` below is written from the vendor's SDKs, not from the gateway's code:

- ZUOXIANGE/NuoNuoSdk `src/NuoNuoSdk/NuoNuoSdk.cs` (.NET): `GetMerchantTokenAsync` (form
  client_id, client_secret, grant_type=client_credentials to `TokenRequestUrl`), `ExecuteAsync`
  (nonce `Random.Shared.Next(10000000, 99999999)`, senid `Guid.NewGuid().ToString("N")`, seconds
  `timestamp`, the four query parameters, headers X-Nuonuo-Sign, accessToken, userTax, method,
  sdkVer) and `GetSign` (`a=<path[3]>&l=<path[2]>&p=<path[1]>&k=…&i=…&n=…&t=…&f=<body>`,
  HMAC-SHA1 then Base64); `src/NuoNuoSdk/NuoNuoOptions.cs` (`SdkRequestUrl`, `TokenRequestUrl`).
- buqiu/invoice `src/InvoiceSDK.php` (PHP): `sendPostSyncRequest` and `MakeSign`, the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.integration.test_core_gateway import ISSUE, QUERY, counters, invoice
from tests.integration.test_outbox import FAST_OUTBOX, FAST_RESILIENCE
from tests.support.harness import Gateway, Simulator
from tests.support.processes import SDK_APP_KEY, SDK_APP_SECRET, http_json, wait_until

ACME_SDK_KEY, ACME_SDK_SECRET = "sdk-acme-app-key", "sdk-acme-app-secret"
TENANTS = [
    {
        "id": "demo",
        "api_key": {"env": "GATEWAY_DEMO_API_KEY"},
        "sdk_client": {
            "app_key": {"env": "GATEWAY_DEMO_SDK_APP_KEY"},
            "app_secret": {"env": "GATEWAY_DEMO_SDK_APP_SECRET"},
        },
    },
    {
        "id": "acme",
        "api_key": {"env": "GATEWAY_ACME_API_KEY"},
        "sdk_client": {
            "app_key": {"env": "ACME_SDK_APP_KEY"},
            "app_secret": {"env": "ACME_SDK_APP_SECRET"},
        },
    },
]


@dataclass
class Sent:
    """One call as the SDK sent it (to send again byte for byte) and its answer."""

    url: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: Any


class VendorSdk:
    """The vendor SDK's client, as its sources do it (see the module docstring)."""

    VERSION = "1.0.5.2"

    def __init__(self, base_url: str, app_key: str, app_secret: str) -> None:
        self.sdk_request_url = f"{base_url}/open/v1/services"  # the only setting that changes
        self.token_request_url = f"{base_url}/accessToken"
        self.app_key, self.app_secret = app_key, app_secret

    def get_merchant_token(self, **form: str) -> tuple[int, Any]:
        fields = {
            "client_id": self.app_key,
            "client_secret": self.app_secret,
            "grant_type": "client_credentials",
            **form,
        }
        status, _, answer = http_json(
            "POST",
            self.token_request_url,
            raw=urlencode(fields).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return status, answer

    def token(self) -> str:
        status, answer = self.get_merchant_token()
        assert 200 == status, answer
        assert "access_token" in answer, answer
        return str(answer["access_token"])

    def execute(
        self, method: str, request: Any, token: str, *, timestamp: int | None = None
    ) -> Sent:
        nonce = str(random.randrange(10_000_000, 99_999_999))
        sen_id = uuid.uuid4().hex
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        body = json_body(request)
        url = (
            f"{self.sdk_request_url}?senid={sen_id}&nonce={nonce}&timestamp={stamp}"
            f"&appkey={self.app_key}"
        )
        split = urlsplit(url).path.split("/")
        sign_str = (
            f"a={split[3]}&l={split[2]}&p={split[1]}&k={self.app_key}&i={sen_id}&n={nonce}"
            f"&t={stamp}&f="
        ).encode() + body
        sign = base64.b64encode(
            hmac.new(self.app_secret.encode(), sign_str, hashlib.sha1).digest()
        ).decode()
        headers = {
            "Content-Type": "application/json",
            "X-Nuonuo-Sign": sign,
            "accessToken": token,
            "userTax": "",
            "method": method,
            "sdkVer": self.VERSION,
        }
        return send(url, headers, body)


def json_body(request: Any) -> bytes:
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()


def send(url: str, headers: dict[str, str], body: bytes) -> Sent:
    status, head, answer = http_json("POST", url, raw=body, headers=headers)
    sent = Sent(url, headers, body, status, answer)
    sent.headers = {**headers, **{f"answer:{k}": v for k, v in head.items()}}
    return sent


def answered(sent: Sent) -> tuple[int, str]:
    assert isinstance(sent.answer, dict), sent.answer
    return sent.status, str(sent.answer["code"])


@dataclass
class Setup:
    sim: Simulator
    gw: Gateway
    demo: VendorSdk
    acme: VendorSdk

    def outbox_rows(self) -> int:
        path = self.gw.store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM submission").fetchone()[0])

    def lookup(self, **by: list[str]) -> list[dict[str, Any]]:
        sent = self.demo.execute(QUERY, by, self.demo.token())
        assert (200, "E0000") == answered(sent), sent.answer
        return list(sent.answer["result"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("sdk")
    with (
        Simulator.start(workdir / "sim", "--issue-delay", "0.2", dedup=False) as sim,
        Gateway.start(
            workdir / "gw",
            sim.url,
            overrides={
                "outbox": FAST_OUTBOX,
                "resilience": FAST_RESILIENCE,
                "upstream.timeout": "2s",
                "tenants": TENANTS,
            },
            env={"ACME_SDK_APP_KEY": ACME_SDK_KEY, "ACME_SDK_APP_SECRET": ACME_SDK_SECRET},
        ) as gw,
    ):
        yield Setup(
            sim,
            gw,
            VendorSdk(gw.url, SDK_APP_KEY, SDK_APP_SECRET),
            VendorSdk(gw.url, ACME_SDK_KEY, ACME_SDK_SECRET),
        )


def test_an_sdk_client_gets_its_token_from_the_gateway_and_issues_an_invoice(
    setup: Setup,
) -> None:
    """Only the URL changed: the SDK's token call and signed call work as at the platform, and
    the client's token calls never reach the platform's token endpoint."""
    sim, gw, sdk = setup.sim, setup.gw, setup.demo
    gw.call(QUERY, {"orderNos": ["warm-up"]})  # the gateway's own platform token, fetched now
    platform_token_calls = counters(sim)["token_calls"]

    status, answer = sdk.get_merchant_token()
    assert 200 == status
    assert {"access_token", "expires_in"} == set(answer)
    assert 86400 == answer["expires_in"]
    for wrong, code in (
        ({"client_secret": "guessed"}, "070305"),
        ({"client_id": "nobody"}, "070304"),
        ({"grant_type": "authorization_code"}, "070307"),
    ):
        status, refused = sdk.get_merchant_token(**wrong)
        assert (200, code) == (status, refused["error"]), refused
        assert refused["error_description"]

    body = invoice()
    sent = sdk.execute(ISSUE, body, str(answer["access_token"]))
    assert (200, "E0000") == answered(sent), sent.answer
    serial = sent.answer["result"]["invoiceSerialNum"]
    assert not serial.startswith("GW")
    assert "forwarded" == sent.headers["answer:X-Gateway-Outcome"]
    order = sim.ledger()["orders"][body["order"]["orderNo"]]
    assert (1, [serial]) == (order["issued"], order["serialNos"])
    assert platform_token_calls == counters(sim)["token_calls"]


def test_an_outage_answers_a_gateway_serial_then_the_platforms_record(setup: Setup) -> None:
    """During an outage the SDK gets E0000 and a gateway serial; its lookups say 20 (issuing)
    until the gateway has delivered it, then the platform's record with both serials; a
    platform verdict after queueing shows as 22 with its cause; reads the platform cannot serve
    are its busy code."""
    sim, sdk = setup.sim, setup.demo
    token = sdk.token()
    sim.fault(kind="http_error", status=503, operations=[ISSUE])
    reads_down = sim.fault(kind="http_error", status=503, operations=[QUERY])
    busy = sdk.execute(QUERY, {"orderNos": ["SO-anything"]}, token)
    assert (200, "040102") == answered(busy), busy.answer
    http_json("DELETE", f"{sim.control_url}/_sim/faults/{reads_down}")

    good, refused = invoice(), invoice()
    del refused["order"]["buyerName"]  # the platform refuses it (0201) once it is delivered
    serials = []
    for body in (good, refused):
        sent = sdk.execute(ISSUE, body, token)
        assert (200, "E0000") == answered(sent), sent.answer
        assert "queued" == sent.headers["answer:X-Gateway-Outcome"]
        serials.append(sent.answer["result"]["invoiceSerialNum"])
    good_serial, refused_serial = serials
    assert good_serial.startswith("GW")
    assert refused_serial.startswith("GW")

    [issuing] = setup.lookup(serialNos=[good_serial])
    assert ("20", good_serial, good_serial) == (
        issuing["status"],
        issuing["serialNo"],
        issuing["gatewaySerialNo"],
    )
    [by_order] = setup.lookup(orderNos=[good["order"]["orderNo"]])
    assert ("20", good_serial) == (by_order["status"], by_order["gatewaySerialNo"])

    sim.clear_faults()

    def final(serial: str, status: str) -> dict[str, Any] | None:
        entries = setup.lookup(serialNos=[serial])
        return entries[0] if entries and entries[0]["status"] == status else None

    done = wait_until(lambda: final(good_serial, "2"), timeout=20, what="the invoice issued")
    [real_serial] = sim.ledger()["orders"][good["order"]["orderNo"]]["serialNos"]
    assert (real_serial, good_serial) == (done["serialNo"], done["gatewaySerialNo"])
    assert done["invoiceNo"]
    [by_order] = setup.lookup(orderNos=[good["order"]["orderNo"]])
    assert ("2", real_serial, good_serial) == (
        by_order["status"],
        by_order["serialNo"],
        by_order["gatewaySerialNo"],
    )
    failed = wait_until(lambda: final(refused_serial, "22"), timeout=20, what="the verdict")
    assert failed["failCause"].startswith("0201"), failed
    ledger = sim.ledger()
    assert 1 == ledger["orders"][good["order"]["orderNo"]]["issued"]
    assert refused["order"]["orderNo"] not in ledger["orders"]
    assert 0 == ledger["totals"]["doubles"]


def test_bad_signatures_stale_times_replays_and_foreign_tokens_are_refused(
    setup: Setup,
) -> None:
    """Each refused as the platform refuses (HTTP 200 and its code), and nothing is queued or
    sent for it."""
    sim, demo, acme = setup.sim, setup.demo, setup.acme
    token = demo.token()
    accepted = demo.execute(ISSUE, invoice(), token)
    assert (200, "E0000") == answered(accepted), accepted.answer
    rows, calls = setup.outbox_rows(), counters(sim)["calls"]

    wrong_secret = VendorSdk(setup.gw.url, SDK_APP_KEY, "guessed")
    stale = int(time.time()) - 600
    foreign = acme.token()
    refusals = {
        "wrong secret": (wrong_secret.execute(ISSUE, invoice(), token), "070601"),
        "stale timestamp": (demo.execute(ISSUE, invoice(), token, timestamp=stale), "070601"),
        "replayed nonce": (
            send(accepted.url, _request_headers(accepted), accepted.body),
            "070601",
        ),
        "another tenant's token": (demo.execute(ISSUE, invoice(), foreign), "070401"),
        "no such token": (demo.execute(ISSUE, invoice(), "forged.token"), "070301"),
    }
    for what, (sent, code) in refusals.items():
        assert (200, code) == answered(sent), (what, sent.answer)
    assert rows == setup.outbox_rows()
    assert calls == counters(sim)["calls"]
    order = _order_no(accepted.body)
    assert 1 == sim.sends(order)


def _request_headers(sent: Sent) -> dict[str, str]:
    return {k: v for k, v in sent.headers.items() if not k.startswith("answer:")}


def _order_no(body: bytes) -> str:
    return str(json.loads(body)["order"]["orderNo"])
