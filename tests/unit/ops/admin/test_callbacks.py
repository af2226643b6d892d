"""`/admin/v1/callbacks…`: on-call sees each callback event and sends one again (audited)."""

from __future__ import annotations

from gateway.app import Gateway
from gateway.outbox.submissions import SubmissionState
from tests.unit.ops.admin.conftest import OPERATOR, VIEWER, AdminClient, problem, seed


async def test_events_are_listed_and_a_replay_is_pending_again_and_audited(
    client: AdminClient, gateway: Gateway
) -> None:
    dead = await seed(gateway, "CB-1", SubmissionState.DEAD)
    listed = await client.get(
        "/admin/v1/callbacks", params={"submission_id": dead.id}, headers=VIEWER
    )
    assert 200 == listed.status
    [event] = (await listed.json())["items"]
    assert ("submission.dead", "demo") == (event["type"], event["tenant"])
    replayed = await client.post(
        f"/admin/v1/callbacks/{event['id']}/replay",
        json={"reason": "receiver fixed"},
        headers=OPERATOR,
    )
    assert 200 == replayed.status, await replayed.text()
    assert "pending" == (await replayed.json())["state"]
    entries, _ = await gateway.store.audit_log(limit=10, cursor=None)
    assert ("callback-replay", "receiver fixed", {"event": event["id"]}) == (
        entries[0].action,
        entries[0].reason,
        entries[0].details,
    )


async def test_a_viewer_cannot_replay_and_unknown_events_or_states_are_refused(
    client: AdminClient, gateway: Gateway
) -> None:
    await seed(gateway, "CB-2", SubmissionState.DEAD)
    forbidden = await client.post("/admin/v1/callbacks/evt_1/replay", headers=VIEWER)
    assert 403 == forbidden.status
    missing = await client.post("/admin/v1/callbacks/evt_999999/replay", headers=OPERATOR)
    assert (404, "urn:invoice-gateway:problem:not-found") == (
        missing.status,
        (await problem(missing))["type"],
    )
    bad_state = await client.get("/admin/v1/callbacks?state=lost", headers=VIEWER)
    assert 400 == bad_state.status
    assert "known: pending" in (await problem(bad_state))["detail"]
