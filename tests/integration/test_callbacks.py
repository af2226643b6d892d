"""Callbacks to the business, end to end (real gateway, simulator and receiver processes'
sockets): submissions queued during an outage become final while the tenant's receiver is down;
once it is up it gets one signed event per final submission (and per issued invoice), retried
until taken, none lost. The receiver verifies them with the snippet in docs/callbacks.md, which
refuses a forged signature."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_admin_api import ADMIN, ADMIN_ENV, OPERATOR_TOKEN
from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_outbox import OVERRIDES, wait_delivered
from tests.support.harness import Gateway, Simulator
from tests.support.processes import ROOT, base_env, free_port, gateway_command, wait_until

pytestmark = pytest.mark.integration

SECRET = "it-callback-secret-0123456789abcdef"
DOC = ROOT / "docs" / "callbacks.md"


def documented_verify() -> Callable[..., bool]:
    """The `verify` function exactly as docs/callbacks.md gives it to receivers."""
    text = DOC.read_text()
    (code,) = [
        block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in block
    ]
    scope: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 — our own documentation
    verify: Callable[..., bool] = scope["verify"]
    return verify


@dataclass
class Receiver:
    """A tenant's callback endpoint: records every POST, answers 204."""

    port: int
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> dict[str, dict[str, Any]]:
        """Distinct events taken, by delivery id (a retry repeats one)."""
        return {headers["X-Gateway-Delivery"]: json.loads(body) for headers, body in self.received}


def oncall(gateway: Gateway, *args: str) -> str:
    """`invoice-gateway callbacks ARGS --json` against the gateway's admin API; its stdout."""
    done = subprocess.run(
        gateway_command("callbacks", *args, "--url", gateway.admin_url, "--json"),
        env={**base_env(), "GATEWAY_ADMIN_TOKEN": OPERATOR_TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    return done.stdout


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    taken = Receiver(free_port())
    try:
        yield taken
    finally:
        taken.stop()


def test_events_reach_a_receiver_that_was_down_signed_and_each_once(
    tmp_path: Path, simulator: Simulator, receiver: Receiver
) -> None:
    overrides = {
        **OVERRIDES,
        **ADMIN,
        "tenants": [
            {
                "id": "demo",
                "api_key": {"env": "GATEWAY_DEMO_API_KEY"},
                "callback": {
                    "url": f"http://127.0.0.1:{receiver.port}/invoice-events",
                    "secret": {"env": "IT_CALLBACK_SECRET"},
                    "timeout": "2s",
                },
            }
        ],
        "callbacks": {"poll_interval": "100ms", "backoff": {"base": "100ms", "cap": "300ms"}},
    }
    env = {"IT_CALLBACK_SECRET": SECRET, **ADMIN_ENV}
    with Gateway.start(tmp_path / "gw", simulator.url, overrides=overrides, env=env) as gateway:
        simulator.fault(kind="http_error", status=503, operations=[ISSUE])
        bodies = [invoice() for _ in range(3)]
        answers = [gateway.call(ISSUE, body) for body in bodies]
        assert {202} == {status for status, _, _ in answers}, answers
        ids = [answer["submission_id"] for _, _, answer in answers]
        simulator.clear_faults()
        wait_delivered(gateway, ids)
        # The receiver is down: the gateway keeps trying (connection refused each time).
        log = gateway.process.stderr_path
        wait_until(
            lambda: log.read_text().count("callback not taken") >= 6,
            timeout=20,
            what="callbacks retried while the receiver is down",
        )
        receiver.start()
        # One `delivered` and one `issued` event per submission.
        wait_until(
            lambda: len(receiver.events()) >= 2 * len(ids),
            timeout=30,
            interval=0.1,
            what="every event taken",
        )
        assert gateway.metric("gateway_callbacks_sent_total") >= 2 * len(ids)
        assert gateway.metric("gateway_callbacks_failed_total") >= 6
        live = gateway.call(ISSUE, invoice())  # answered at once: no `delivered` event
        assert 200 == live[0], live
        # On-call sees them delivered and sends one again: the receiver gets the same id.
        listed = oncall(gateway, "list", "--state", "delivered", "--submission", ids[0])
        [first, *_] = json.loads(listed)["items"]
        taken = len(receiver.received)
        replayed = json.loads(oncall(gateway, "replay", first["id"], "--reason", "test"))
        assert "pending" == replayed["state"]
        wait_until(
            lambda: (
                first["id"]
                in [headers["X-Gateway-Delivery"] for headers, _ in receiver.received[taken:]]
            ),
            timeout=10,
            what="the replayed event",
        )
    events = receiver.events()
    by_submission: dict[str, list[str]] = {}
    for event in events.values():
        by_submission.setdefault(event["submission"]["submission_id"], []).append(event["type"])
    for submission_id in ids:
        assert ["submission.delivered", "submission.issued"] == sorted(
            by_submission.pop(submission_id)
        )
    # The submission answered at once: its issuance, nothing else (if it came in time).
    assert all(types == ["submission.issued"] for types in by_submission.values())
    verify = documented_verify()
    for headers, body in receiver.received:
        assert verify(SECRET, headers, body), headers
        assert headers["X-Gateway-Event"] == events[headers["X-Gateway-Delivery"]]["type"]
    headers, body = receiver.received[0]
    forged = {**headers, "X-Gateway-Signature": "v1=" + "0" * 64}
    assert not verify(SECRET, forged, body)
    assert not verify(SECRET, headers, body.replace(b"demo", b"omed"))
    assert not verify("another-secret", headers, body)
    issued = [e for e in events.values() if e["type"] == "submission.issued"]
    assert all(e["submission"]["issuance"]["invoice_number"] for e in issued), issued
