"""The admin API of a real gateway process, in front of the real simulator (issue #5)."""

from __future__ import annotations

import concurrent.futures
import copy
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.integration.test_outbox import OVERRIDES
from tests.support.harness import Gateway, Simulator
from tests.support.processes import TENANT_KEY, http_json, wait_until

OPERATOR_TOKEN = "it-operator-token-0123456789"
VIEWER_TOKEN = "it-viewer-token-0123456789"
ADMIN = {
    "admin.tokens": [
        {"name": "oncall-alice", "role": "operator", "token": {"env": "IT_ADMIN_OPERATOR"}},
        {"name": "dashboard", "role": "viewer", "token": {"env": "IT_ADMIN_VIEWER"}},
    ]
}
ADMIN_ENV = {"IT_ADMIN_OPERATOR": OPERATOR_TOKEN, "IT_ADMIN_VIEWER": VIEWER_TOKEN}
#: The read deadline of the test profile (OVERRIDES): a live read must be answered within it.
READ_DEADLINE = 3.0


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    """A simulator with the platform's duplicate detection."""
    simulator = Simulator.start(tmp_path / "sim", "--issue-delay", "0.2")
    try:
        yield simulator
    finally:
        simulator.process.stop()


def start(tmp_path: Path, sim: Simulator, name: str = "gw", **extra: Any) -> Gateway:
    # A deep copy: writing the config sets dotted keys inside the nested dicts it is given, which
    # would otherwise change the shared profile for every later test.
    overrides = copy.deepcopy({**OVERRIDES, **ADMIN, **extra})
    return Gateway.start(tmp_path / name, sim.url, overrides=overrides, env=ADMIN_ENV)


@pytest.fixture
def gw(tmp_path: Path, sim: Simulator) -> Iterator[Gateway]:
    """A gateway that gives up after one failed delivery (so `dead` is cheap to make)."""
    gateway = start(tmp_path, sim, **{"outbox.max_attempts": 1})
    try:
        yield gateway
    finally:
        gateway.process.stop()


@pytest.fixture
def patient_gw(tmp_path: Path, sim: Simulator) -> Iterator[Gateway]:
    """A gateway with the profile's usual attempts (a replayed `failed` submission keeps its
    attempt count, so with max_attempts 1 it would die again at once)."""
    gateway = start(tmp_path, sim)
    try:
        yield gateway
    finally:
        gateway.process.stop()


def op(gw: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, answer = gw.admin(method, path, body, token=OPERATOR_TOKEN)
    return status, answer


def find(gw: Gateway, **filters: str) -> list[dict[str, Any]]:
    """Submissions matching `filters`, as a viewer finds them."""
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    status, _, answer = gw.admin("GET", f"/submissions?{query}&limit=500", token=VIEWER_TOKEN)
    assert 200 == status, answer
    items = answer["items"]
    assert isinstance(items, list)
    return items


def make_dead(gw: Gateway, sim: Simulator, bodies: list[dict[str, Any]]) -> list[str]:
    """Submit `bodies` while the platform answers 503: each ends `dead` (max_attempts 1)."""
    sim.fault(kind="http_error", status=503, operations=[ISSUE])
    # Every failing call must reach the platform, not be short-circuited by an open breaker.
    assert 200 == op(gw, "POST", "/circuit/close", {"reason": "make dead rows"})[0]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda body: gw.call(ISSUE, body), bodies))
    assert {202} == {status for status, _, _ in answers}, answers[:3]
    ids = {answer["submission_id"] for _, _, answer in answers}
    prefix = bodies[0]["order"]["orderNo"][:12]
    wait_until(
        lambda: {s["submission_id"] for s in find(gw, state="dead", q=prefix)} >= ids,
        timeout=60,
        interval=0.2,
        what=f"{len(ids)} submissions to be dead",
    )
    sim.clear_faults()
    assert 200 == op(gw, "POST", "/circuit/reset", {"reason": "platform back"})[0]
    return [answer["submission_id"] for _, _, answer in answers]


def batch(count: int) -> list[dict[str, Any]]:
    """Invoices whose order numbers share a prefix (`q` finds them all)."""
    prefix = f"IT-{uuid.uuid4().hex[:8]}-"
    return [invoice(f"{prefix}{i:04d}") for i in range(count)]


