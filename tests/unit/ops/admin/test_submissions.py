"""Finding submissions (filters, pages) and acting on one (replay, requeue, discard, force-resend,
edit), through the admin API against a real store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.errors import StoreError
from gateway.outbox.submissions import SubmissionState
from tests.unit.ops.admin.conftest import (
    OPERATOR,
    VIEWER,
    AdminClient,
    Platform,
    problem,
    seed,
)

S = SubmissionState


async def listed(client: AdminClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/admin/v1/submissions", params=params, headers=VIEWER)
    assert 200 == response.status, await response.text()
    body = await response.json()
    assert isinstance(body, dict)
    return body


async def keys(client: AdminClient, **params: Any) -> list[str]:
    return [item["business_key"] for item in (await listed(client, **params))["items"]]


async def audit(client: AdminClient) -> list[dict[str, Any]]:
    response = await client.get("/admin/v1/audit", headers=OPERATOR)
    items = (await response.json())["items"]
    assert isinstance(items, list)
    return items


@pytest.fixture
async def mixed(gateway: Gateway) -> float:
    """Six submissions of two tenants in several states, an hour apart; returns the first's time."""
    start = float(int(gateway.clock.wall()) - 6 * 3600)  # whole seconds: exact in ISO 8601
    plan = [
        ("SO-100-A", S.DEAD, "demo", "http_5xx"),
        ("SO-101-B", S.DEAD, "acme", "timeout"),
        ("SO-102-C", S.FAILED, "demo", "permanent"),
        ("SO-103-D", S.QUEUED, "demo", None),
        ("SO-104-E", S.DELIVERED, "acme", None),
        ("XX-105-F", S.UNKNOWN, "demo", "connection_lost"),
    ]
    for i, (key, state, tenant, error_class) in enumerate(plan):
        await seed(gateway, key, state, tenant=tenant, at=start + i * 3600, error_class=error_class)
    return start


async def test_list_is_newest_first_with_on_call_fields(client: AdminClient, mixed: float) -> None:
    """Without filters: everything, newest first, each with tenant, key and maybe_sent."""
    body = await listed(client)
    assert ["XX-105-F", "SO-104-E", "SO-103-D", "SO-102-C", "SO-101-B", "SO-100-A"] == [
        i["business_key"] for i in body["items"]
    ]
    first = body["items"][0]
    assert ("demo", "XX-105-F", False, "unknown") == (
        first["tenant"],
        first["idempotency_key"],
        first["maybe_sent"],
        first["status"],
    )
    assert body["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"state": "dead"}, ["SO-101-B", "SO-100-A"]),
        ({"state": "dead,failed"}, ["SO-102-C", "SO-101-B", "SO-100-A"]),
        ({"tenant": "acme"}, ["SO-104-E", "SO-101-B"]),
        ({"operation": "nuonuo.OpeMplatform.requestBillingNew", "state": "queued"}, ["SO-103-D"]),
        ({"operation": "other.operation"}, []),
        ({"error_class": "timeout"}, ["SO-101-B"]),
        ({"q": "10"}, ["XX-105-F", "SO-104-E", "SO-103-D", "SO-102-C", "SO-101-B", "SO-100-A"]),
        ({"q": "SO-10"}, ["SO-104-E", "SO-103-D", "SO-102-C", "SO-101-B", "SO-100-A"]),
        ({"q": "102"}, ["SO-102-C"]),
        ({"state": "dead", "tenant": "demo"}, ["SO-100-A"]),
    ],
)
async def test_filters(
    client: AdminClient, mixed: float, params: dict[str, str], expected: list[str]
) -> None:
    """State (comma-separated), tenant, operation, error class and key substring narrow the list."""
    assert expected == await keys(client, **params)


async def test_state_may_repeat(client: AdminClient, mixed: float) -> None:
    """`state` given twice means either."""
    response = await client.get("/admin/v1/submissions?state=dead&state=unknown", headers=VIEWER)
    items = (await response.json())["items"]
    assert ["XX-105-F", "SO-101-B", "SO-100-A"] == [i["business_key"] for i in items]


async def test_accepted_between_takes_unix_seconds_and_iso(
    client: AdminClient, mixed: float
) -> None:
    """accepted_after is inclusive, accepted_before exclusive; unix seconds or ISO 8601."""
    from datetime import UTC, datetime

    after, before = mixed + 3600, mixed + 3 * 3600
    expected = ["SO-102-C", "SO-101-B"]
    assert expected == await keys(client, accepted_after=str(after), accepted_before=str(before))
    iso = datetime.fromtimestamp(after, UTC).isoformat().replace("+00:00", "Z")
    assert expected == await keys(client, accepted_after=iso, accepted_before=str(before))


