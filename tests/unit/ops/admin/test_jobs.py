"""Replay by filter: a dry run counts, a real run is a job with progress that can be cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.outbox.submissions import SubmissionQuery, SubmissionState
from tests.unit.ops.admin.conftest import OPERATOR, VIEWER, AdminClient, problem, seed, seed_many

S = SubmissionState


async def replays(client: AdminClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/admin/v1/replays", json=body, headers=OPERATOR)
    answer = await response.json(content_type=None)
    assert isinstance(answer, dict)
    return response.status, answer


async def job_view(client: AdminClient, url: str) -> dict[str, Any]:
    response = await client.get(url, headers=VIEWER)
    assert 200 == response.status
    view = await response.json()
    assert isinstance(view, dict)
    return view


async def finished(client: AdminClient, url: str) -> dict[str, Any]:
    """Poll the job until it is no longer running."""
    for _ in range(1000):
        view = await job_view(client, url)
        if view["state"] != "running":
            return view
        await asyncio.sleep(0.01)
    raise AssertionError(f"job still running: {view}")


async def last_audit_action(gateway: Gateway, action: str) -> list[str]:
    """Wait until the newest audit entry is `action` (a job records its end just after its state
    changes); every action, oldest first."""
    for _ in range(500):
        entries, _ = await gateway.store.audit_log(limit=100, cursor=None)
        if entries and entries[0].action == action:
            return [e.action for e in reversed(entries)]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {action} at the end of the audit log")


async def every_state(gateway: Gateway) -> None:
    """Two submissions in each state (one of them of another tenant)."""
    for state in S:
        await seed(gateway, f"{state.value}-1", state)
        await seed(gateway, f"{state.value}-2", state, tenant="acme")


async def test_dry_run_counts_and_changes_nothing(client: AdminClient, gateway: Gateway) -> None:
    """A dry run answers the count and leaves every row (and the audit log) as it was."""
    await every_state(gateway)
    status, answer = await replays(client, {"filter": {"state": "dead"}, "dry_run": True})
    assert (200, 2) == (status, answer["count"])
    assert 2 == await gateway.store.count(SubmissionQuery(states=(S.DEAD,)))
    entries, _ = await gateway.store.audit_log(limit=10, cursor=None)
    assert [] == entries


@pytest.mark.parametrize(
    "filter_",
    [
        {},
        {"state": ["dead", "failed"]},
        {"state": "unknown,queued"},
        {"tenant": "acme"},
        {"q": "-1"},
    ],
)
async def test_dry_run_count_is_what_the_run_touches(
    client: AdminClient, gateway: Gateway, filter_: dict[str, Any]
) -> None:
    """For any filter, the real run replays exactly as many submissions as the dry run counted."""
    await every_state(gateway)
    _, dry = await replays(client, {"filter": filter_, "dry_run": True})
    status, started = await replays(client, {"filter": filter_, "reason": "outage over"})
    assert 202 == status
    job = await finished(client, started["status_url"])
    assert ("done", dry["count"], dry["count"], 0) == (
        job["state"],
        job["total"],
        job["done"],
        job["skipped"],
    )
    assert dry["count"] > 0


async def test_a_filter_without_state_means_the_replayable_states(
    client: AdminClient, gateway: Gateway
) -> None:
    """Delivered, discarded and delivering submissions are never part of a bulk replay."""
    await every_state(gateway)
    _, dry = await replays(client, {"filter": {}, "dry_run": True})
    assert (8, ["queued", "unknown", "dead", "failed"]) == (dry["count"], dry["filter"]["state"])


async def test_job_answer_is_202_with_where_to_watch(client: AdminClient, gateway: Gateway) -> None:
    """A real run answers 202 with the job, its status_url and a Location header."""
    await seed(gateway, "SO-1", S.DEAD)
    response = await client.post(
        "/admin/v1/replays", json={"filter": {"state": "dead"}, "reason": "r"}, headers=OPERATOR
    )
    assert 202 == response.status
    answer = await response.json()
    assert answer["status_url"] == f"/admin/v1/jobs/{answer['job_id']}"
    assert answer["status_url"] == response.headers["Location"]
    job = await finished(client, answer["status_url"])
    assert ("replay", "alice", "r", {"state": ["dead"]}) == (
        job["kind"],
        job["actor"],
        job["reason"],
        job["filter"],
    )
    actions = await last_audit_action(gateway, "bulk-replay-done")
    assert ["bulk-replay-started", "replay", "bulk-replay-done"] == actions


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({"filter": {"state": "delivered"}, "dry_run": True}, "filter.state"),
        ({"filter": {"state": ["dead", "discarded"]}, "dry_run": True}, "filter.state"),
        ({"filter": {"state": "nope"}, "dry_run": True}, "filter.state"),
        ({"filter": {"tenants": "acme"}, "dry_run": True}, "filter.tenants"),
        ({"filter": {"accepted_after": "soon"}, "dry_run": True}, "filter.accepted_after"),
        ({"filter": {"accepted_after": True}, "dry_run": True}, "filter.accepted_after"),
        ({"filter": {"tenant": 5}, "dry_run": True}, "filter.tenant"),
        ({"filter": "dead", "dry_run": True}, "filter"),
        ({"filter": {}, "dry_run": "yes"}, "dry_run"),
        ({"filter": {}, "dryrun": True}, "dryrun"),
        ({"filter": {}, "reason": 3}, "reason"),
    ],
)
async def test_bad_replay_requests_name_the_field(
    client: AdminClient, gateway: Gateway, body: dict[str, Any], parameter: str
) -> None:
    """A bad filter or flag is a 400 naming it; no job is started."""
    status, answer = await replays(client, body)
    assert (400, parameter) == (status, answer.get("parameter")), answer
    assert {} == gateway.oncall.jobs


async def test_a_real_run_needs_a_reason(client: AdminClient, gateway: Gateway) -> None:
    """Bulk replays are audited with their reason: without one, 400."""
    status, answer = await replays(client, {"filter": {"state": "dead"}})
    assert 400 == status
    assert "reason is required" in answer["detail"]


async def test_filter_times_in_the_body(client: AdminClient, gateway: Gateway) -> None:
    """accepted_after / accepted_before in a body may be numbers or ISO strings."""
    now = float(int(gateway.clock.wall()))
    await seed(gateway, "OLD", S.DEAD, at=now - 7200)
    await seed(gateway, "NEW", S.DEAD, at=now)
    for after in (now - 60, "1970-01-01T00:00:00Z"):
        _, answer = await replays(
            client,
            {"filter": {"accepted_after": after, "accepted_before": now + 1}, "dry_run": True},
        )
        assert (1 if after == now - 60 else 2) == answer["count"]


async def test_unknown_job_is_404(client: AdminClient) -> None:
    """Jobs that do not exist are 404, to look at and to cancel."""
    assert 404 == (await client.get("/admin/v1/jobs/job_nope", headers=VIEWER)).status
    response = await client.post("/admin/v1/jobs/job_nope/cancel", headers=OPERATOR)
    assert 404 == response.status
    await problem(response)


async def test_bulk_replay_shows_progress_and_can_be_cancelled(
    client: AdminClient, gateway: Gateway
) -> None:
    """2,000 dead rows: the job's `done` grows, a cancel stops it part-way, and exactly the rows
    it counted as done were replayed."""
    await seed_many(gateway, 2000, S.DEAD)
    status, started = await replays(
        client, {"filter": {"state": "dead"}, "reason": "platform back"}
    )
    assert 202 == status
    url = started["status_url"]
    progress: list[int] = []
    while not progress or progress[-1] == 0:
        view = await job_view(client, url)
        assert "running" == view["state"], view
        progress.append(view["done"])
        await asyncio.sleep(0.01)
    cancel = await client.post(f"{url}/cancel", headers=OPERATOR)
    assert 200 == cancel.status
    job = await finished(client, url)
    assert "cancelled" == job["state"]
    assert 2000 == job["total"]
    assert 0 < job["done"] < job["total"]
    assert job["done"] == await gateway.store.count(SubmissionQuery(states=(S.QUEUED,)))
    assert 2000 - job["done"] == await gateway.store.count(SubmissionQuery(states=(S.DEAD,)))
    await last_audit_action(gateway, "bulk-replay-cancelled")


async def test_cancelling_a_finished_job_changes_nothing(
    client: AdminClient, gateway: Gateway
) -> None:
    """A cancel after the job is done answers the job as it ended."""
    await seed(gateway, "SO-1", S.DEAD)
    _, started = await replays(client, {"filter": {}, "reason": "r"})
    await finished(client, started["status_url"])
    response = await client.post(f"{started['status_url']}/cancel", headers=OPERATOR)
    assert ("done", 1) == ((view := await response.json())["state"], view["done"])
