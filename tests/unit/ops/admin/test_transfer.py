"""Export (JSON Lines, streamed; masked unless asked for unmasked, with a reason, audited) and
import into an empty store: a lossless round trip; and the audit log, listed and exported."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway, open_gateway
from gateway.config import parse_config
from gateway.errors import StoreError
from gateway.ops.admin import admin_app
from gateway.outbox.submissions import (
    StoredResponse,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)
from tests.unit.ops.admin.conftest import (
    ENVIRON,
    OPERATOR,
    TAX_NUM,
    VIEWER,
    AdminClient,
    Platform,
    problem,
    raw_config,
    seed,
)

S = SubmissionState
NDJSON = {**OPERATOR, "Content-Type": "application/x-ndjson"}


@pytest.fixture
async def empty(platform: Platform, tmp_path: Path) -> AsyncIterator[tuple[Gateway, AdminClient]]:
    """A second gateway with a store of its own, empty."""
    raw = raw_config(platform.url, tmp_path / "second")
    (tmp_path / "second").mkdir()
    async with open_gateway(parse_config(raw, ENVIRON)) as gateway:
        gateway.dispatcher.pause()
        client = TestClient(TestServer(admin_app(gateway), host="127.0.0.1"))
        await client.start_server()
        try:
            yield gateway, client
        finally:
            await client.close()


async def varied(gateway: Gateway) -> list[Submission]:
    """Submissions that exercise every field: states, a stored answer, a result, raw bytes."""
    rows = [
        await seed(gateway, "SO-DEAD", S.DEAD),
        await seed(gateway, "SO-QUEUED", S.QUEUED, tenant="acme"),
        await seed(gateway, "SO-RAW", S.FAILED, body=b"\x00\xffnot json \xe4\xb8\xad"),
    ]
    delivered = await seed(gateway, "SO-DONE", S.DELIVERING)
    answer = StoredResponse(
        status=200,
        headers=(("Content-Type", "application/json"),),
        body=json.dumps({"code": "E0000", "result": {"invoiceSerialNum": "S-9"}}).encode(),
    )
    moved = await gateway.store.transition(
        delivered.id,
        delivered.fence,
        Transition(S.DELIVERED, response=answer, result={"lookup": {"serialNo": "S-9"}}),
        now=gateway.clock.wall(),
    )
    assert moved is not None
    return [*rows, moved]


async def export(
    client: AdminClient, *, masked: bool = False, **params: str
) -> tuple[dict[str, str], bytes]:
    """An export; unmasked (a backup) unless `masked`."""
    if not masked:
        params = {"unmasked": "1", "reason": "backup before the upgrade", **params}
    response = await client.get("/admin/v1/export", params=params, headers=OPERATOR)
    assert 200 == response.status, await response.text()
    return dict(response.headers), await response.read()


async def test_export_is_chunked_json_lines_of_every_field(
    client: AdminClient, gateway: Gateway
) -> None:
    """One record per line, oldest first, every field, the body in base64; streamed chunked."""
    rows = await varied(gateway)
    headers, body = await export(client)
    assert headers["Content-Type"].startswith("application/x-ndjson")
    assert "chunked" == headers["Transfer-Encoding"]
    records = [json.loads(line) for line in body.splitlines()]
    assert [r.id for r in rows] == [record["id"] for record in records]
    assert [r.to_record() for r in rows] == records


async def test_export_takes_the_list_filters(client: AdminClient, gateway: Gateway) -> None:
    """The export holds only what matches the filter."""
    await varied(gateway)
    _, body = await export(client, state="dead,queued", tenant="acme")
    assert ["SO-QUEUED"] == [json.loads(line)["business_key"] for line in body.splitlines()]


async def test_export_of_nothing_is_empty(client: AdminClient) -> None:
    """An export that matches nothing is an empty body."""
    _, body = await export(client, state="dead")
    assert b"" == body


async def test_export_bad_filter_is_400(client: AdminClient) -> None:
    """The export takes the list filters only (no paging): anything else is a 400."""
    response = await client.get("/admin/v1/export?limit=5", headers=OPERATOR)
    assert ("limit", 400) == ((await problem(response))["parameter"], response.status)


async def test_export_then_import_round_trips_losslessly(
    client: AdminClient, gateway: Gateway, empty: tuple[Gateway, AdminClient]
) -> None:
    """Every submission comes back equal, field by field, in a fresh store."""
    rows = await varied(gateway)
    _, body = await export(client)
    target, target_client = empty
    response = await target_client.post("/admin/v1/import", data=body, headers=NDJSON)
    assert (200, {"imported": len(rows)}) == (response.status, await response.json())
    for row in rows:
        assert row == await target.store.get(row.id)
    _, again = await export(target_client)
    assert body == again
    entries, _ = await target.store.audit_log(limit=5, cursor=None)
    assert [
        ("alice", "export-unmasked", {"filter": {}}),
        ("alice", "import", {"rows": 4}),
    ] == [(e.actor, e.action, e.details) for e in entries]


async def test_export_is_masked_unless_asked_for_unmasked(
    client: AdminClient, gateway: Gateway
) -> None:
    """By default each line is the submission as a viewer sees it: tax number masked, no body
    in base64, marked masked; nothing is audited."""
    rows = await varied(gateway)
    _, body = await export(client, masked=True)
    assert TAX_NUM.encode() not in body
    lines = [json.loads(line) for line in body.splitlines()]
    assert [r.id for r in rows] == [line["submission_id"] for line in lines]
    assert all(line["masked"] is True and "body" not in line for line in lines)
    order = lines[0]["payload"]["order"]
    assert TAX_NUM[:4] + "*" * 10 + TAX_NUM[-4:] == order["buyerTaxNum"]
    entries, _ = await gateway.store.audit_log(limit=5, cursor=None)
    assert "export-unmasked" not in [e.action for e in entries]


async def test_unmasked_export_needs_a_reason_and_is_audited(
    client: AdminClient, gateway: Gateway
) -> None:
    """unmasked=1 without a reason is a 400; with one, every field whole, and an audit entry
    naming the operator, the reason and the filter."""
    await varied(gateway)
    response = await client.get("/admin/v1/export?unmasked=1", headers=OPERATOR)
    assert ("reason", 400) == ((await problem(response))["parameter"], response.status)
    response = await client.get("/admin/v1/export?unmasked=maybe", headers=OPERATOR)
    assert ("unmasked", 400) == ((await problem(response))["parameter"], response.status)
    _, body = await export(client, state="dead")
    (record,) = [json.loads(line) for line in body.splitlines()]
    assert TAX_NUM.encode() in base64.b64decode(record["body"])
    entries, _ = await gateway.store.audit_log(limit=5, cursor=None)
    audited = [(e.actor, e.reason, e.details) for e in entries if e.action == "export-unmasked"]
    assert [("alice", "backup before the upgrade", {"filter": {"state": ["dead"]}})] == audited


async def test_a_masked_export_cannot_be_imported(
    client: AdminClient, gateway: Gateway, empty: tuple[Gateway, AdminClient]
) -> None:
    """A masked export is no backup: the import refuses it (400), saying how to take one."""
    await varied(gateway)
    _, body = await export(client, masked=True)
    target, target_client = empty
    response = await target_client.post("/admin/v1/import", data=body, headers=NDJSON)
    assert 400 == response.status
    assert "masked export" in (await problem(response))["detail"]
    assert 0 == await target.oncall.count(SubmissionQuery())


async def test_import_into_a_store_with_submissions_is_409(
    client: AdminClient, gateway: Gateway
) -> None:
    """Import only fills an empty store; otherwise 409 and nothing changes."""
    await seed(gateway, "SO-1", S.DEAD)
    _, body = await export(client)
    response = await client.post("/admin/v1/import", data=body, headers=NDJSON)
    assert 409 == response.status
    assert "empty store" in (await problem(response))["detail"]
    assert 1 == await gateway.oncall.count(SubmissionQuery())


@pytest.mark.parametrize(
    "lines",
    [
        [b"{not json"],
        [b'{"id": "sub_1"}'],
        [b"[]"],
    ],
)
async def test_import_of_a_bad_line_is_400_and_loads_nothing(
    client: AdminClient, gateway: Gateway, lines: list[bytes], empty: tuple[Gateway, AdminClient]
) -> None:
    """A line that is not a submission record refuses the whole import, naming the line."""
    rows = await varied(gateway)
    _, body = await export(client)
    target, target_client = empty
    payload = body + b"\n".join(lines) + b"\n"
    response = await target_client.post("/admin/v1/import", data=payload, headers=NDJSON)
    assert 400 == response.status
    assert f"line {len(rows) + 1}" in (await problem(response))["detail"]
    assert await target.store.get(rows[0].id) is None


async def test_import_of_nothing_is_zero(empty: tuple[Gateway, AdminClient]) -> None:
    """An import of blank lines imports nothing."""
    _, target_client = empty
    response = await target_client.post("/admin/v1/import", data=b"\n\n", headers=NDJSON)
    assert {"imported": 0} == await response.json()


# -- audit log ---------------------------------------------------------------------------------


async def make_history(client: AdminClient, gateway: Gateway, count: int) -> list[str]:
    """`count` audited pauses with numbered reasons; the reasons, oldest first."""
    reasons = [f"drill {i}" for i in range(count)]
    for reason in reasons:
        response = await client.post(
            "/admin/v1/dispatcher/pause", json={"reason": reason}, headers=OPERATOR
        )
        assert 200 == response.status
    return reasons


async def test_audit_pages_newest_first(client: AdminClient, gateway: Gateway) -> None:
    """The audit log pages with a cursor, newest first, each entry once."""
    reasons = await make_history(client, gateway, 5)
    seen: list[str] = []
    url: str | None = "/admin/v1/audit?limit=2"
    while url is not None:
        body = await (await client.get(url, headers=VIEWER)).json()
        assert len(body["items"]) <= 2
        seen += [item["reason"] for item in body["items"]]
        cursor = body["next_cursor"]
        url = f"/admin/v1/audit?limit=2&cursor={cursor}" if cursor else None
    assert list(reversed(reasons)) == seen


async def test_audit_entry_says_who_what_when_why(client: AdminClient, gateway: Gateway) -> None:
    """An entry has the token's name and role, the action, the time, the ids and the reason."""
    row = await seed(gateway, "SO-1", S.DEAD)
    await client.post(
        f"/admin/v1/submissions/{row.id}/discard", json={"reason": "duplicate"}, headers=OPERATOR
    )
    [entry] = (await (await client.get("/admin/v1/audit", headers=VIEWER)).json())["items"]
    assert {
        "actor": "alice",
        "role": "operator",
        "action": "discard",
        "submission_ids": [row.id],
        "reason": "duplicate",
    }.items() <= entry.items()
    assert entry["at"].endswith("Z")
    assert entry["seq"] >= 1


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("limit=0", "limit"), ("cursor=zzz", "cursor"), ("state=dead", "state")],
)
async def test_audit_bad_parameters(client: AdminClient, query: str, parameter: str) -> None:
    """Bad paging or an unknown parameter on the audit log is a 400 naming it."""
    response = await client.get(f"/admin/v1/audit?{query}", headers=VIEWER)
    assert (400, parameter) == (response.status, (await problem(response))["parameter"])


