"""Logs: JSON lines with personal data masked wherever it hides, and the request id on every
line of a request, including the dispatcher's lines for the same submission."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.app import client_app, open_gateway
from gateway.config import parse_config
from gateway.ops.logs import MaskSensitive, configure_logging
from tests.support.processes import free_port

BUYER_TAX = "91110108MA01ABCD2X"
SELLER_TAX = "91110108MA01TEST0X"
ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
TENANT_KEY = "k-demo"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures logging its own way; the next one starts from the defaults."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def configure_json(**kwargs: Any) -> None:
    """`configure_logging` in JSON, with loggers not cached (a cached logger would keep writing
    to this test's captured stderr after it ended)."""
    configure_logging("json", "info", **kwargs)
    structlog.configure(cache_logger_on_first_use=False)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


def masked(event: dict[str, Any], known: tuple[str, ...] = ()) -> dict[str, Any]:
    return dict(MaskSensitive(known)(None, "info", event))


def test_sensitive_fields_are_masked_by_name() -> None:
    """Fields named like personal data are masked whole, at any depth."""
    event = {
        "event": "x",
        "buyer_tax_num": BUYER_TAX,
        "userTax": SELLER_TAX,
        "order": {
            "buyerPhone": "010-62345678",
            "email": "cfo@example.com",
            "buyerAddress": "北京市海淀区中关村大街1号",
            "bankAccount": "6222020200112233445",
            "lines": [{"buyerTel": "13812345678"}],
        },
    }
    assert {
        "event": "x",
        "buyer_tax_num": "9111**********CD2X",
        "userTax": "9111**********ST0X",
        "order": {
            "buyerPhone": "010-****5678",
            "email": "cfo@*******.com",
            "buyerAddress": "北京市海*****大街1号",
            "bankAccount": "6222***********3445",
            "lines": [{"buyerTel": "13*******78"}],
        },
    } == masked(event)


def test_personal_data_inside_text_is_masked_by_shape() -> None:
    """Credit codes, legacy tax numbers, bank accounts, phones and e-mails are masked inside
    any text: the message, other fields, nested lists."""
    event = {
        "event": f"buyer {BUYER_TAX} rejected",
        "detail": "call 13812345678 or 010-62345678, mail zhang.san@example.com.cn",
        "path": "/open/v1/company/110108123456789/profile",
        "notes": ["account 6222020200112233445", ("tuple", "91110108MA01ABCD2X")],
        "remark": "联系电话13912345678",
    }
    assert {
        "event": "buyer 9111**********CD2X rejected",
        "detail": "call 13*******78 or 010-****5678, mail zhan****************m.cn",
        "path": "/open/v1/company/1101*******6789/profile",
        "notes": ["account 6222***********3445", ["tuple", "9111**********CD2X"]],
        "remark": "联系电话13*******78",
    } == masked(event)


def test_known_values_are_masked_whatever_their_shape() -> None:
    """Configured secrets (and the seller's tax number) are masked wherever they appear."""
    event = {"event": "token call failed: client_secret=s3cret-Value-x9 rejected"}
    assert {"event": "token call failed: client_secret=s3cr*******e-x9 rejected"} == masked(
        event, known=("s3cret-Value-x9",)
    )


def test_identifiers_are_left_alone() -> None:
    """The gateway's own ids, order numbers, times and numbers are not mistaken for personal
    data."""
    event = {
        "event": "delivered",
        "request_id": "4f1c2a9be0d84c77a1b2c3d4e5f60718",
        "submission_id": "sub_018c3f2a9b1e4d5c6b7a8f9e0d1c2b3a4f5e6d7c",
        "order_no": "SO-3f9a1c2b4d5e6f70",
        "timestamp": "2026-11-27T10:00:00.123456Z",
        "attempt": 3,
        "latency_ms": 12.5,
        "upstream": "http://127.0.0.1:8080",
        "owner": "host-1:4242:9f8e7d6c:dispatcher",
    }
    assert event == masked(event)


def test_json_lines_are_masked_with_the_request_id_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through `configure_logging`: a structlog line and a traceback are masked, and values bound
    in contextvars are on every line."""
    configure_json(sensitive_values=[SELLER_TAX])
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        log.info("issuing", buyer_tax_num=BUYER_TAX, seller=f"userTax {SELLER_TAX}")
        try:
            raise ValueError(f"buyer {BUYER_TAX} unknown")
        except ValueError:
            log.exception("failed")
    first, second = lines(capsys)
    assert ("req-1", "req-1") == (first["request_id"], second["request_id"])
    assert ("9111**********CD2X", "userTax 9111**********ST0X") == (
        first["buyer_tax_num"],
        first["seller"],
    )
    assert "ValueError: buyer 9111**********CD2X unknown" in second["exception"]
    assert BUYER_TAX not in json.dumps([first, second])


def test_stdlib_lines_are_masked_too(capsys: pytest.CaptureFixture[str]) -> None:
    """Lines from the standard library (aiohttp, asyncio) go through the same chain: JSON with
    the logger's name, masked, the traceback included, no bridge internals."""
    configure_json()
    with structlog.contextvars.bound_contextvars(request_id="req-2"):
        try:
            raise ConnectionError(f"peer sent {BUYER_TAX}")
        except ConnectionError:
            logging.getLogger("aiohttp.server").exception("Error handling request 13812345678")
    [line] = lines(capsys)
    assert "Error handling request 13*******78" == line["event"]
    assert ("aiohttp.server", "error", "req-2") == (
        line["logger"],
        line["level"],
        line["request_id"],
    )
    assert "ConnectionError: peer sent 9111**********CD2X" in line["exception"]
    assert {"_record", "_from_structlog"}.isdisjoint(line)


async def test_request_id_reaches_the_dispatcher_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A submission queued while the platform refuses connections: the proxy's lines and the
    dispatcher's delivery lines for it carry the request id its client got."""
    configure_json()
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "store_url": f"sqlite:///{tmp_path / 'gw.db'}",
        "tenants": [{"id": "demo", "api_key": {"env": "TENANT_KEY"}}],
        "upstream": {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout": "1s"},
        "resilience": {
            "defaults": {"submit": {"deadline": "1s", "attempts": 1}},
            "breaker": {"failure_threshold": 50},
        },
        "outbox": {"backoff": {"base": "50ms", "cap": "50ms"}},
        "operations": [
            {
                "name": ISSUE,
                "kind": "submit",
                "match": {"method": "POST", "path": "/services", "headers": {"method": ISSUE}},
                "business_key": "/order/orderNo",
            }
        ],
    }
    async with open_gateway(parse_config(raw, {"TENANT_KEY": TENANT_KEY})) as gateway:
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(client_app(gateway), host="127.0.0.1")
        )
        await client.start_server()
        try:
            body = {"order": {"orderNo": "A-1", "buyerTaxNum": BUYER_TAX}}
            response = await client.post(
                "/services", json=body, headers={"method": ISSUE, "X-Api-Key": TENANT_KEY}
            )
            assert 202 == response.status
            request_id = response.headers["X-Request-Id"]
            submission_id = (await response.json())["submission_id"]
            for _ in range(200):
                if gateway.dispatcher.stats.requeued >= 1:
                    break
                await asyncio.sleep(0.01)
        finally:
            await client.close()
    logged = lines(capsys)
    [access] = [line for line in logged if line["event"] == "request"]
    assert request_id == access["request_id"]
    deliveries = [line for line in logged if line.get("submission_id") == submission_id]
    assert deliveries
    assert {request_id} == {line["request_id"] for line in deliveries}
    assert any(line["event"].startswith("requeued") for line in deliveries)
    assert BUYER_TAX not in json.dumps(logged)


@given(millis=st.integers(0, 2**48 - 1), random=st.binary(min_size=16, max_size=16))
@example(millis=0x01A24D361615, random=bytes.fromhex("cd13100037700ddc54ed00000000aaaa"))
@settings(max_examples=2000, deadline=None)
def test_no_gateway_id_is_ever_masked(millis: int, random: bytes) -> None:
    """Submission ids and request ids are lower-case hex: a run of digits inside one can look
    like a phone number (`…cd13100037700dd…`), yet masking it would leave on-call unable to find
    the submission in the log."""
    submission_id = f"sub_{millis:012x}{random[:10].hex()}"
    request_id = random.hex()
    event = {
        "event": f"delivered {submission_id}",
        "submission_id": submission_id,
        "request_id": request_id,
    }
    assert event == masked(event)
