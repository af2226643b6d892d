"""The transparent proxy, in process, against a recording fake upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from gateway.app import client_app, open_gateway
from gateway.config import parse_config
from tests.support.processes import free_port

TENANT_KEY = "k-demo"
ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
QUERY = "nuonuo.OpeMplatform.queryInvoiceResult"
SERVICES = "/open/v1/services"
PROBLEM_JSON = "application/problem+json"


@dataclass
class FakeUpstream:
    """Listens at `url`, records what reached it and answers with `reply`."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    reply: Callable[[web.Request], Any] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        if self.reply is not None:
            result = self.reply(request)
            if asyncio.iscoroutine(result):
                result = await result
            assert isinstance(result, web.StreamResponse)
            return result
        return web.json_response(
            {"code": "E0000", "result": {"ok": True}},
            headers={"Connection": "close, X-Hop", "X-Hop": "1", "X-End": "2"},
        )


def config_for(upstream_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "store_url": f"sqlite:///{tmp_path / 'gw.db'}",
        "tenants": [{"id": "demo", "api_key": {"env": "TENANT_KEY"}}],
        "limits": {"max_body_bytes": 2048},
        "upstream": {"url": upstream_url, "timeout": "2s", "connect_timeout": "1s"},
        "operations": [
            {
                "name": ISSUE,
                "kind": "submit",
                "match": {
                    "method": "POST",
                    "path": SERVICES,
                    "headers": {"method": ISSUE},
                },
                "business_key": "/order/orderNo",
            },
            {
                "name": QUERY,
                "kind": "read",
                "match": {
                    "method": "POST",
                    "path": SERVICES,
                    "headers": {"method": QUERY},
                },
            },
        ],
    }
    raw.update(overrides)
    return raw


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
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


GatewayClient = TestClient[web.Request, web.Application]