def wait_state(gw: Gateway, submission_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status, _, view = gw.admin("GET", f"/submissions/{submission_id}", token=VIEWER_TOKEN)
        assert 200 == status, view
        return view if view["status"] == state else None

    view = wait_until(reached, timeout=timeout, interval=0.2, what=f"{submission_id} {state}")
    assert isinstance(view, dict)
    return view


def test_every_route_refuses_missing_wrong_and_underprivileged_tokens(gw: Gateway) -> None:
    """For each route in the running gateway's own OpenAPI document: no token and a wrong token
    are 401 with a bearer challenge; a viewer on an operator route is 403."""
    status, _, document = gw.admin("GET", "/openapi.json", token=VIEWER_TOKEN)
    assert 200 == status
    routes = [
        (method.upper(), path.removeprefix("/admin/v1"), operation["x-required-role"])
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(routes) >= 20
    for method, template, role in routes:
        path = (
            template.replace("{id}", "sub_doesnotexist")
            .replace("{tenant}", "demo")
            .replace("{key_id}", "000000000000")
        )
        for token in (None, "wrong-token", OPERATOR_TOKEN + "x"):
            status, headers, problem = gw.admin(method, path, token=token)
            assert 401 == status, (method, path, token)
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert problem["type"].endswith(":unauthenticated")
        status, _, problem = gw.admin(method, path, token=VIEWER_TOKEN)
        if role == "operator":
            assert (403, "forbidden") == (status, problem["type"].rsplit(":", 1)[1]), path
        else:
            assert status not in (401, 403), (method, path, problem)


def test_dead_submission_found_by_filter_is_replayed_and_delivered_once(
    gw: Gateway, sim: Simulator
) -> None:
    """A submission that died during an outage is found by filter, replayed, delivered once."""
    [body] = batch(1)
    order_no = body["order"]["orderNo"]
    [submission_id] = make_dead(gw, sim, [body])
    [found] = find(gw, state="dead", q=order_no, tenant="demo", operation=ISSUE)
    assert submission_id == found["submission_id"]
    status, replayed = op(gw, "POST", f"/submissions/{submission_id}/replay", {"reason": "back"})
    # It may have reached the platform before the 503, so it is reconciled rather than resent.
    assert (200, True) == (status, replayed["status"] in ("queued", "unknown"))
    wait_state(gw, submission_id, "delivered")
    ledger = sim.ledger()
    assert 1 == ledger["orders"][order_no]["issued"]
    assert 0 == ledger["totals"]["doubles"]
    status, audit = op(gw, "GET", "/audit?limit=5")
    assert ("replay", "oncall-alice", [submission_id]) == (
        audit["items"][0]["action"],
        audit["items"][0]["actor"],
        audit["items"][0]["submission_ids"],
    )


def test_discard_needs_a_reason_and_never_reaches_the_platform(gw: Gateway, sim: Simulator) -> None:
    """Discard without a reason is 400; a discarded row stays unsent while its neighbour is
    replayed and delivered."""
    bodies = batch(2)
    discard_id, replay_id = make_dead(gw, sim, bodies)
    status, problem = op(gw, "POST", f"/submissions/{discard_id}/discard", {})
    assert 400 == status
    assert "reason is required" in problem["detail"]
    status, discarded = op(
        gw, "POST", f"/submissions/{discard_id}/discard", {"reason": "customer cancelled"}
    )
    assert (200, "discarded") == (status, discarded["status"])
    status, _ = op(gw, "POST", f"/submissions/{replay_id}/replay", {"reason": "back"})
    assert 200 == status
    wait_state(gw, replay_id, "delivered")
    status, _ = op(gw, "POST", f"/submissions/{discard_id}/replay", {"reason": "oops"})
    assert 409 == status  # a discarded submission cannot be brought back by a replay
    orders = sim.ledger()["orders"]
    assert bodies[0]["order"]["orderNo"] not in orders
    assert 1 == orders[bodies[1]["order"]["orderNo"]]["issued"]


def test_force_resend_refuses_without_confirmation(patient_gw: Gateway, sim: Simulator) -> None:
    """A delivered submission is not resent unless the operator confirms; nothing is sent."""
    body = invoice()
    sim.fault(kind="http_error", status=503, operations=[ISSUE], count=2)
    status, _, answer = patient_gw.call(ISSUE, body)  # queued, then delivered by the dispatcher
    assert 202 == status, answer
    sim.clear_faults()
    submission_id = answer["submission_id"]
    op(patient_gw, "POST", f"/submissions/{submission_id}/replay", {"reason": "now"})
    wait_state(patient_gw, submission_id, "delivered")
    for request in ({"reason": "lost"}, {"reason": "lost", "confirm": False}):
        status, problem = op(
            patient_gw, "POST", f"/submissions/{submission_id}/force-resend", request
        )
        assert 400 == status
        assert "confirm" in problem["detail"]
    assert "delivered" == wait_state(patient_gw, submission_id, "delivered")["status"]
    assert 1 == sim.ledger()["orders"][body["order"]["orderNo"]]["issued"]


def test_edit_before_replay_fixes_a_failed_submission(patient_gw: Gateway, sim: Simulator) -> None:
    """An empty buyer name makes the platform refuse (0201, failed); on-call fills it in,
    replays, and the audit log shows the field before and after."""
    body = invoice()
    body["order"]["buyerName"] = ""
    order_no = body["order"]["orderNo"]
    status, _, answer = patient_gw.call(ISSUE, body)
    assert (200, "0201") == (status, answer["code"])
    [failed] = find(patient_gw, state="failed", q=order_no)
    submission_id = failed["submission_id"]
    status, _ = op(
        patient_gw,
        "PATCH",
        f"/submissions/{submission_id}/payload",
        {"pointer": "/order/buyerName", "value": "北京示例科技有限公司", "reason": "name missing"},
    )
    assert 200 == status
    status, replayed = op(
        patient_gw, "POST", f"/submissions/{submission_id}/replay", {"reason": "fixed"}
    )
    assert (200, "queued") == (status, replayed["status"])
    wait_state(patient_gw, submission_id, "delivered")
    assert 1 == sim.ledger()["orders"][order_no]["issued"]
    _, audit = op(patient_gw, "GET", "/audit?limit=10")
    [edit] = [e for e in audit["items"] if e["action"] == "edit"]
    assert ("/order/buyerName", "", "北京示例科技有限公司", "name missing") == (
        edit["details"]["pointer"],
        edit["details"]["before"],
        edit["details"]["after"],
        edit["reason"],
    )
    _, shown = op(patient_gw, "GET", f"/submissions/{submission_id}")
    assert "北京示例科技有限公司" == shown["payload"]["order"]["buyerName"]


def test_bulk_replay_counts_first_and_live_reads_keep_their_deadline(
    gw: Gateway, sim: Simulator
) -> None:
    """Some hundreds of dead rows: the dry run counts them, the job replays exactly that many
    with visible progress, every one is delivered once, and live reads all get 200 in time."""
    bodies = batch(300)
    ids = make_dead(gw, sim, bodies)
    prefix = bodies[0]["order"]["orderNo"][:12]
    request = {"filter": {"state": "dead", "q": prefix}, "reason": "outage over"}
    status, dry = op(gw, "POST", "/replays", {**request, "dry_run": True})
    assert (200, len(ids)) == (status, dry["count"])

    reads: list[int] = []
    stop = threading.Event()

    def live_reads() -> None:
        while not stop.is_set():
            status, _, _ = http_json(
                "POST",
                f"{gw.url}/open/v1/services",
                {"orderNos": [bodies[0]["order"]["orderNo"]]},
                headers={"method": QUERY, "X-Api-Key": TENANT_KEY},
                timeout=READ_DEADLINE,  # a read slower than its deadline raises and fails the test
            )
            reads.append(status)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        readers = [pool.submit(live_reads) for _ in range(2)]
        try:
            status, headers, started = gw.admin("POST", "/replays", request, token=OPERATOR_TOKEN)
            assert 202 == status, started
            assert started["status_url"] == headers["Location"]
            progress: list[int] = []

            def job_finished() -> dict[str, Any] | None:
                _, _, job = gw.admin(
                    "GET", started["status_url"].removeprefix("/admin/v1"), token=VIEWER_TOKEN
                )
                progress.append(job["done"])
                return job if job["state"] != "running" else None

            job = wait_until(job_finished, timeout=60, interval=0.05, what="the replay job")
            assert ("done", dry["count"], dry["count"], 0) == (
                job["state"],
                job["total"],
                job["done"],
                job["skipped"],
            )
            assert progress == sorted(progress)
            wait_until(
                lambda: len(find(gw, state="delivered", q=prefix)) == len(ids),
                timeout=90,
                interval=0.5,
                what="every replayed submission to be delivered",
            )
        finally:
            stop.set()
            for reader in readers:
                reader.result()
    assert reads, "no live read was made during the bulk replay"
    assert {200} == set(reads)
    ledger = sim.ledger()
    assert [1] * len(bodies) == [ledger["orders"][b["order"]["orderNo"]]["issued"] for b in bodies]
    assert 0 == ledger["totals"]["doubles"]


#: A backup: every field whole, which needs a reason (audited).
UNMASKED_EXPORT = "/export?unmasked=1&reason=move%20to%20the%20new%20host"


def test_export_then_import_into_an_empty_gateway(
    tmp_path: Path, gw: Gateway, sim: Simulator
) -> None:
    """An export from one gateway, imported into another with an empty store, lists the same
    submissions with the same fields."""
    for body in batch(3):
        assert 200 == gw.call(ISSUE, body)[0]
    status, headers, exported = gw.admin("GET", UNMASKED_EXPORT, token=OPERATOR_TOKEN)
    assert 200 == status
    assert headers["Content-Type"].startswith("application/x-ndjson")
    raw = exported.encode() if isinstance(exported, str) else b""
    assert 3 == len(raw.splitlines())
    other = start(tmp_path, sim, name="other")
    try:
        status, _, answer = other.admin(
            "POST",
            "/import",
            raw=raw,
            token=OPERATOR_TOKEN,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert (200, {"imported": 3}) == (status, answer)
        status, _, again = other.admin("GET", UNMASKED_EXPORT, token=OPERATOR_TOKEN)
        assert exported == again
        status, _, refused = other.admin("POST", "/import", raw=raw, token=OPERATOR_TOKEN)
        assert 409 == status, refused
    finally:
        other.process.stop()