async def test_audit_export_is_the_whole_log(client: AdminClient, gateway: Gateway) -> None:
    """The export has every entry, newest first, as JSON Lines, beyond one page."""
    reasons = await make_history(client, gateway, 3)
    response = await client.get("/admin/v1/audit/export", headers=VIEWER)
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in (await response.read()).splitlines()]
    assert list(reversed(reasons)) == [line["reason"] for line in lines]


async def test_audit_export_masks_edits_for_viewers(client: AdminClient, gateway: Gateway) -> None:
    """A viewer's audit export does not reveal an edited tax number."""
    row = await seed(gateway, "SO-1", S.FAILED)
    edit: dict[str, Any] = {"pointer": "/order/buyerTaxNum", "value": "X" * 18, "reason": "fix"}
    await client.patch(f"/admin/v1/submissions/{row.id}/payload", json=edit, headers=OPERATOR)
    viewer = await (await client.get("/admin/v1/audit/export", headers=VIEWER)).read()
    operator = await (await client.get("/admin/v1/audit/export", headers=OPERATOR)).read()
    assert TAX_NUM.encode() not in viewer
    assert TAX_NUM.encode() in operator


async def test_an_export_cut_off_by_the_store_is_visibly_broken(
    client: AdminClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the store fails mid-export the connection drops: the client sees a broken download,
    never a short file that looks complete."""
    rows = await varied(gateway)

    async def failing(_query: SubmissionQuery, **_view: Any) -> AsyncIterator[bytes]:
        yield json.dumps(rows[0].to_record()).encode() + b"\n" + b" " * (70 * 1024) + b"\n"
        raise StoreError("disk I/O error")

    monkeypatch.setattr(gateway.oncall, "export", failing)
    response = await client.get("/admin/v1/export", headers=OPERATOR)
    assert 200 == response.status
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_a_store_failure_before_the_first_line_is_503(
    client: AdminClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing sent yet: the export answers a plain 503 problem."""

    async def failing(_query: SubmissionQuery, **_view: Any) -> AsyncIterator[bytes]:
        raise StoreError("disk I/O error")
        yield b""  # pragma: no cover — makes this an async generator

    monkeypatch.setattr(gateway.oncall, "export", failing)
    response = await client.get("/admin/v1/export", headers=OPERATOR)
    assert 503 == response.status
    await problem(response)
