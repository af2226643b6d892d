"""Input limits at the listener of a real gateway process in front of the real simulator
(issue "Security", part "Input limits"): oversized and too many headers, slow clients, too
many connections, deep and huge JSON, bad idempotency keys, unknown methods. Every refusal is
a 4xx (503 for a connection over the limit), and nothing reaches the store or the platform.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Gateway, Simulator
from tests.support.processes import TENANT_KEY, http_json

ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
SERVICES = "/open/v1/services"
READ_TIMEOUT = 2.0
LIMITS = {
    "limits.read_timeout": f"{READ_TIMEOUT:g}s",
    "limits.max_body_bytes": 4 * 1024 * 1024,
    "limits.max_connections": 4,
    "unmatched": "reject",
}


@pytest.fixture
def gateway(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    with Gateway.start(tmp_path / "gw", simulator.url, overrides=LIMITS) as gw:
        yield gw


def platform_calls(sim: Simulator) -> int:
    """Calls of the issue operation that reached the platform."""
    return int(sim.ledger()["counters"]["calls"].get(ISSUE, 0))


def stored(gw: Gateway) -> int:
    path = gw.store_url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM submission").fetchone()[0])


def connect(gw: Gateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def head(extra: str = "", *, method: str = ISSUE, length: int | None = None) -> bytes:
    lines = [
        f"POST {SERVICES} HTTP/1.1",
        "Host: gw",
        f"X-Api-Key: {TENANT_KEY}",
        f"method: {method}",
        "Content-Type: application/json",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def status_of(sock: socket.socket) -> int:
    """The status code of the answer on `sock` (read to the status line)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def closed_within(sock: socket.socket, trickle: bytes, limit: float) -> float:
    """Send `trickle` one byte per second until the gateway closes the connection (or `limit`
    seconds pass); how long that took. Waits on the socket, not blindly."""
    started = time.monotonic()
    sock.settimeout(1.0)
    for byte in trickle:
        if time.monotonic() - started > limit:
            break
        try:
            sock.sendall(bytes([byte]))
            data = sock.recv(4096)  # waits up to 1 s: the pace of the trickle
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
        if data == b"" or data.startswith(b"HTTP/1.1 408"):
            return time.monotonic() - started
    return float("inf")


def test_slowloris_head_is_cut_off_within_the_read_timeout(
    gateway: Gateway, simulator: Simulator
) -> None:
    """A client sending its request head one byte per second is disconnected after
    limits.read_timeout, however long it would go on."""
    with connect(gateway) as sock:
        took = closed_within(sock, head() * 10, limit=READ_TIMEOUT + 8)
    assert took <= READ_TIMEOUT + 3, took
    assert 0 == platform_calls(simulator)


def test_slow_body_gets_408_within_the_read_timeout(gateway: Gateway, simulator: Simulator) -> None:
    body = json.dumps({"order": {"orderNo": "SLOW-1"}}).encode() * 10
    with connect(gateway) as sock:
        sock.sendall(head(length=len(body)))
        took = closed_within(sock, body, limit=READ_TIMEOUT + 8)
    assert took <= READ_TIMEOUT + 3, took
    assert 0 == platform_calls(simulator)
    assert 0 == stored(gateway)


@pytest.mark.parametrize(
    "extra",
    [
        "X-Big: " + "a" * 10_000 + "\r\n",  # one header over limits.max_header_bytes
        "".join(f"X-H{i}: v\r\n" for i in range(150)),  # over limits.max_headers
    ],
    ids=["oversized-header", "too-many-headers"],
)
def test_oversized_or_too_many_headers_are_4xx(
    gateway: Gateway, simulator: Simulator, extra: str
) -> None:
    with connect(gateway) as sock:
        sock.sendall(head(extra, length=2) + b"{}")
        status = status_of(sock)
    assert 400 <= status < 500, status
    assert 0 == platform_calls(simulator)


def test_connections_over_the_limit_are_refused_with_503(gateway: Gateway) -> None:
    """limits.max_connections (4 here) open at once: the fifth gets 503 at once; a slot that
    frees up is taken again."""
    held = [connect(gateway) for _ in range(4)]
    try:
        for sock in held:  # each served once and kept alive
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert 200 == status_of(sock)
        with connect(gateway) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            answer = b""
            while chunk := extra.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
        assert b"too-many-connections" in answer
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the gateway sees the closes a moment later
        status, _, _ = http_json("GET", f"{gateway.url}/healthz")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert 200 == status


def assert_refused(
    answer: tuple[int, dict[str, str], Any], slug: str, gw: Gateway, sim: Simulator
) -> None:
    """A 400 problem of type `slug`; nothing reached the platform or the store."""
    status, _, problem = answer
    assert 400 == status, problem
    assert f"urn:invoice-gateway:problem:{slug}" == problem["type"]
    assert 0 == platform_calls(sim)
    assert 0 == stored(gw)


def test_deep_json_is_400_and_nothing_is_stored_or_sent(
    gateway: Gateway, simulator: Simulator
) -> None:
    deep = ('{"order": ' + "[" * 5000 + "]" * 5000 + "}").encode()
    answer = gateway.call(ISSUE, None, raw=deep)
    assert_refused(answer, "json-limit-exceeded", gateway, simulator)


def test_huge_json_array_is_400_and_nothing_is_stored_or_sent(
    gateway: Gateway, simulator: Simulator
) -> None:
    """A million elements, within limits.max_body_bytes (4 MiB here)."""
    body = b'{"order": {"orderNo": "HUGE-1", "invoiceDetail": [' + b",".join([b"0"] * 10**6)
    answer = gateway.call(ISSUE, None, raw=body + b"]}}")
    assert_refused(answer, "json-limit-exceeded", gateway, simulator)


@pytest.mark.parametrize("key", ["k" * 129, "two words", "tab\tkey"])
def test_bad_idempotency_key_is_400(gateway: Gateway, simulator: Simulator, key: str) -> None:
    body = {"order": {"orderNo": "KEY-1"}}
    answer = gateway.call(ISSUE, body, headers={"Idempotency-Key": key})
    assert_refused(answer, "invalid-idempotency-key", gateway, simulator)


def test_unknown_method_is_404_before_its_body_is_read(
    gateway: Gateway, simulator: Simulator
) -> None:
    """The body is announced (1 MB) but never sent: the answer comes at once all the same."""
    with connect(gateway) as sock:
        sock.sendall(head(method="nuonuo.Unknown.op", length=1_000_000))
        started = time.monotonic()
        status = status_of(sock)
    assert 404 == status
    assert time.monotonic() - started < READ_TIMEOUT
    assert 0 == platform_calls(simulator)


def test_request_never_chooses_the_upstream(gateway: Gateway, simulator: Simulator) -> None:
    """Host and X-Forwarded-Host naming another host: the invoice still goes to the configured
    platform (the simulator issues it)."""
    body: dict[str, Any] = {"order": {"orderNo": "HOST-1"}}
    status, _, _ = gateway.call(
        ISSUE,
        body,
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    assert status < 500
    assert 1 == platform_calls(simulator)


def test_admin_listener_off_loopback_logs_a_warning(tmp_path: Path, simulator: Simulator) -> None:
    from tests.support.processes import free_port

    overrides = {"admin.listen": f"0.0.0.0:{free_port()}"}
    with Gateway.start(tmp_path / "open", simulator.url, overrides=overrides) as gw:
        logs = gw.process.logs()
    assert "admin listener is reachable from other hosts" in logs
