"""Tenant keys, per-tenant limits and tenant isolation, on real processes (issue: Security)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.support.harness import Gateway, Simulator
from tests.support.postgres import scratch_database_sync, server_url
from tests.support.processes import (
    OTHER_TENANT_KEY,
    ROOT,
    TENANT_KEY,
    base_env,
    gateway_command,
    http_json,
    wait_until,
)

OPERATOR_TOKEN = "it-tenant-operator-token-0123456789"
PROBLEM = "urn:invoice-gateway:problem:"
TENANTS = [
    {"id": "demo", "api_key": {"env": "GATEWAY_DEMO_API_KEY"}},
    {
        "id": "acme",
        "api_key": {"env": "GATEWAY_ACME_API_KEY"},
        "limits": {"rate": 1, "burst": 2},
    },
    {"id": "beta"},  # managed keys only
]
OVERRIDES: dict[str, Any] = {
    "tenants": TENANTS,
    "admin.tokens": [
        {"name": "oncall-it", "role": "operator", "token": {"env": "IT_TENANT_OPERATOR"}}
    ],
}
ENV = {"IT_TENANT_OPERATOR": OPERATOR_TOKEN}


@pytest.fixture
def gw(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    """A gateway whose tenants are demo, acme (rate-limited) and beta (managed keys only)."""
    with Gateway.start(tmp_path / "gw", simulator.url, overrides=OVERRIDES, env=ENV) as gateway:
        yield gateway


def tenant_cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command("tenant", *args, "--config", str(gw.config_path)),
        env={**base_env(), **ENV},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def new_key(gw: Gateway, command: str, tenant: str, *extra: str) -> dict[str, Any]:
    result = tenant_cli(gw, command, tenant, "--json", *extra)
    assert 0 == result.returncode, result.stderr
    return dict(json.loads(result.stdout))


def read(gw: Gateway, api_key: str | None) -> tuple[int, dict[str, str], Any]:
    return gw.call(QUERY, {"serialNos": ["NOPE"]}, api_key=api_key)


def status_of(gw: Gateway, submission_id: str, api_key: str) -> tuple[int, Any]:
    status, _, body = http_json(
        "GET",
        f"{gw.url}/gateway/v1/submissions/{submission_id}",
        headers={"X-Api-Key": api_key},
    )
    return status, body


def store_bytes(gw: Gateway) -> bytes:
    db = Path(gw.store_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_missing_wrong_rotated_and_revoked_keys(gw: Gateway) -> None:
    """No key and a wrong key are 401; `tenant add` prints a key once and the store holds only
    its hash; after a rotation both keys work; after a revocation only the new one does."""
    for key in (None, "wrong-key", f"igw_{'0' * 12}_{'x' * 43}"):
        status, _, body = read(gw, key)
        assert 401 == status, body
        assert f"{PROBLEM}unauthenticated" == body["type"]

    unknown = tenant_cli(gw, "add", "ghost")
    assert 2 == unknown.returncode
    assert "not in the configuration" in unknown.stderr

    first = new_key(gw, "add", "beta")["api_key"]
    assert first.startswith("igw_")
    # A new key is known at once: the miss makes the gateway read the store again.
    wait_until(lambda: read(gw, first)[0] != 401, timeout=5, what="the new key")
    assert 200 == read(gw, first)[0]

    rotated = new_key(gw, "rotate-key", "beta")
    second = rotated["api_key"]
    assert rotated["previous_key_ids"] == [first.split("_")[1]]
    wait_until(lambda: read(gw, second)[0] == 200, timeout=5, what="the rotated key")
    assert 200 == read(gw, first)[0], "the old key stays valid until revoked"

    listing = tenant_cli(gw, "list", "beta")
    assert 0 == listing.returncode
    assert first not in listing.stdout
    assert second not in listing.stdout

    revoked = tenant_cli(gw, "revoke", "beta", "--key-id", first.split("_")[1])
    assert 0 == revoked.returncode, revoked.stderr
    status, _, body = wait_until(
        lambda: (answer := read(gw, first))[0] == 401 and answer,
        timeout=10,
        interval=0.25,
        what="the revoked key to be refused",
    )
    assert f"{PROBLEM}unauthenticated" == body["type"]
    assert 200 == read(gw, second)[0]

    # The store holds hashes only: neither key, nor its secret part, is in the file's bytes.
    held = store_bytes(gw)
    for key in (first, second):
        assert key.encode() not in held
        assert key.split("_", 2)[2].encode() not in held
    assert b"scrypt$" in held

    # Every action is audited with the OS user and the tenant, never the key.
    status, _, audit = gw.admin("GET", "/audit?limit=50", token=OPERATOR_TOKEN)
    assert 200 == status, audit
    actions = [e for e in audit["items"] if e["action"].startswith("tenant.key.")]
    assert {"tenant.key.add", "tenant.key.rotate", "tenant.key.revoke"} == {
        e["action"] for e in actions
    }
    assert all(e["details"]["tenant"] == "beta" and e["actor"] for e in actions)
    assert first not in json.dumps(audit)
    assert second not in json.dumps(audit)


def test_a_tenant_sees_only_its_own_submissions(gw: Gateway) -> None:
    """Tenant acme cannot read demo's submission (404, as for an unknown id), its use of the
    same idempotency key is its own, and the admin export filters by tenant."""
    key = f"idem-{uuid.uuid4().hex}"
    status, _, answer = gw.call(ISSUE, invoice(), headers={"Idempotency-Key": key})
    assert 200 == status, answer
    status, _, listed = gw.admin("GET", "/submissions?tenant=demo", token=OPERATOR_TOKEN)
    assert 200 == status, listed
    [mine] = listed["items"]
    demo_id = mine["submission_id"]

    assert 200 == status_of(gw, demo_id, TENANT_KEY)[0]
    other_status, other = status_of(gw, demo_id, OTHER_TENANT_KEY)
    unknown_status, unknown = status_of(gw, "sub_" + uuid.uuid4().hex, OTHER_TENANT_KEY)
    assert 404 == other_status == unknown_status
    del other["request_id"], unknown["request_id"]
    assert unknown == other, "another tenant's id looks exactly like an unknown one"

    # The same key from another tenant (another body): its own submission, not a 422 naming
    # demo's submission, not demo's stored answer.
    status, headers, answer = gw.call(
        ISSUE, invoice(), api_key=OTHER_TENANT_KEY, headers={"Idempotency-Key": key}
    )
    assert status in (200, 202), answer
    assert "Idempotent-Replayed" not in headers
    # ...and a replay by demo is still demo's own answer.
    status, _, listed = gw.admin("GET", "/submissions?tenant=acme", token=OPERATOR_TOKEN)
    [theirs] = listed["items"]
    assert theirs["submission_id"] != demo_id
    assert "acme" == theirs["tenant"]

    status, _, exported = http_json(
        "GET",
        f"{gw.admin_url}/admin/v1/export?tenant=acme",
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert 200 == status
    text = exported if isinstance(exported, str) else json.dumps(exported)
    assert theirs["submission_id"] in text
    assert demo_id not in text

    # The access log names the tenant of every request, status reads included.
    output = gw.process.stdout_path.read_text() + gw.process.stderr_path.read_text()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    reads = [e for e in lines if e.get("operation") == "submission-status"]
    assert {"demo", "acme"} <= {e.get("tenant") for e in reads}
    requests = [e for e in lines if e.get("event") == "request" and e.get("status") != 401]
    assert requests
    assert all(e.get("tenant") for e in requests)


def test_one_tenant_over_its_limit_while_another_is_served(gw: Gateway) -> None:
    """acme (1/s, bursts of 2) gets 429 with Retry-After; demo (no limit) is served."""
    answers = [read(gw, OTHER_TENANT_KEY) for _ in range(6)]
    limited = [(headers, body) for status, headers, body in answers if status == 429]
    assert limited, [a[0] for a in answers]
    headers, body = limited[0]
    assert f"{PROBLEM}tenant-rate-limited" == body["type"]
    assert int(headers["Retry-After"]) >= 1
    assert "acme" in body["detail"]
    assert all(read(gw, TENANT_KEY)[0] == 200 for _ in range(6))
    status, _, metrics = http_json("GET", f"{gw.admin_url}/metrics")
    assert 200 == status
    text = metrics if isinstance(metrics, str) else ""
    assert 'gateway_tenant_limited_total{limit="rate",tenant="acme"}' in text


def test_managed_keys_reach_every_replica(tmp_path: Path, simulator: Simulator) -> None:
    """Two replicas on one PostgreSQL store: a key added with the CLI works on both at once; a
    revocation is refused by both within seconds (each re-reads the key rows every 5 s)."""
    server_url()  # outside any event loop, before `scratch_database_sync` runs one
    with scratch_database_sync("tenants") as url:
        overrides = {**OVERRIDES, "store_url": url}
        with (
            Gateway.start(tmp_path / "a", simulator.url, overrides=overrides, env=ENV) as one,
            Gateway.start(tmp_path / "b", simulator.url, overrides=overrides, env=ENV) as two,
        ):
            key = new_key(one, "add", "beta")["api_key"]
            for replica in (one, two):
                wait_until(lambda r=replica: read(r, key)[0] == 200, timeout=5, what="the key")
            # Both replicas have verified (and cached) the key: the revocation must still win.
            assert 0 == tenant_cli(two, "revoke", "beta").returncode
            for replica in (one, two):
                wait_until(
                    lambda r=replica: read(r, key)[0] == 401,
                    timeout=10,
                    interval=0.25,
                    what="the revocation to reach the replica",
                )


def test_admin_api_issues_and_revokes_keys(gw: Gateway) -> None:
    """An operator's admin token makes and revokes managed keys; the audit names the token."""
    status, _, issued = gw.admin("POST", "/tenants/beta/keys", {}, token=OPERATOR_TOKEN)
    assert 201 == status, issued
    key = issued["api_key"]
    wait_until(lambda: read(gw, key)[0] == 200, timeout=5, what="the key from the admin API")
    status, _, listed = gw.admin("GET", "/tenants/keys?tenant=beta", token=OPERATOR_TOKEN)
    assert [issued["key_id"]] == [k["key_id"] for k in listed["keys"] if k["state"] == "active"]
    assert key not in json.dumps(listed)
    assert 404 == gw.admin("POST", "/tenants/ghost/keys", {}, token=OPERATOR_TOKEN)[0]

    path = f"/tenants/beta/keys/{issued['key_id']}/revoke"
    status, _, revoked = gw.admin("POST", path, token=OPERATOR_TOKEN)
    assert 200 == status, revoked
    wait_until(lambda: read(gw, key)[0] == 401, timeout=10, interval=0.25, what="the revocation")
    _, _, audit = gw.admin("GET", "/audit?limit=10", token=OPERATOR_TOKEN)
    actors = {e["actor"] for e in audit["items"] if e["action"].startswith("tenant.key.")}
    assert {"oncall-it"} == actors
