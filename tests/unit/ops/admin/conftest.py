"""An assembled gateway (real SQLite store on tmp_path, dispatcher paused) behind its admin
application, in process, with a recording fake platform."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway, open_gateway
from gateway.config import parse_config
from gateway.ops.admin import admin_app
from gateway.outbox.submissions import (
    AuditEntry,
    NewSubmission,
    Submission,
    SubmissionState,
    Transition,
    fingerprint,
    new_submission_id,
)

ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
OPERATOR_TOKEN = "op-secret-token"
VIEWER_TOKEN = "viewer-secret-token"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
TAX_NUM = "91110108MA01ABCD2X"
ENVIRON = {"TENANT_KEY": "k-demo", "ADMIN_OP": OPERATOR_TOKEN, "ADMIN_VIEW": VIEWER_TOKEN}

AdminClient = TestClient[web.Request, web.Application]


@dataclass
class Platform:
    """A fake platform that answers E0000 and records the order numbers it saw."""

    url: str = ""
    orders: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.orders.append(body["order"]["orderNo"])
        return web.json_response({"code": "E0000", "result": {"invoiceSerialNum": "S-1"}})


def raw_config(upstream_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "store_url": f"sqlite:///{tmp_path / 'gw.db'}",
        "tenants": [{"id": "demo", "api_key": {"env": "TENANT_KEY"}}],
        "upstream": {"url": upstream_url, "timeout": "2s", "connect_timeout": "1s"},
        "admin": {
            "listen": "127.0.0.1:0",
            "tokens": [
                {"name": "alice", "role": "operator", "token": {"env": "ADMIN_OP"}},
                {"name": "victor", "role": "viewer", "token": {"env": "ADMIN_VIEW"}},
            ],
        },
        "outbox": {"dispatcher": {"poll_interval": "50ms"}, "backoff": {"base": "50ms"}},
        "operations": [
            {
                "name": ISSUE,
                "kind": "submit",
                "match": {"method": "POST", "path": "/open/v1/services"},
                "business_key": "/order/orderNo",
                "ordering_key": "/order/orderNo",
            }
        ],
    }
    raw.update(overrides)
    return raw


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    fake = Platform()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()


@pytest.fixture
async def gateway(platform: Platform, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The gateway with its dispatcher paused: seeded rows stay as seeded until a test resumes."""
    config = parse_config(raw_config(platform.url, tmp_path), ENVIRON)
    async with open_gateway(config) as opened:
        opened.dispatcher.pause()
        yield opened


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AdminClient]:
    test_client = TestClient(TestServer(admin_app(gateway), host="127.0.0.1"))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


def order_body(order_no: str, **fields: Any) -> bytes:
    order = {
        "orderNo": order_no,
        "buyerName": "北京示例科技有限公司",
        "buyerTaxNum": TAX_NUM,
        "buyerPhone": "13812345678",
        "invoiceDetail": [{"goodsName": "技术服务费", "price": "100.00"}],
        **fields,
    }
    return json.dumps({"order": order}, ensure_ascii=False).encode()


def new_submission(
    order_no: str, *, tenant: str = "demo", body: bytes | None = None
) -> NewSubmission:
    body = body if body is not None else order_body(order_no)
    return NewSubmission(
        tenant=tenant,
        operation=ISSUE,
        idempotency_key=order_no,
        fingerprint=fingerprint(body),
        business_key=order_no,
        ordering_key=order_no,
        method="POST",
        path="/open/v1/services",
        query=(),
        headers=(("method", ISSUE), ("Content-Type", "application/json")),
        body=body,
        request_id="r-" + order_no,
    )


async def seed(
    gateway: Gateway,
    order_no: str,
    state: SubmissionState = SubmissionState.DEAD,
    *,
    tenant: str = "demo",
    at: float | None = None,
    error_class: str | None = "http_5xx",
    body: bytes | None = None,
) -> Submission:
    """One submission in `state`, accepted at wall time `at`."""
    now = at if at is not None else gateway.clock.wall()
    admission = await gateway.store.admit(
        new_submission(order_no, tenant=tenant, body=body),
        queue=True,
        owner="seed",
        lease_seconds=30,
        now=now,
    )
    row = admission.submission
    if state is SubmissionState.QUEUED:
        return row
    moved = await gateway.store.transition(
        row.id,
        row.fence,
        Transition(state, attempts_delta=3, error_class=error_class, error="seeded"),
        now=now,
    )
    assert moved is not None
    return moved


def stored_row(order_no: str, state: SubmissionState, *, at: float) -> Submission:
    """A submission as the store would hold it, built directly (for bulk loading)."""
    new = new_submission(order_no)
    return Submission.of(
        new,
        id=new_submission_id(at),
        state=state,
        acknowledged=True,
        attempts=3,
        maybe_sent=False,
        last_error_class="http_5xx",
        last_error="seeded",
        response=None,
        result=None,
        created_at=at,
        updated_at=at,
        next_attempt_at=None,
        lease_owner=None,
        lease_expires_at=None,
        fence=1,
        age_from=at,
    )


async def seed_many(gateway: Gateway, count: int, state: SubmissionState) -> list[Submission]:
    """`count` submissions in `state`, loaded in one transaction (the store must be empty)."""
    start = gateway.clock.wall() - count
    rows = [stored_row(f"BULK-{i:05d}", state, at=start + i) for i in range(count)]
    audit = AuditEntry(actor="seed", role="operator", action="seed")
    assert count == await gateway.store.import_rows(rows, audit=audit)
    return rows


async def problem(response: ClientResponse) -> dict[str, Any]:
    assert "application/problem+json" == response.content_type
    body = await response.json(content_type=None)
    assert isinstance(body, dict)
    return body
