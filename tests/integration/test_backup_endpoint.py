"""The backup endpoint (`upstream.backup_url`) against two real simulator processes: reads go
to the backup while the primary is down, submissions never do unless configured
(docs/configuration.md#backup-endpoint).

Two simulators are two platforms, each with tokens of its own, while the backup of the real
platform accepts the primary's token (it is the same platform). A small relay in front of the
backup simulator stands in for that: it passes everything through, with the `accessToken` the
backup simulator gave it in place of the primary's. Nothing else is changed (the token is not
part of the signature).
"""

from __future__ import annotations

import http.client
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.integration.test_outbox import FAST_RESILIENCE, wait_delivered
from tests.support.harness import FAST_OUTBOX, Gateway, Simulator
from tests.support.processes import (
    APP_KEY,
    APP_SECRET,
    ROOT,
    base_env,
    gateway_command,
    http_json,
    wait_until,
    write_gateway_config,
)

UPSTREAM = "X-Gateway-Upstream"
BACKUP_ACTIVE = "gateway_upstream_backup_active"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


@contextmanager
def token_relay(sim: Simulator) -> Iterator[str]:
    """An address that relays to `sim` with a token `sim` issued (see the module docstring)."""
    _, _, answer = http_json(
        "POST",
        sim.token_url,
        raw=f"client_id={APP_KEY}&client_secret={APP_SECRET}&grant_type=client_credentials".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    token = str(answer["access_token"])
    target = urlsplit(sim.url)

    class Relay(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {
                name: (token if name.lower() == "accesstoken" else value)
                for name, value in self.headers.items()
                if name.lower() not in _HOP_BY_HOP and name.lower() != "host"
            }
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            try:
                connection.request("POST", self.path, body, headers)
                answer = connection.getresponse()
                payload = answer.read()
            finally:
                connection.close()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[Simulator]:
    """The primary: tokens from a host of their own (up while the API port refuses), and no
    deduplication, so an invoice sent twice shows as a second one."""
    with Simulator.start(
        tmp_path / "primary", "--issue-delay", "0.2", dedup=False, token_host=True
    ) as sim:
        yield sim


@pytest.fixture
def backup(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator.start(tmp_path / "backup", "--issue-delay", "0.2", dedup=False) as sim:
        yield sim


@pytest.fixture
def backup_url(backup: Simulator) -> Iterator[str]:
    with token_relay(backup) as url:
        yield url


def start(tmp_path: Path, primary: Simulator, **overrides: Any) -> Gateway:
    """A gateway on `primary` with fast outbox and resilience settings (the circuit opens after
    three failures, for 500 ms), and `overrides`."""
    return Gateway.start(
        tmp_path / "gw",
        primary.url,
        overrides={
            "outbox": FAST_OUTBOX,
            "resilience": FAST_RESILIENCE,
            "upstream.timeout": "2s",
            "upstream.auth.token_url": primary.token_url,
            **overrides,
        },
    )


def read(gw: Gateway) -> tuple[int, str | None]:
    status, headers, answer = gw.call(QUERY, {"orderNos": ["SO-anything"]})
    assert status != 200 or answer["code"] == "E0000", answer
    return status, headers.get(UPSTREAM)


def tried(gw: Gateway, submission_id: str) -> bool:
    view = gw.status(submission_id)
    return view["status"] == "delivered" or view["attempts"] >= 1


def orders(sim: Simulator) -> dict[str, Any]:
    return dict(sim.ledger()["orders"])


def status_page(gw: Gateway) -> dict[str, Any]:
    """/status as JSON (what the page shows)."""
    status, _, facts = http_json("GET", f"{gw.url}/status?format=json")
    assert 200 == status, facts
    return dict(facts)


def test_reads_use_the_backup_while_the_primary_is_down_and_submissions_wait(
    tmp_path: Path, primary: Simulator, backup: Simulator, backup_url: str
) -> None:
    """The primary refuses connections: reads are answered by the backup, submissions are
    queued and never sent to the backup; once the primary is back, reads return to it and the
    queued submissions are issued there, each once."""
    with start(tmp_path, primary, **{"upstream.backup_url": backup_url}) as gw:
        assert (200, "primary") == read(gw)
        assert 0 == gw.metric(BACKUP_ACTIVE)
        primary.fault(kind="refuse")
        assert [(200, "backup")] * 5 == [read(gw) for _ in range(5)]
        wait_until(lambda: gw.metric(BACKUP_ACTIVE) == 1, timeout=5, what="backup active")
        assert "backup" == status_page(gw)["reads_endpoint"]

        bodies = [invoice() for _ in range(3)]
        ids = []
        for body in bodies:
            status, headers, answer = gw.call(ISSUE, body)
            assert (202, "queued") == (status, headers["X-Gateway-Outcome"]), answer
            ids.append(answer["submission_id"])
        assert [(200, "backup")] * 3 == [read(gw) for _ in range(3)]
        # The dispatcher tries them (as the primary circuit's trial calls), at the primary only.
        wait_until(lambda: any(tried(gw, i) for i in ids), timeout=10, what="a delivery attempt")
        assert {} == orders(backup)  # not one submission reached the backup

        primary.clear_faults()
        wait_until(lambda: read(gw) == (200, "primary"), timeout=10, what="reads on the primary")
        wait_delivered(gw, ids, timeout=15)
        assert [1, 1, 1] == [primary.sends(body["order"]["orderNo"]) for body in bodies]
        assert {} == orders(backup)
        wait_until(lambda: gw.metric(BACKUP_ACTIVE) == 0, timeout=5, what="backup inactive")
        assert "primary" == status_page(gw)["reads_endpoint"]


def test_a_read_refused_by_the_primary_is_answered_by_the_backup_at_once(
    tmp_path: Path, primary: Simulator, backup: Simulator, backup_url: str
) -> None:
    """One client request, one attempt at the primary (refused), the same call at the backup
    at once: one answer, 200 from the backup. (A first read takes the token while the primary's
    hosts are up: the simulator's refuse closes its token port too.)"""
    with start(tmp_path, primary, **{"upstream.backup_url": backup_url}) as gw:
        assert (200, "primary") == read(gw)
        primary.fault(kind="refuse")
        assert (200, "backup") == read(gw)
        assert 1 == backup.ledger()["counters"]["calls"][QUERY]
        labels = f'operation="{QUERY}"'
        assert 1 == gw.metric(f'gateway_upstream_attempts_total{{{labels},result="refused"}}')
        endpoint = "gateway_upstream_endpoint_requests_total"
        assert 2 == gw.metric(f'{endpoint}{{endpoint="primary",{labels}}}')
        assert 1 == gw.metric(f'{endpoint}{{endpoint="backup",{labels}}}')


def test_failover_of_submissions_sends_them_to_the_backup_only_when_configured(
    tmp_path: Path, primary: Simulator, backup: Simulator, backup_url: str
) -> None:
    """With `failover: submissions` on the issue operation, invoices sent while the primary is
    down are issued by the backup (live, or queued and delivered there), each once."""
    operations = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())["operations"]
    [issue] = [op for op in operations if op["name"] == ISSUE]
    issue["failover"] = "submissions"
    overrides = {"upstream.backup_url": backup_url, "operations": operations}
    with start(tmp_path, primary, **overrides) as gw:
        assert (200, "primary") == read(gw)  # the token, while the primary's hosts are up
        primary.fault(kind="refuse")
        bodies = [invoice() for _ in range(4)]
        ids = []
        for body in bodies:
            status, _, answer = gw.call(ISSUE, body)
            assert status in (200, 202), answer
            if status == 202:
                ids.append(answer["submission_id"])
        wait_delivered(gw, ids, timeout=15)
        numbers = [body["order"]["orderNo"] for body in bodies]
        assert [1] * 4 == [backup.sends(number) for number in numbers]
        assert [0] * 4 == [primary.sends(number) for number in numbers]


def test_without_a_backup_nothing_changes_and_check_config_refuses_the_primary_twice(
    tmp_path: Path, primary: Simulator
) -> None:
    """No `backup_url`: no `X-Gateway-Upstream`, and a read the primary refuses fails as
    before. `check-config` refuses a backup_url equal to url."""
    with start(tmp_path, primary) as gw:
        status, headers, _ = gw.call(QUERY, {"orderNos": ["SO-1"]})
        assert (200, None) == (status, headers.get(UPSTREAM))
        primary.fault(kind="refuse")
        status, headers, problem = gw.call(QUERY, {"orderNos": ["SO-1"]})
        assert (503, None) == (status, headers.get(UPSTREAM)), problem
        assert 0 == gw.metric(BACKUP_ACTIVE)

    path = write_gateway_config(
        tmp_path / "twice.yaml",
        upstream_url=primary.url,
        overrides={"upstream.backup_url": primary.url + "/"},
    )
    checked = subprocess.run(
        gateway_command("check-config", str(path)),
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 2 == checked.returncode, checked.stdout
    assert "upstream: backup_url must be another address than url" in checked.stderr
