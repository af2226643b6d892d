"""Property (hypothesis): whatever a client sends on the submit path, the gateway answers
without a 5xx, does not crash, and stores and sends nothing for input it refuses.

The real `client_app` (classification, intake, a SQLite store in tmp) in front of a fake
platform that counts what reaches it and always answers success, so no 5xx can be the
platform's. Bounded by `max_examples` (about ten seconds); the number of generated cases is
printed (`-s`) and recorded as the test's `hypothesis_cases` property.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import client_app, open_gateway
from gateway.config import parse_config
from tests.unit.edge.test_proxy import (
    ISSUE,
    QUERY,
    SERVICES,
    TENANT_KEY,
    FakeUpstream,
    GatewayClient,
    config_for,
)

MAX_EXAMPLES = 1000
T = TypeVar("T")

# --- what a client may send ------------------------------------------------------------------

ODD_TEXT = st.text(
    st.characters(codec=None, exclude_categories=()),  # any code point, surrogates included
    max_size=40,
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ODD_TEXT
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ODD_TEXT, inner, max_size=5),
    max_leaves=30,
)


def _dump(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def issue_documents(draw: st.DrawFn) -> bytes:
    """Mostly-valid issue bodies: the order number and details anything."""
    order: dict[str, Any] = {"orderNo": draw(SCALARS | DOCUMENTS)}
    order.update(draw(st.dictionaries(ODD_TEXT, DOCUMENTS, max_size=3)))
    return _dump({"order": order})


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    levels = draw(st.integers(1, 6000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    closed = draw(st.booleans())
    return (opener * levels + "0" + (closer * levels if closed else "")).encode()


@st.composite
def wide(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 200_000))
    element = draw(st.sampled_from(["0", "[]", "{}", '""']))
    return ("[" + ",".join([element] * count) + "]").encode()


BODIES = st.one_of(
    issue_documents(),
    DOCUMENTS.map(_dump),
    nested(),
    wide(),
    st.binary(max_size=300),
    st.sampled_from(
        [b"", b"NaN", b"1" * 5000, b'{"order": {"orderNo": 1e999}}', b"\xef\xbb\xbf{}"]
    ),
    ODD_TEXT.map(lambda text: text.encode("utf-16", "surrogatepass")),
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x17F, exclude_characters="\x7f"),
    max_size=140,
)
# Mostly the tenant's key and the issue operation, so most cases reach the submit path.
METHODS = st.sampled_from([ISSUE] * 6 + [QUERY, "nuonuo.Unknown.op", ""]) | HEADER_TEXT
KEYS = st.sampled_from([TENANT_KEY] * 8 + [None, "wrong-key", ""])
CONTENT_TYPES = st.none() | st.sampled_from(
    ["application/json", "application/json; charset=utf-16", "text/plain", "multipart/form-data"]
)
IDEMPOTENCY_KEYS = st.none() | HEADER_TEXT | st.text(st.sampled_from("abc-_~!"), max_size=200)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    headers: dict[str, str] = {"method": draw(METHODS)}
    for name, value in (
        ("X-Api-Key", draw(KEYS)),
        ("Content-Type", draw(CONTENT_TYPES)),
        ("Idempotency-Key", draw(IDEMPOTENCY_KEYS)),
    ):
        if value is not None:
            headers[name] = value
    return headers, draw(BODIES)


# --- the property --------------------------------------------------------------------------


def stored(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM submission").fetchone()[0])


def test_hostile_requests_never_get_a_5xx_and_refused_ones_are_not_stored_or_sent(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    loop = asyncio.new_event_loop()

    def run(coroutine: Awaitable[T]) -> T:
        return loop.run_until_complete(coroutine)

    upstream = FakeUpstream()
    upstream_app = web.Application(client_max_size=8 * 1024 * 1024)
    upstream_app.router.add_route("*", "/{tail:.*}", upstream.handle)
    upstream_server = TestServer(upstream_app, host="127.0.0.1")
    stack = AsyncExitStack()

    async def start() -> GatewayClient:
        await upstream_server.start_server()
        stack.push_async_callback(upstream_server.close)
        upstream.url = str(upstream_server.make_url("")).rstrip("/") + "/base"
        raw = config_for(upstream.url, tmp_path, limits={"max_body_bytes": 2 * 1024 * 1024})
        config = parse_config(raw, {"TENANT_KEY": TENANT_KEY})
        gateway = await stack.enter_async_context(open_gateway(config))
        client = TestClient(TestServer(client_app(gateway), host="127.0.0.1"))
        await client.start_server()
        stack.push_async_callback(client.close)
        return client

    cases = 0
    statuses: dict[int, int] = {}

    async def send(headers: dict[str, str], body: bytes) -> tuple[int, str, str]:
        response = await client.post(SERVICES, data=body, headers=headers)
        text = await response.text(errors="replace")
        return response.status, response.content_type, text

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def property_holds(request: tuple[dict[str, str], bytes]) -> None:
        nonlocal cases
        cases += 1
        headers, body = request
        sent_before, stored_before = len(upstream.seen), stored(tmp_path / "gw.db")
        status, content_type, text = run(send(headers, body))
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (status, text)
        if status >= 400:
            assert "application/problem+json" == content_type, text
            assert sent_before == len(upstream.seen), text
            assert stored_before == stored(tmp_path / "gw.db"), text

    try:
        client = run(start())
        property_holds()
    finally:
        run(stack.aclose())
        loop.close()
    print(f"\nhypothesis: {cases} generated requests; statuses {sorted(statuses.items())}")
    record_property("hypothesis_cases", cases)
    assert cases >= MAX_EXAMPLES // 2


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"a":' * 5000 + b"0" + b"}" * 5000])
async def test_classification_survives_deep_bodies(body: bytes) -> None:
    """The classifier alone: a body rule on a deep document is a 400, never a RecursionError."""
    from gateway.config import OperationConfig
    from gateway.errors import BadRequest
    from gateway.operations import Classifier, RequestBody

    rule = OperationConfig.model_validate(
        {"name": "x", "kind": "read", "match": {"body": [{"pointer": "/a"}]}}
    )
    classifier = Classifier.from_config([rule], unmatched="passthrough")
    with pytest.raises(BadRequest):
        classifier.classify("POST", "/", {}, RequestBody(body))
