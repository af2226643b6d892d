"""The gateway's log after a full scenario through real processes — healthy traffic, an outage
with queued submissions, recovery and drain, an answer lost and reconciled — holds no tax
number, phone, e-mail or bank account in the clear, and ties every delivery to the request id
its client saw."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sensitive import mask_value
from gateway.tools.simulator.tax_numbers import make_tax_number
from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.integration.test_outbox import OVERRIDES, wait_delivered
from tests.support.harness import Gateway, Simulator
from tests.support.processes import TENANT_KEY, USER_TAX, http_json, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2") as sim:
        yield sim


class Client:
    """Sends invoices full of personal data and remembers what it sent and was told."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.rng = random.Random(6)
        self.personal: list[str] = [USER_TAX]
        #: submission id → the X-Request-Id the client got with its 202
        self.queued: dict[str, str] = {}
        self.request_ids: list[str] = []

    def invoice(self) -> dict[str, Any]:
        body = invoice()
        n = self.rng.randrange(10**8)
        order = body["order"]
        order["buyerTaxNum"] = make_tax_number(self.rng.randrange(10**9))
        order["buyerPhone"] = f"139{n:08d}"
        order["buyerEmail"] = f"buyer{n}@example.com"
        order["buyerAddress"] = f"北京市海淀区中关村大街{n % 100}号"
        order["buyerAccount"] = f"6222{n:08d}{n % 10**7:07d}"
        self.personal += [order[key] for key in ("buyerTaxNum", "buyerPhone", "buyerEmail")]
        self.personal.append(order["buyerAccount"])
        return body

    def submit(self, expect: int, headers: dict[str, str] | None = None) -> str:
        status, head, answer = self.gateway.call(ISSUE, self.invoice(), headers=headers)
        assert expect == status, answer
        request_id = head["X-Request-Id"]
        self.request_ids.append(request_id)
        if status == 202:
            self.queued[answer["submission_id"]] = request_id
        return request_id


def read_log(path: Path) -> tuple[str, list[dict[str, Any]]]:
    text = path.read_text()
    return text, [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_no_personal_data_in_the_log_and_deliveries_carry_the_request_id(
    tmp_path: Path, simulator: Simulator
) -> None:
    """After the scenario: no buyer tax number, phone, e-mail or bank account we sent, nor the
    seller's tax number, appears unmasked in the gateway's log; a tax number in a URL path is
    logged masked; every dispatcher line for a queued submission carries the request id its
    client saw in `X-Request-Id`."""
    gateway = Gateway.start(tmp_path / "gw", simulator.url, overrides=OVERRIDES)
    client = Client(gateway)
    try:
        # Healthy: forwarded at once; one request id chosen by the client.
        for _ in range(4):
            client.submit(200)
        chosen = client.submit(200, headers={"X-Request-Id": "erp-batch-7-line-3"})
        assert "erp-batch-7-line-3" == chosen
        # A REST-style path with a tax number in it (passed through, logged in the access line).
        in_path = make_tax_number(client.rng.randrange(10**9))
        client.personal.append(in_path)
        http_json(
            "GET", f"{gateway.url}/open/v1/company/{in_path}", headers={"X-Api-Key": TENANT_KEY}
        )

        # Outage: accepted and queued; then the platform recovers and the queue drains.
        simulator.fault(kind="http_error", status=503)
        for _ in range(8):
            client.submit(202)
        simulator.clear_faults()
        wait_delivered(gateway, list(client.queued))

        # The answer to an issued invoice is lost: queued as unknown, then reconciled.
        assert 200 == gateway.call(QUERY, {"orderNos": ["warm-up"]})[0]
        simulator.fault(kind="answer_lost", operations=[ISSUE], count=1)
        lost = client.submit(202)
        [lost_submission] = [sid for sid, rid in client.queued.items() if rid == lost]
        [view] = wait_delivered(gateway, [lost_submission]).values()
        assert view["result"]["reconciled"] is True

        # The dispatcher logs a delivery just after recording it: stopping the gateway the
        # moment the status API says "delivered" could cut that line off. Wait for it.
        def unlogged() -> set[str]:
            _, lines = read_log(gateway.process.stderr_path)
            return set(client.queued) - {line.get("submission_id") for line in lines}

        try:
            wait_until(lambda: not unlogged(), timeout=10, interval=0.1, what="delivery lines")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: no log line names {sorted(unlogged())}") from None
    finally:
        gateway.process.stop()

    text, lines = read_log(gateway.process.stderr_path)
    leaked = sorted({value for value in client.personal if value in text})
    assert [] == leaked, "personal data in the clear in the gateway's log"
    assert str(mask_value(in_path)) in text  # masked by shape, not merely absent

    access = {line["request_id"]: line for line in lines if line["event"] == "request"}
    assert set(client.request_ids) <= set(access)
    for submission_id, request_id in client.queued.items():
        dispatcher = [line for line in lines if line.get("submission_id") == submission_id]
        assert dispatcher, submission_id
        assert {request_id} == {line.get("request_id") for line in dispatcher}
        assert any(line["event"].startswith("delivered") for line in dispatcher)
    reconciled = [
        line
        for line in lines
        if line.get("submission_id") == lost_submission
        and line["event"].startswith("delivered by reconciliation")
    ]
    assert [lost] == [line["request_id"] for line in reconciled]
