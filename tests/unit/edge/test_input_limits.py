"""Hostile input on the client path: refused with a 4xx, never a 500, never stored or sent
(issue "Security", part "Input limits"). Listener-level limits (headers, slow clients,
connections) run against real processes in tests/integration/test_input_limits.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.config import parse_config
from gateway.edge.listener import GatedTCPSite
from gateway.errors import BadRequest, JsonLimitExceeded
from gateway.operations import JsonLimits, RequestBody, check_json_limits
from tests.unit.edge.test_proxy import (
    ISSUE,
    PROBLEM_JSON,
    QUERY,
    SERVICES,
    TENANT_KEY,
    FakeUpstream,
    GatewayClient,
    gateway_client,
    issue_body,
    post_operation,
)

PROBLEM = "urn:invoice-gateway:problem:"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """The recording fake platform of test_proxy, below `/base`."""
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/") + "/base"
    try:
        yield fake
    finally:
        await server.close()


@pytest.fixture
async def client(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[GatewayClient]:
    """A gateway on test_proxy's config, with room for a body 5,000 levels deep."""
    limits = {"max_body_bytes": 64 * 1024}
    async with gateway_client(upstream.url, tmp_path, limits=limits) as client:
        yield client


def stored_submissions(tmp_path: Path) -> int:
    """Rows in the gateway's store (the SQLite file of `config_for`), read straight from it."""
    with sqlite3.connect(f"file:{tmp_path / 'gw.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM submission").fetchone()[0])


def deep(levels: int) -> str:
    return '{"order": ' + "[" * levels + "]" * levels + "}"


# --- the JSON limits, without parsing ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (json.dumps(issue_body()), True),
        ("[" * 64 + "]" * 64, True),
        ("[" * 65 + "]" * 65, False),
        ("[" * 5000 + "]" * 5000, False),
        ("[" * 5000, False),  # unterminated: still refused by depth, before the parser
        ('["' + "[" * 5000 + '"]', True),  # brackets inside a string are text
        ('["\\"' + "[" * 5000 + '"]', True),  # an escaped quote does not end the string
        ('"' + "\\" * 9999, True),  # unterminated string: left to the parser
        ("[" + ",".join(["0"] * 99_999) + "]", True),
        ("[" + ",".join(["0"] * 100_000) + "]", False),
        ('{"a": [' + ",".join(["{}"] * 60_000) + "]}", False),
    ],
)
def test_json_limits_are_checked_without_parsing(text: str, ok: bool) -> None:
    if ok:
        check_json_limits(text, JsonLimits())
    else:
        with pytest.raises(JsonLimitExceeded):
            check_json_limits(text, JsonLimits())


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\x00", b'{"a": "\xed\xa0\x80"}', b"1" * 5000, b'{"a": 1e999999}', b"NaN"],
)
def test_odd_bodies_are_json_or_bad_request(raw: bytes) -> None:
    """Invalid bytes, too many digits, odd numbers: parsed or `BadRequest`, nothing else."""
    with contextlib.suppress(BadRequest):
        RequestBody(raw).json()


# --- through the client path ---------------------------------------------------------------


async def test_deeply_nested_json_is_400_not_stored_not_sent(
    upstream: FakeUpstream, client: GatewayClient, tmp_path: Path
) -> None:
    """5,000 levels deep (a RecursionError and a 500 before): 400, nothing stored or sent."""
    response, problem = await post_operation(client, ISSUE, data=deep(5000))
    assert (400, PROBLEM_JSON) == (response.status, response.content_type)
    assert PROBLEM + "json-limit-exceeded" == problem["type"]
    assert "limits.max_json_depth" in problem["detail"]
    assert [] == upstream.seen
    assert 0 == stored_submissions(tmp_path)