async def test_count_matches_the_list(client: AdminClient, mixed: float) -> None:
    """`/submissions/count` counts what the same filter lists."""
    response = await client.get(
        "/admin/v1/submissions/count", params={"state": "dead,unknown"}, headers=VIEWER
    )
    assert {"count": 3} == await response.json()


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"state": "stuck"}, "state"),
        ({"accepted_after": "yesterday"}, "accepted_after"),
        ({"accepted_after": "nan"}, "accepted_after"),
        ({"accepted_after": "200", "accepted_before": "100"}, "accepted_before"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"tenant": " "}, "tenant"),
        ({"status": "dead"}, "status"),
    ],
)
async def test_bad_filters_are_400_naming_the_parameter(
    client: AdminClient, params: dict[str, str], parameter: str
) -> None:
    """A bad value or an unknown parameter is a 400 whose `parameter` names it."""
    response = await client.get("/admin/v1/submissions", params=params, headers=VIEWER)
    assert 400 == response.status
    body = await problem(response)
    assert parameter == body["parameter"]
    assert parameter in body["detail"]


async def test_unknown_parameter_suggests_the_right_one(client: AdminClient) -> None:
    """A misspelt filter says what was probably meant."""
    response = await client.get("/admin/v1/submissions?tenat=demo", headers=VIEWER)
    assert "did you mean 'tenant'?" in (await problem(response))["detail"]