@asynccontextmanager
async def gateway_client(
    upstream_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[GatewayClient]:
    config = parse_config(
        config_for(upstream_url, tmp_path, **overrides), {"TENANT_KEY": TENANT_KEY}
    )
    async with open_gateway(config) as gateway:
        client = TestClient(TestServer(client_app(gateway), host="127.0.0.1"))
        await client.start_server()
        try:
            yield client
        finally:
            await client.close()


@pytest.fixture
async def client(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[GatewayClient]:
    """A gateway on the default test config, in front of the fake upstream."""
    async with gateway_client(upstream.url, tmp_path) as client:
        yield client


def issue_body(order_no: str = "A-1") -> dict[str, Any]:
    return {"order": {"orderNo": order_no, "buyerName": "北京某公司", "invoiceDetail": [{}]}}


async def post_operation(
    client: GatewayClient,
    operation: str,
    *,
    json: Any = None,
    data: Any = None,
    api_key: str | None = TENANT_KEY,
    headers: dict[str, str] | None = None,
    path: str = SERVICES,
) -> tuple[ClientResponse, Any]:
    """POST `operation` as the tenant (no key if None); the response and its JSON body, if any."""
    sent = {"method": operation} if api_key is None else {"method": operation, "X-Api-Key": api_key}
    response = await client.post(path, json=json, data=data, headers={**sent, **(headers or {})})
    is_json = response.content_type == "application/json" or response.content_type.endswith("+json")
    return response, await response.json(content_type=None) if is_json else None


async def test_forwards_to_base_path_with_end_to_end_headers(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """A request reaches the upstream below its base path; hop-by-hop headers drop both ways."""
    response, answer = await post_operation(
        client,
        ISSUE,
        json=issue_body(),
        path=f"{SERVICES}?x=1",
        headers={
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "X-Request-Id": "req-42",
            "X-Forwarded-For": "198.51.100.7",
        },
    )
    assert (200, "application/json") == (response.status, response.content_type)
    assert {"code": "E0000", "result": {"ok": True}} == answer
    assert "forwarded" == response.headers["X-Gateway-Outcome"]
    assert "req-42" == response.headers["X-Request-Id"]
    assert "2" == response.headers["X-End"]
    assert "X-Hop" not in response.headers
    [seen] = upstream.seen
    assert "/base/open/v1/services?x=1" == seen["path"]
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert "x-client-hop" not in sent
    assert "keep-alive" not in sent
    assert "x-api-key" not in sent
    assert "req-42" == sent["x-request-id"]
    assert "198.51.100.7, 127.0.0.1" == sent["x-forwarded-for"]
    assert sent["forwarded"].startswith("for=127.0.0.1;proto=http")
    assert issue_body() == json.loads(seen["body"])


async def test_request_id_generated_when_absent(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """Without a client X-Request-Id the gateway makes one and sends the same one upstream."""
    response, _ = await post_operation(client, QUERY, json={})
    rid = response.headers["X-Request-Id"]
    assert rid == {k.lower(): v for k, v in upstream.seen[0]["headers"].items()}["x-request-id"]


@pytest.mark.parametrize(
    ("api_key", "detail"),
    [(None, "send your tenant API key"), ("wrong", "not a known tenant key")],
)
async def test_unauthenticated_is_401_and_never_forwarded(
    upstream: FakeUpstream, client: GatewayClient, api_key: str | None, detail: str
) -> None:
    """A missing or wrong tenant key gets 401 problem+json; nothing reaches the upstream."""
    response, problem = await post_operation(client, ISSUE, json=issue_body(), api_key=api_key)
    assert (401, PROBLEM_JSON) == (response.status, response.content_type)
    assert detail in problem["detail"]
    assert "rejected" == response.headers["X-Gateway-Outcome"]
    assert [] == upstream.seen


async def test_malformed_json_submit_is_400(upstream: FakeUpstream, client: GatewayClient) -> None:
    """A submit whose body is not JSON gets 400 problem+json and is not forwarded."""
    response, problem = await post_operation(client, ISSUE, data=b"{not json")
    assert (400, PROBLEM_JSON) == (response.status, response.content_type)
    assert {"type", "title", "status", "detail", "request_id"} <= set(problem)
    assert "urn:invoice-gateway:problem:bad-request" == problem["type"]
    assert response.headers["X-Request-Id"] == problem["request_id"]
    assert [] == upstream.seen


async def test_submit_without_business_key_is_400(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """A submit missing its business key (the order number) is refused before sending."""
    response, problem = await post_operation(client, ISSUE, json={"order": {}})
    assert (400, PROBLEM_JSON) == (response.status, response.content_type)
    assert "/order/orderNo" in problem["detail"]
    assert [] == upstream.seen


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_limit_is_413(
    upstream: FakeUpstream, client: GatewayClient, chunked: bool
) -> None:
    """A body over limits.max_body_bytes gets 413, with or without Content-Length."""
    big = b'{"pad":"' + b"x" * 4096 + b'"}'

    async def stream() -> AsyncIterator[bytes]:
        yield big

    response, problem = await post_operation(client, QUERY, data=stream() if chunked else big)
    assert (413, PROBLEM_JSON) == (response.status, response.content_type)
    assert "2048" in problem["detail"]
    assert [] == upstream.seen


async def test_unknown_method_passes_through_by_default(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """An unknown operation is forwarded once when unmatched=passthrough."""
    response, _ = await post_operation(client, "nuonuo.Unknown.op", json={})
    assert 200 == response.status
    assert 1 == len(upstream.seen)


async def test_unknown_method_rejected_when_configured(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With unmatched=reject an unknown operation gets 404 problem+json, never forwarded."""
    async with gateway_client(upstream.url, tmp_path, unmatched="reject") as client:
        response, problem = await post_operation(client, "nuonuo.Unknown.op", json={})
    assert (404, PROBLEM_JSON) == (response.status, response.content_type)
    assert "urn:invoice-gateway:problem:unknown-operation" == problem["type"]
    assert [] == upstream.seen


@pytest.mark.parametrize("order", [(QUERY, ISSUE), (ISSUE, QUERY), (ISSUE, ISSUE)])
async def test_a_repeated_method_header_is_refused_before_anything_is_sent(
    upstream: FakeUpstream, client: GatewayClient, order: tuple[str, str]
) -> None:
    """Two `method` headers: which one would the platform act on? The gateway could classify by
    one (a read, never kept) while the platform issued by the other, outside the outbox. Refused
    with 400, whatever the two say; nothing is sent or stored."""
    headers = CIMultiDict([("method", order[0]), ("method", order[1]), ("X-Api-Key", TENANT_KEY)])
    response = await client.post(SERVICES, json=issue_body(), headers=headers)
    problem = await response.json(content_type=None)
    assert (400, PROBLEM_JSON) == (response.status, response.content_type)
    assert "the 'method' header more than once" in problem["detail"]
    assert [] == upstream.seen


async def raw_request(port: int, target: str, extra: str = "") -> bytes:
    """Send a request line exactly as given (no client-side normalisation); the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {TENANT_KEY}\r\n{extra}"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return status_line


@pytest.mark.parametrize(
    "target",
    [
        "/open/%2e%2e/%2e%2e/secret",
        "/open/../../secret",
        "/a/..%2fsecret",
        "/open/%252e%252e/x",
        "http://example.com/steal",
    ],
)
async def test_escapes_never_reach_upstream(
    upstream: FakeUpstream, client: GatewayClient, target: str
) -> None:
    """Traversal attempts and absolute-form targets get 400; the upstream sees nothing."""
    status_line = await raw_request(client.port, target)  # type: ignore[arg-type]
    assert b" 400 " in status_line
    assert [] == upstream.seen


async def test_unreachable_upstream_read_is_503_problem(tmp_path: Path) -> None:
    """A read to a refused upstream is retried, then a 503 problem+json says nothing was sent."""
    url = f"http://127.0.0.1:{free_port()}"
    async with gateway_client(url, tmp_path) as client:
        response, problem = await post_operation(client, QUERY, json={})
    assert (503, PROBLEM_JSON) == (response.status, response.content_type)
    assert "urn:invoice-gateway:problem:upstream-unreachable" == problem["type"]
    assert "refused" == problem["failure_class"]
    assert "nothing was sent" in problem["detail"]
    assert "Retry-After" in response.headers


async def test_unreachable_upstream_submit_is_queued(tmp_path: Path) -> None:
    """A submission the platform cannot take is stored and acknowledged with 202 and an id."""
    url = f"http://127.0.0.1:{free_port()}"
    async with gateway_client(url, tmp_path) as client:
        response, accepted = await post_operation(client, ISSUE, json=issue_body())
        assert (202, "queued") == (response.status, response.headers["X-Gateway-Outcome"])
        status = await client.get(accepted["status_url"], headers={"X-Api-Key": TENANT_KEY})
        view = await status.json()
    assert accepted["submission_id"] == view["submission_id"]
    assert "queued" == view["status"]
    assert "refused" == view["last_error_class"]


async def test_refused_clock_on_submit_is_queued_not_failed(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """070601 (the gateway's signature, e.g. its clock) is never the invoice's fault: queued."""
    upstream.reply = lambda _request: web.json_response(
        {"code": "070601", "describe": "signature check failed"}
    )
    response, accepted = await post_operation(client, ISSUE, json=issue_body())
    status = await client.get(accepted["status_url"], headers={"X-Api-Key": TENANT_KEY})
    view = await status.json()
    assert (202, "queued") == (response.status, response.headers["X-Gateway-Outcome"])
    assert ("queued", "clock_skew") == (view["status"], view["last_error_class"])
    assert 1 == len(upstream.seen)  # no auth scheme to correct the clock: no resend


async def test_refused_clock_on_read_says_to_fix_the_clock(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """A read refused for the gateway's signature gets a problem naming the clock and secret."""
    upstream.reply = lambda _request: web.json_response(
        {"code": "070601", "describe": "signature check failed"}
    )
    response, problem = await post_operation(client, QUERY, json={})
    assert 503 == response.status
    assert "urn:invoice-gateway:problem:upstream-clock-skew" == problem["type"]
    assert "clock_skew" == problem["failure_class"]
    assert ("NTP", "secret") == tuple(w for w in ("NTP", "secret") if w in problem["detail"])


async def test_answer_lost_on_submit_is_queued_as_unknown(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A submit whose answer never comes is 202 and `unknown`: reconciled, never resent blindly."""

    async def hang(_request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    upstream.reply = hang
    url = upstream.url
    async with gateway_client(url, tmp_path, upstream={"url": url, "timeout": "300ms"}) as client:
        response, accepted = await post_operation(client, ISSUE, json=issue_body())
        status = await client.get(accepted["status_url"], headers={"X-Api-Key": TENANT_KEY})
        view = await status.json()
    assert 202 == response.status
    assert ("unknown", "timeout") == (view["status"], view["last_error_class"])
    assert 1 == len(upstream.seen)


async def test_truncated_answer_on_read_is_502(
    upstream: FakeUpstream, client: GatewayClient
) -> None:
    """A read whose answer is cut off gets 502 'bad answer'."""

    async def truncate(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"code":')
        assert request.transport is not None
        request.transport.close()
        return response

    upstream.reply = truncate
    response, problem = await post_operation(client, QUERY, json={})
    assert (502, PROBLEM_JSON) == (response.status, response.content_type)
    assert "urn:invoice-gateway:problem:upstream-bad-answer" == problem["type"]


async def test_health_and_ready(client: GatewayClient) -> None:
    """/healthz answers, /readyz reports the store writable; neither needs a tenant key."""
    health = await client.get("/healthz")
    ready = await client.get("/readyz")
    assert 200 == health.status
    assert {"status": "ready", "store": "writable"} == await ready.json()