async def test_deep_json_is_400_for_every_operation_that_parses(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A rule matching on the body parses it too: a deep body is 400 there, not a 500."""
    operations = [
        {
            "name": "by-body",
            "kind": "read",
            "match": {"path": SERVICES, "body": [{"pointer": "/kind", "equals": "x"}]},
        }
    ]
    limits = {"max_body_bytes": 64 * 1024}
    async with gateway_client(
        upstream.url, tmp_path, operations=operations, limits=limits
    ) as client:
        response, problem = await post_operation(client, "anything", data=deep(5000))
    assert 400 == response.status
    assert PROBLEM + "json-limit-exceeded" == problem["type"]
    assert [] == upstream.seen


async def test_huge_json_array_is_refused(upstream: FakeUpstream, tmp_path: Path) -> None:
    """A million elements within the body limit: 400 naming limits.max_json_values."""
    body = '{"order": {"orderNo": "A-1", "invoiceDetail": [' + ",".join(["0"] * 10**6) + "]}}"
    limits = {"max_body_bytes": 4 * 1024 * 1024}
    async with gateway_client(upstream.url, tmp_path, limits=limits) as client:
        response, problem = await post_operation(client, ISSUE, data=io.BytesIO(body.encode()))
    assert 400 == response.status
    assert PROBLEM + "json-limit-exceeded" == problem["type"]
    assert "limits.max_json_values" in problem["detail"]
    assert [] == upstream.seen
    assert 0 == stored_submissions(tmp_path)


async def test_huge_digits_and_invalid_utf8_are_400(
    upstream: FakeUpstream, client: GatewayClient, tmp_path: Path
) -> None:
    for raw in (b'{"order": {"orderNo": ' + b"9" * 5000 + b"}}", b'{"order": "\xff"}'):
        response, problem = await post_operation(client, ISSUE, data=raw)
        assert 400 == response.status, problem
    assert [] == upstream.seen
    assert 0 == stored_submissions(tmp_path)


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("k" * 129, "at most 128"),
        ("key with spaces", "printable ASCII without spaces"),
        ("ключ", "printable ASCII without spaces"),
        ("tab\there", "printable ASCII without spaces"),
    ],
)
async def test_bad_idempotency_keys_are_400(
    upstream: FakeUpstream, client: GatewayClient, tmp_path: Path, key: str, rule: str
) -> None:
    response, problem = await post_operation(
        client, ISSUE, json=issue_body(), headers={"Idempotency-Key": key}
    )
    assert (400, PROBLEM_JSON) == (response.status, response.content_type)
    assert PROBLEM + "invalid-idempotency-key" == problem["type"]
    assert rule in problem["detail"]
    assert [] == upstream.seen
    assert 0 == stored_submissions(tmp_path)


async def test_idempotency_key_of_128_printable_characters_is_taken(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F))[:128].ljust(128, "~")
    response, _ = await post_operation(
        client, ISSUE, json=issue_body(), headers={"Idempotency-Key": key}
    )
    assert 200 == response.status
    assert 1 == len(upstream.seen)


async def test_unknown_method_is_refused_before_the_body_is_read(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With unmatched: reject an unknown `method` header is a 404 although the body it
    announces never arrives: the gateway did not wait to read it."""
    async with gateway_client(upstream.url, tmp_path, unmatched="reject") as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            f"POST {SERVICES} HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {TENANT_KEY}\r\n"
            "method: nuonuo.Unknown.op\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
    assert b" 404 " in status_line
    assert [] == upstream.seen


async def test_request_never_chooses_where_the_gateway_sends(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """Host, X-Forwarded-Host and Forwarded from the client do not change the upstream: the
    request goes to the configured URL (an absolute-form target is 400, see test_proxy)."""
    headers = {
        "Host": "evil.example:9999",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "host=evil.example;proto=https",
        "X-Original-URL": "http://evil.example/steal",
    }
    response, _ = await post_operation(client, ISSUE, json=issue_body(), headers=headers)
    assert 200 == response.status
    [seen] = upstream.seen
    assert "/base" + SERVICES == seen["path"]
    assert seen["headers"]["Host"].startswith("127.0.0.1:")


async def test_body_read_timeout_is_408(upstream: FakeUpstream, tmp_path: Path) -> None:
    """A body that stops arriving gets 408 after limits.read_timeout; nothing sent."""
    limits = {"max_body_bytes": 2048, "read_timeout": "1s"}
    async with gateway_client(upstream.url, tmp_path, limits=limits) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            f"POST {SERVICES} HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {TENANT_KEY}\r\n"
            f"method: {ISSUE}\r\nContent-Length: 100\r\n\r\n{{".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
    assert b" 408 " in status_line
    assert [] == upstream.seen


# --- the connection gate -------------------------------------------------------------------


async def test_connections_over_the_limit_get_503_and_are_closed() -> None:
    """Two connections open at once at most: the third is answered 503 and closed; once one
    closes, a new one is served."""

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = GatedTCPSite(runner, "127.0.0.1", 0, max_connections=2)
    await site.start()
    port = runner.addresses[0][1]
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:
            writer.write(request)
            assert b" 200 " in await asyncio.wait_for(reader.readline(), 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        refused = await asyncio.wait_for(reader.read(), 5)  # read to the end: it is closed
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"too-many-connections" in refused
        assert site.gate is not None
        assert 1 == site.gate.refused
        held[0][1].close()
        await held[0][1].wait_closed()
        for _ in range(50):  # the server sees the close a moment later
            if site.gate.open < 2:
                break
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        assert b" 200 " in await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        held[1][1].close()
        await writer.wait_closed()
        await held[1][1].wait_closed()
    finally:
        await runner.cleanup()


def test_limits_have_documented_defaults() -> None:
    config = parse_config(
        {"tenants": [{"id": "t", "api_key_sha256": "0" * 64}], "upstream": {"url": "http://x"}},
        {},
    )
    limits = config.limits
    assert (64, 100_000, 8190, 100, 30.0, 1000) == (
        limits.max_json_depth,
        limits.max_json_values,
        limits.max_header_bytes,
        limits.max_headers,
        limits.read_timeout,
        limits.max_connections,
    )
    assert config.admin.listen.startswith("127.0.0.1:")


async def test_idempotency_key_sent_twice_is_400(
    upstream: FakeUpstream, client: GatewayClient, tmp_path: Path
) -> None:
    headers = CIMultiDict(
        [
            ("method", ISSUE),
            ("X-Api-Key", TENANT_KEY),
            ("Idempotency-Key", "first"),
            ("Idempotency-Key", "second"),
        ]
    )
    response = await client.post(SERVICES, json=issue_body(), headers=headers)
    problem = await response.json(content_type=None)
    assert 400 == response.status
    assert PROBLEM + "invalid-idempotency-key" == problem["type"]
    assert [] == upstream.seen
    assert 0 == stored_submissions(tmp_path)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False)],
)
def test_admin_listener_loopback_check(host: str, loopback: bool) -> None:
    from gateway.app import _loopback

    assert loopback == _loopback(host)


async def test_idempotency_key_rule_is_for_submissions(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """A read carrying a key the submit path would refuse is forwarded as before."""
    response, _ = await post_operation(
        client, QUERY, json={"serialNos": ["1"]}, headers={"Idempotency-Key": "a b"}
    )
    assert 200 == response.status
    assert 1 == len(upstream.seen)