async def test_pages_cover_everything_once(client: AdminClient, gateway: Gateway) -> None:
    """Following next_cursor visits every submission exactly once, newest first."""
    start = gateway.clock.wall() - 100
    for i in range(7):
        await seed(gateway, f"PAGE-{i}", S.DEAD, at=start + i)
    seen: list[str] = []
    sizes: list[int] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        body = await listed(client, **params)
        sizes.append(len(body["items"]))
        seen += [item["business_key"] for item in body["items"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert [3, 3, 1] == sizes
    assert [f"PAGE-{i}" for i in reversed(range(7))] == seen


async def test_show_one_in_full(client: AdminClient, gateway: Gateway) -> None:
    """One submission: the summary plus payload, headers, result and response."""
    row = await seed(gateway, "SO-SHOW", S.DEAD)
    response = await client.get(f"/admin/v1/submissions/{row.id}", headers=OPERATOR)
    body = await response.json()
    assert row.id == body["submission_id"]
    assert "SO-SHOW" == body["payload"]["order"]["orderNo"]
    assert ["method", "nuonuo.OpeMplatform.requestBillingNew"] in body["headers"]
    assert (None, None) == (body["result"], body["response"])


async def test_show_unknown_is_404(client: AdminClient) -> None:
    """An id that does not exist is a 404 problem."""
    response = await client.get("/admin/v1/submissions/sub_nope", headers=VIEWER)
    assert 404 == response.status
    assert (await problem(response))["type"].endswith(":not-found")


# -- actions ----------------------------------------------------------------------------------


async def test_replay_dead_queues_it_and_audits(client: AdminClient, gateway: Gateway) -> None:
    """Replay answers the updated summary and records who replayed what, and why."""
    row = await seed(gateway, "SO-R", S.DEAD)
    response = await client.post(
        f"/admin/v1/submissions/{row.id}/replay", json={"reason": "platform back"}, headers=OPERATOR
    )
    assert 200 == response.status
    assert ("queued", 0) == ((body := await response.json())["status"], body["attempts"])
    [entry] = await audit(client)
    assert ("alice", "operator", "replay", [row.id], "platform back") == (
        entry["actor"],
        entry["role"],
        entry["action"],
        entry["submission_ids"],
        entry["reason"],
    )


async def test_replay_needs_no_body(client: AdminClient, gateway: Gateway) -> None:
    """The reason is optional for a replay; an empty body is fine."""
    row = await seed(gateway, "SO-R", S.FAILED)
    response = await client.post(f"/admin/v1/submissions/{row.id}/replay", headers=OPERATOR)
    assert 200 == response.status


@pytest.mark.parametrize("state", [S.DELIVERED, S.DISCARDED])
async def test_replay_of_a_final_submission_is_409(
    client: AdminClient, gateway: Gateway, state: SubmissionState
) -> None:
    """Delivered and discarded submissions are not replayed: 409, nothing audited."""
    row = await seed(gateway, "SO-F", state)
    response = await client.post(f"/admin/v1/submissions/{row.id}/replay", headers=OPERATOR)
    assert 409 == response.status
    assert state.value in (await problem(response))["detail"]
    assert [] == await audit(client)


async def test_replay_unknown_id_is_404(client: AdminClient) -> None:
    """Replaying an id that does not exist is a 404."""
    response = await client.post("/admin/v1/submissions/sub_nope/replay", headers=OPERATOR)
    assert 404 == response.status


async def test_requeue_is_for_dead_only(client: AdminClient, gateway: Gateway) -> None:
    """Requeue gives a dead submission a fresh start; on anything else it is 409."""
    dead = await seed(gateway, "SO-D", S.DEAD)
    failed = await seed(gateway, "SO-F", S.FAILED)
    ok = await client.post(f"/admin/v1/submissions/{dead.id}/requeue", headers=OPERATOR)
    refused = await client.post(f"/admin/v1/submissions/{failed.id}/requeue", headers=OPERATOR)
    assert (200, "queued") == (ok.status, (await ok.json())["status"])
    assert 409 == refused.status
    assert "only dead" in (await problem(refused))["detail"]


@pytest.mark.parametrize("body", [None, {}, {"reason": ""}, {"reason": "   "}])
async def test_discard_needs_a_reason(
    client: AdminClient, gateway: Gateway, body: dict[str, str] | None
) -> None:
    """Without a reason a discard is 400 and the submission is unchanged."""
    row = await seed(gateway, "SO-X", S.DEAD)
    response = await client.post(
        f"/admin/v1/submissions/{row.id}/discard", json=body, headers=OPERATOR
    )
    assert 400 == response.status
    assert "reason is required" in (await problem(response))["detail"]
    stored = await gateway.store.get(row.id)
    assert stored is not None
    assert S.DEAD == stored.state


async def test_discarded_never_reaches_the_platform(
    client: AdminClient, gateway: Gateway, platform: Platform
) -> None:
    """A discarded submission stays put when delivery resumes; its neighbour is delivered."""
    discard = await seed(gateway, "SO-DISCARD", S.QUEUED)
    keep = await seed(gateway, "SO-KEEP", S.QUEUED)
    response = await client.post(
        f"/admin/v1/submissions/{discard.id}/discard",
        json={"reason": "customer cancelled the order"},
        headers=OPERATOR,
    )
    assert ("discarded", 200) == ((await response.json())["status"], response.status)
    assert 200 == (await client.post("/admin/v1/dispatcher/resume", headers=OPERATOR)).status
    await wait_for_state(gateway, keep.id, S.DELIVERED)
    assert ["SO-KEEP"] == platform.orders
    stored = await gateway.store.get(discard.id)
    assert stored is not None
    assert S.DISCARDED == stored.state


async def wait_for_state(gateway: Gateway, submission_id: str, state: SubmissionState) -> None:
    async def reached() -> None:
        while True:
            row = await gateway.store.get(submission_id)
            if row is not None and row.state is state:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(reached(), timeout=10)


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({"reason": "customer asked"}, None),
        ({"reason": "customer asked", "confirm": False}, None),
        ({"reason": "customer asked", "confirm": "yes"}, "confirm"),
        ({"reason": "customer asked", "confirmed": True}, "confirmed"),
    ],
)
async def test_force_resend_refuses_without_confirmation(
    client: AdminClient, gateway: Gateway, body: dict[str, Any], parameter: str | None
) -> None:
    """Without `confirm: true` a force-resend is 400 and the submission stays delivered."""
    row = await seed(gateway, "SO-FR", S.DELIVERED)
    response = await client.post(
        f"/admin/v1/submissions/{row.id}/force-resend", json=body, headers=OPERATOR
    )
    assert 400 == response.status
    answer = await problem(response)
    assert parameter == answer.get("parameter")
    stored = await gateway.store.get(row.id)
    assert stored is not None
    assert S.DELIVERED == stored.state


async def test_force_resend_with_confirmation(client: AdminClient, gateway: Gateway) -> None:
    """Confirmed and with a reason, a delivered submission is queued to be sent again."""
    row = await seed(gateway, "SO-FR", S.DELIVERED)
    response = await client.post(
        f"/admin/v1/submissions/{row.id}/force-resend",
        json={"reason": "platform lost the invoice", "confirm": True},
        headers=OPERATOR,
    )
    assert (200, "queued") == (response.status, (await response.json())["status"])
    assert "force-resend" == (await audit(client))[0]["action"]


