"""Dispatcher pause/resume and circuit control: each changes the gateway and is audited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.errors import StoreError
from gateway.outbox.submissions import SubmissionState
from gateway.resilience.breaker import CircuitState
from tests.unit.ops.admin.conftest import OPERATOR, VIEWER, AdminClient, Platform, problem, seed


async def audit(gateway: Gateway) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    entries, _ = await gateway.store.audit_log(limit=50, cursor=None)
    return [(e.actor, e.action, e.reason, e.details or {}) for e in reversed(entries)]


async def test_dispatcher_state(client: AdminClient, gateway: Gateway) -> None:
    """GET dispatcher: paused, in flight and the delivery counters."""
    response = await client.get("/admin/v1/dispatcher", headers=VIEWER)
    body = await response.json()
    assert (True, 0) == (body["paused"], body["in_flight"])
    assert {"claimed", "delivered", "failed", "dead"} <= set(body["stats"])


async def test_pause_and_resume_are_audited(client: AdminClient, gateway: Gateway) -> None:
    """Resume then pause: the dispatcher follows, the audit log has both with their reasons."""
    resumed = await client.post(
        "/admin/v1/dispatcher/resume", json={"reason": "platform back"}, headers=OPERATOR
    )
    assert (200, False) == (resumed.status, (await resumed.json())["paused"])
    assert not gateway.dispatcher.paused
    paused = await client.post(
        "/admin/v1/dispatcher/pause", json={"reason": "platform down"}, headers=OPERATOR
    )
    assert (200, True) == (paused.status, (await paused.json())["paused"])
    assert gateway.dispatcher.paused
    assert [
        ("alice", "dispatcher-resume", "platform back", {"was_paused": True}),
        ("alice", "dispatcher-pause", "platform down", {"was_paused": False}),
    ] == await audit(gateway)


async def test_paused_dispatcher_delivers_nothing_until_resumed(
    client: AdminClient, gateway: Gateway, platform: Platform
) -> None:
    """While paused a queued submission waits; after resume it is delivered."""
    row = await seed(gateway, "SO-P", SubmissionState.QUEUED)
    gateway.dispatcher.wake()
    await asyncio.sleep(0.3)
    assert [] == platform.orders
    await client.post("/admin/v1/dispatcher/resume", headers=OPERATOR)
    for _ in range(500):
        stored = await gateway.store.get(row.id)
        if stored is not None and stored.state is SubmissionState.DELIVERED:
            break
        await asyncio.sleep(0.02)
    assert ["SO-P"] == platform.orders


async def test_circuit_state(client: AdminClient) -> None:
    """GET circuit: each breaker's snapshot and the upstream's health."""
    body = await (await client.get("/admin/v1/circuit", headers=VIEWER)).json()
    assert ["closed"] == [b["state"] for b in body["breakers"]]
    assert "status" in body["health"]


@pytest.mark.parametrize(
    ("action", "state"),
    [
        ("open", CircuitState.FORCED_OPEN),
        ("close", CircuitState.FORCED_CLOSED),
        ("reset", CircuitState.CLOSED),
    ],
)
async def test_circuit_control_is_applied_and_audited(
    client: AdminClient, gateway: Gateway, action: str, state: CircuitState
) -> None:
    """open / close / reset drive every breaker and are audited with the state before."""
    response = await client.post(
        f"/admin/v1/circuit/{action}", json={"reason": "drill"}, headers=OPERATOR
    )
    assert 200 == response.status
    assert [state.value] == [b["state"] for b in (await response.json())["breakers"]]
    assert [state] == [b.state for b in gateway.breakers.all()]
    [(actor, recorded, reason, details)] = await audit(gateway)
    assert ("alice", f"circuit-{action}", "drill") == (actor, recorded, reason)
    assert {"upstream": "closed"} == details["before"]


async def test_forced_open_then_reset(client: AdminClient, gateway: Gateway) -> None:
    """A forced-open circuit says who forced it and why, and reset ends it."""
    await client.post("/admin/v1/circuit/open", json={"reason": "maintenance"}, headers=OPERATOR)
    [breaker] = (await (await client.get("/admin/v1/circuit", headers=VIEWER)).json())["breakers"]
    assert "alice: maintenance" in breaker["reason"]
    await client.post("/admin/v1/circuit/reset", headers=OPERATOR)
    assert [CircuitState.CLOSED] == [b.state for b in gateway.breakers.all()]


async def test_nothing_changes_when_it_cannot_be_audited(
    client: AdminClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the audit entry cannot be written the answer is 503 and the circuit is untouched."""

    async def broken(*_args: Any, **_kwargs: Any) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(gateway.store, "record_audit", broken)
    response = await client.post("/admin/v1/circuit/open", json={"reason": "x"}, headers=OPERATOR)
    assert 503 == response.status
    await problem(response)
    assert [CircuitState.CLOSED] == [b.state for b in gateway.breakers.all()]


async def test_unknown_body_field_is_400(client: AdminClient) -> None:
    """A misspelt field is refused rather than ignored."""
    response = await client.post(
        "/admin/v1/dispatcher/pause", json={"reasn": "typo"}, headers=OPERATOR
    )
    assert 400 == response.status
    assert "reasn" == (await problem(response))["parameter"]