async def test_force_resend_is_for_delivered_only(client: AdminClient, gateway: Gateway) -> None:
    """A dead submission is replayed, not force-resent: 409."""
    row = await seed(gateway, "SO-FR", S.DEAD)
    response = await client.post(
        f"/admin/v1/submissions/{row.id}/force-resend",
        json={"reason": "r", "confirm": True},
        headers=OPERATOR,
    )
    assert 409 == response.status


async def test_edit_changes_the_payload_and_audits_before_after(
    client: AdminClient, gateway: Gateway
) -> None:
    """PATCH payload sets one field; the audit entry holds the pointer, before and after."""
    row = await seed(gateway, "SO-E", S.FAILED, body=b'{"order":{"orderNo":"SO-E","buyerName":""}}')
    response = await client.patch(
        f"/admin/v1/submissions/{row.id}/payload",
        json={"pointer": "/order/buyerName", "value": "北京示例", "reason": "name was empty"},
        headers=OPERATOR,
    )
    assert (200, "failed") == (response.status, (await response.json())["status"])
    shown = await (await client.get(f"/admin/v1/submissions/{row.id}", headers=OPERATOR)).json()
    assert {"orderNo": "SO-E", "buyerName": "北京示例"} == shown["payload"]["order"]
    [entry] = await audit(client)
    assert ("edit", "name was empty") == (entry["action"], entry["reason"])
    assert {"pointer": "/order/buyerName", "before": "", "after": "北京示例"}.items() <= entry[
        "details"
    ].items()


@pytest.mark.parametrize(
    ("body", "status", "parameter"),
    [
        ({"value": "x", "reason": "r"}, 400, "pointer"),
        ({"pointer": "/order/buyerName", "reason": "r"}, 400, "value"),
        ({"pointer": "/order/buyerName", "value": "x"}, 400, None),
        ({"pointer": "order/buyerName", "value": "x", "reason": "r"}, 400, None),
        ({"pointer": "/nothing/here", "value": "x", "reason": "r"}, 400, None),
        ({"pointer": "/order/orderNo", "value": "SO-Z", "reason": "r"}, 409, None),
        ({"pointer": 7, "value": "x", "reason": "r"}, 400, "pointer"),
    ],
)
async def test_edit_refusals(
    client: AdminClient,
    gateway: Gateway,
    body: dict[str, Any],
    status: int,
    parameter: str | None,
) -> None:
    """Pointer and value are required, a reason too; the business key cannot be edited."""
    row = await seed(gateway, "SO-E", S.FAILED)
    response = await client.patch(
        f"/admin/v1/submissions/{row.id}/payload", json=body, headers=OPERATOR
    )
    assert status == response.status
    assert parameter == (await problem(response)).get("parameter")
    assert [] == await audit(client)


async def test_edit_of_a_delivered_submission_is_409(client: AdminClient, gateway: Gateway) -> None:
    """A delivered submission cannot be edited: 409."""
    row = await seed(gateway, "SO-E", S.DELIVERED)
    response = await client.patch(
        f"/admin/v1/submissions/{row.id}/payload",
        json={"pointer": "/order/buyerName", "value": "x", "reason": "r"},
        headers=OPERATOR,
    )
    assert 409 == response.status


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
async def test_body_must_be_a_json_object(
    client: AdminClient, gateway: Gateway, raw: bytes
) -> None:
    """A body that is not a JSON object is a 400."""
    row = await seed(gateway, "SO-B", S.DEAD)
    response = await client.post(
        f"/admin/v1/submissions/{row.id}/replay",
        data=raw,
        headers={**OPERATOR, "Content-Type": "application/json"},
    )
    assert 400 == response.status
    await problem(response)


async def test_store_failure_is_503(
    client: AdminClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store cannot be read the answer is 503 store-unavailable with Retry-After."""

    async def broken(*_args: Any, **_kwargs: Any) -> None:
        raise StoreError("disk I/O error")

    monkeypatch.setattr(gateway.store, "query", broken)
    response = await client.get("/admin/v1/submissions", headers=VIEWER)
    assert 503 == response.status
    assert "5" == response.headers["Retry-After"]
    assert (await problem(response))["type"].endswith(":store-unavailable")
