"""The durable outbox end to end: real gateway process, real simulator, on either store.

Which tests run on both stores (`store_url`: a SQLite file, then a scratch PostgreSQL
database): those that prove something the store does, namely admission, idempotency keys,
ordering keys, leases reclaimed and rows reconciled, and the status it counts. The others run
on the embedded SQLite store only, each saying why: those about the embedded store's file
(disk full, its clock rebase after a step), and those that exercise the platform's or the
edge's behaviour, whose store calls a test on both stores already makes (a whole test run
stays within its time: each test on both costs another gateway run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.support.disk import fill, mount_small_fs, unmount
from tests.support.harness import FAST_OUTBOX, Gateway, Simulator
from tests.support.processes import ROOT, TENANT_KEY, http_json, jumped_clock, wait_until

RED = "nuonuo.OpeMplatform.fastInvoiceRed"
FAST_RESILIENCE = {
    "defaults": {
        "read": {"deadline": "3s", "attempts": 2, "backoff": {"base": "20ms", "cap": "100ms"}},
        "submit": {"deadline": "3s", "attempts": 2, "backoff": {"base": "20ms", "cap": "100ms"}},
    },
    "breaker": {"failure_threshold": 3, "reset_timeout": "500ms"},
}
OVERRIDES = {"outbox": FAST_OUTBOX, "resilience": FAST_RESILIENCE, "upstream.timeout": "2s"}


@pytest.fixture
def sim_no_dedupe(tmp_path: Path) -> Iterator[Simulator]:
    """A simulator that issues a repeated order number again: any blind resend shows as a double."""
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2", dedup=False) as sim:
        yield sim


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    """A simulator that, like the platform may, does not refuse a reused order number: the
    gateway's lookup-first reconciliation is what keeps each invoice single."""
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2", dedup=False) as sim:
        yield sim


@pytest.fixture
def sim_dedup(tmp_path: Path) -> Iterator[Simulator]:
    """A simulator with duplicate detection on (what the `resend` strategy relies on)."""
    with Simulator.start(tmp_path / "sim", "--issue-delay", "0.2") as sim:
        yield sim


#: How late the lagging simulator lists an invoice it accepted: below the settle time the
#: harness gives reconcile rules against the simulator (2 s).
LOOKUP_LAG_S = 1.5


@pytest.fixture
def gateway(tmp_path: Path, simulator: Simulator, store_url: str) -> Iterator[Gateway]:
    """The default profile's gateway (as `tests/integration/conftest.py` starts it), on each
    store in turn."""
    with Gateway.start(tmp_path / "gw", simulator.url, overrides={"store_url": store_url}) as gw:
        yield gw


def start_gateway(
    tmp_path: Path, sim: Simulator, store_url: str | None = None, **extra: Any
) -> Gateway:
    """A gateway with fast outbox and resilience settings, on `store_url` (by default a SQLite
    file in its directory)."""
    store = {"store_url": store_url} if store_url is not None else {}
    return Gateway.start(tmp_path / "gw", sim.url, overrides={**OVERRIDES, **store, **extra})


def wait_delivered(gw: Gateway, ids: list[str], timeout: float = 40.0) -> dict[str, dict[str, Any]]:
    """Poll until every submission is delivered; their final views."""
    views: dict[str, dict[str, Any]] = {}

    def all_delivered() -> bool:
        for submission_id in ids:
            if submission_id in views:
                continue
            view = gw.status(submission_id)
            assert view["status"] not in ("failed", "dead", "discarded"), view
            if view["status"] == "delivered":
                views[submission_id] = view
        return len(views) == len(ids)

    wait_until(all_delivered, timeout=timeout, interval=0.2, what=f"{len(ids)} deliveries")
    return views


def serial_of(view: dict[str, Any]) -> str:
    """The invoice serial number a delivered submission recorded (directly or by lookup)."""
    body = view.get("response", {}).get("body", {})
    if isinstance(body, dict) and body.get("code") == "E0000":
        return str(body["result"]["invoiceSerialNum"])
    return str(view["result"]["lookup"]["serialNo"])


def test_outage_queues_then_delivers_each_exactly_once(
    tmp_path: Path, sim_no_dedupe: Simulator, store_url: str
) -> None:
    """Submissions while the platform fails them get 202 ids; after recovery each is issued
    exactly once (those whose 5xx may have been acted on are looked up first)."""
    gw = start_gateway(tmp_path, sim_no_dedupe, store_url)
    try:
        sim_no_dedupe.fault(kind="http_error", status=503, operations=[ISSUE])
        bodies = [invoice() for _ in range(30)]
        ids = []
        for body in bodies:
            status, headers, answer = gw.call(ISSUE, body)
            assert 202 == status, answer
            assert "queued" == headers["X-Gateway-Outcome"]
            assert answer["status_url"].endswith(answer["submission_id"])
            ids.append(answer["submission_id"])
        # Waiting (or being tried by the dispatcher): never delivered while the platform fails.
        assert {gw.status(i)["status"] for i in ids} <= {"queued", "delivering", "unknown"}
        sim_no_dedupe.clear_faults()
        views = wait_delivered(gw, ids)
        ledger = sim_no_dedupe.ledger()
        for body, submission_id in zip(bodies, ids, strict=True):
            order = ledger["orders"][body["order"]["orderNo"]]
            assert 1 == order["issued"]
            assert order["serialNos"] == [serial_of(views[submission_id])]
        assert 0 == ledger["totals"]["doubles"]
    finally:
        gw.process.stop()


def lose_one_answer(gw: Gateway, sim: Simulator) -> tuple[dict[str, Any], dict[str, Any]]:
    """One invoice whose answer the platform drops after issuing it: its body, and its status
    once the gateway has reconciled it."""
    gw.call(QUERY, {"orderNos": ["warm-up"]})
    sim.fault(kind="answer_lost", operations=[ISSUE], count=1)
    body = invoice()
    status, _, answer = gw.call(ISSUE, body)
    assert 202 == status, answer
    [view] = wait_delivered(gw, [answer["submission_id"]]).values()
    return body, view


def test_answer_lost_is_reconciled_not_resent(
    tmp_path: Path, sim: Simulator, store_url: str
) -> None:
    """The platform issues then drops the answer: one invoice; the submission learns its serial."""
    gw = start_gateway(tmp_path, sim, store_url)
    try:
        body, view = lose_one_answer(gw, sim)
        order = sim.ledger()["orders"][body["order"]["orderNo"]]
        assert (1, 1) == (order["issued"], order["sends"])
        assert order["serialNos"] == [serial_of(view)]
        assert (True, "lookup") == (view["result"]["reconciled"], view["result"]["evidence"])
    finally:
        gw.process.stop()


def test_an_invoice_the_platform_lists_late_is_not_issued_twice(
    tmp_path: Path, store_url: str
) -> None:
    """Answers lost after issuing, and the lookup lags issuance: the first lookups find
    nothing, yet nothing is resent before a lookup spanning the settle time finds each one."""
    with Simulator.start(
        tmp_path / "sim", "--lookup-lag", str(LOOKUP_LAG_S), dedup=False
    ) as lagging:
        gw = start_gateway(tmp_path, lagging, store_url)
        try:
            gw.call(QUERY, {"orderNos": ["warm-up"]})
            lagging.fault(kind="answer_lost", operations=[ISSUE], count=5)
            bodies = [invoice() for _ in range(5)]
            ids = []
            for body in bodies:
                status, _, answer = gw.call(ISSUE, body)
                assert 202 == status, answer
                ids.append(answer["submission_id"])
            views = wait_delivered(gw, ids)
            ledger = lagging.ledger()
            for body, submission_id in zip(bodies, ids, strict=True):
                order = ledger["orders"][body["order"]["orderNo"]]
                assert (1, 1) == (order["issued"], order["sends"]), body["order"]["orderNo"]
                assert "lookup" == views[submission_id]["result"]["evidence"]
        finally:
            gw.process.stop()


def test_resend_strategy_takes_the_duplicate_code_as_proof(
    tmp_path: Path, sim_dedup: Simulator
) -> None:
    """`reconcile.strategy: resend` against a platform that refuses a reused order number:
    the resend's E9106 proves the first send, and the lookup records its invoice.

    SQLite only: about the platform's duplicate code; the store reconciles the row as in
    `test_answer_lost_is_reconciled_not_resent`, which runs on both stores."""
    gw = start_gateway(tmp_path, sim_dedup, operations=resend_operations())
    try:
        body, view = lose_one_answer(gw, sim_dedup)
        order = sim_dedup.ledger()["orders"][body["order"]["orderNo"]]
        assert (1, 2) == (order["issued"], order["sends"])
        assert ("duplicate_code", serial_of(view)) == (
            view["result"]["evidence"],
            order["serialNos"][0],
        )
    finally:
        gw.process.stop()


def resend_operations() -> list[dict[str, Any]]:
    """The default profile's operations, every reconcile rule on the `resend` strategy."""
    operations = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())["operations"]
    for operation in operations:
        if "reconcile" in operation:
            operation["reconcile"]["strategy"] = "resend"
    return list(operations)


def test_client_asking_again_after_reconciliation_gets_its_invoice_not_order_number_used(
    tmp_path: Path, sim: Simulator, store_url: str
) -> None:
    """Found by the chaos suite: a client that lost its answer and sends again once the
    submission was reconciled was replayed the platform's E9106 ("order number already used")
    for its own invoice. It gets the success, with the serial number the lookup found."""
    gw = start_gateway(tmp_path, sim, store_url)
    try:
        body, view = lose_one_answer(gw, sim)
        status, headers, again = gw.call(ISSUE, body)
        assert (200, "true", "true") == (
            status,
            headers.get("Idempotent-Replayed"),
            headers.get("X-Gateway-Reconciled"),
        )
        assert "E0000" == again["code"]
        assert serial_of(view) == again["result"]["invoiceSerialNum"]
        assert 1 == sim.ledger()["orders"][body["order"]["orderNo"]]["issued"]
    finally:
        gw.process.stop()


def test_red_letter_waits_behind_its_original(
    tmp_path: Path, sim: Simulator, store_url: str
) -> None:
    """A red-letter submitted while its original is queued is delivered after it."""
    gw = start_gateway(tmp_path, sim, store_url)
    try:
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        original = invoice()
        order_no = original["order"]["orderNo"]
        status, _, first = gw.call(ISSUE, original)
        assert 202 == status
        sim.clear_faults()
        red = {"orderNo": f"{order_no}-R", "originalOrderNo": order_no, "redReason": "1"}
        status, _, second = gw.call(RED, red)
        assert 202 == status, second  # healthy platform, but it must wait behind the original
        views = wait_delivered(gw, [first["submission_id"], second["submission_id"]])
        invoices = {entry["orderNo"]: entry for entry in sim.ledger()["invoices"]}
        assert "red" == invoices[f"{order_no}-R"]["kind"]
        assert invoices[order_no]["acceptedAt"] < invoices[f"{order_no}-R"]["acceptedAt"]
        delivered = [views[first["submission_id"]], views[second["submission_id"]]]
        assert delivered[0]["delivered_at"] < delivered[1]["delivered_at"]
    finally:
        gw.process.stop()


def test_same_key_twice_gives_one_invoice_and_the_same_answer(
    gateway: Gateway, simulator: Simulator
) -> None:
    """A client retrying with the same key gets the stored answer, marked as a replay."""
    body = invoice()
    first = gateway.call(ISSUE, body)
    second = gateway.call(ISSUE, body)
    assert 200 == first[0] == second[0]
    assert first[2] == second[2]
    assert "true" == second[1]["Idempotent-Replayed"]
    assert "replayed" == second[1]["X-Gateway-Outcome"]
    assert 1 == simulator.ledger()["orders"][body["order"]["orderNo"]]["issued"]


def test_idempotency_key_header_and_different_body(gateway: Gateway, simulator: Simulator) -> None:
    """The Idempotency-Key header scopes the key; the same key with another body is 422."""
    headers = {"Idempotency-Key": "erp-batch-7-line-1"}
    status, _, _ = gateway.call(ISSUE, invoice(), headers=headers)
    assert 200 == status
    status, _, problem = gateway.call(ISSUE, invoice(), headers=headers)
    assert 422 == status
    assert "idempotency-key-reused" in problem["type"]
    assert 1 == simulator.ledger()["totals"]["accepted"]


def test_concurrent_same_key_gets_one_409(gateway: Gateway, simulator: Simulator) -> None:
    """While the first request is in flight, the second with the same key gets 409."""
    gateway.call(QUERY, {"orderNos": ["warm-up"]})
    simulator.fault(kind="slow", delay_s=1.5, operations=[ISSUE], count=1)
    body = invoice()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(gateway.call, ISSUE, body)
        wait_until(
            lambda: simulator.ledger()["counters"]["calls"].get(ISSUE, 0) >= 1,
            timeout=5,
            what="the first request to reach the platform",
        )
        status, _, problem = gateway.call(ISSUE, body)
        assert 409 == status
        assert "request-in-flight" in problem["type"]
        assert 200 == first.result()[0]
    assert 1 == simulator.ledger()["orders"][body["order"]["orderNo"]]["issued"]


def test_status_is_private_to_its_tenant(tmp_path: Path, sim: Simulator) -> None:
    """Another tenant cannot see a submission: 404, as if it did not exist.

    SQLite only: the edge compares the tenant; the store reads the row by id alone."""
    gw = start_gateway(tmp_path, sim)
    try:
        sim.fault(kind="http_error", status=503)
        _, _, answer = gw.call(ISSUE, invoice())
        from tests.support.processes import OTHER_TENANT_KEY

        status, _, _ = http_json(
            "GET", gw.url + answer["status_url"], headers={"X-Api-Key": OTHER_TENANT_KEY}
        )
        assert 404 == status
    finally:
        gw.process.stop()


def store_states(gw: Gateway) -> dict[str, int]:
    """Submissions per state, read straight from the gateway's store (a SQLite file read-only,
    or the PostgreSQL database), not through the gateway."""
    sql = "SELECT state, COUNT(*) FROM submission GROUP BY state"
    url = gw.store_url
    if url.startswith("sqlite:///"):
        with sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True) as db:
            rows = db.execute(sql).fetchall()
    else:
        rows = asyncio.run(_fetch(url, sql))
    return {str(state): int(count) for state, count in rows}


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


def test_full_disk_gives_503_never_202(tmp_path: Path, sim: Simulator) -> None:
    """With the disk full a submission is refused with 503; nothing is acknowledged or sent.

    SQLite only: the embedded store's file on a full filesystem (a PostgreSQL server out of
    space is the chaos suite's)."""
    disk = tmp_path / "small-disk"
    mount_small_fs(disk)
    try:
        gw = Gateway.start(
            tmp_path / "gw",
            sim.url,
            overrides={**OVERRIDES, "store_url": f"sqlite:///{disk / 'gw.db'}"},
        )
        try:
            assert 200 == gw.call(QUERY, {"orderNos": ["warm-up"]})[0]
            filler = disk / "filler"
            fill(filler)
            calls_before = sim.ledger()["counters"]["calls"].get(ISSUE, 0)
            refused = [gw.call(ISSUE, invoice()) for _ in range(5)]
            assert [503] * 5 == [status for status, _, _ in refused]
            assert {"store-unavailable"} == {p["type"].rsplit(":", 1)[1] for _, _, p in refused}
            assert calls_before == sim.ledger()["counters"]["calls"].get(ISSUE, 0)
            filler.unlink()
            status, _, answer = gw.call(ISSUE, invoice())
            assert 200 == status, answer  # space again: business as usual
        finally:
            gw.process.stop()
    finally:
        unmount(disk)


def _submit_all(
    gw: Gateway,
    bodies: list[dict[str, Any]],
    results: dict[str, tuple[int, Any]],
    stop: threading.Event,
) -> None:
    for body in bodies:
        if stop.is_set():
            return
        try:
            status, _, answer = gw.call(ISSUE, body)
        except OSError:
            continue  # the gateway died mid-request: the client will retry
        results[body["order"]["orderNo"]] = (status, answer)


#: For restarts on a shared store, which takes over only expired leases: short leases, swept
#: often (as replicas are configured in the chaos suite).
RESTART_OUTBOX = {**FAST_OUTBOX, "lease": "3s", "sweep_interval": "500ms"}


def test_kill_9_while_accepting_and_draining_loses_nothing(
    tmp_path: Path, sim: Simulator, store_url: str
) -> None:
    """kill -9 while accepting and while draining: every acknowledged submission issued once.

    On SQLite the restarted gateway reclaims every lease at start (it is the only one); on
    PostgreSQL it takes over the killed one's once they expire."""
    rng = random.Random(4)
    gw = start_gateway(tmp_path, sim, store_url, outbox=RESTART_OUTBOX)
    bodies = [invoice() for _ in range(120)]
    results: dict[str, tuple[int, Any]] = {}
    try:
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            chunks = [bodies[i::4] for i in range(4)]
            futures = [pool.submit(_submit_all, gw, chunk, results, stop) for chunk in chunks]
            wait_until(
                lambda: len(results) >= rng.randint(20, 50), timeout=30, what="some acceptances"
            )
            gw.process.kill9()  # while accepting
            stop.set()
            for future in futures:
                future.result()
        gw.restart()
        # Clients retry whatever got no answer, with the same order number.
        for body in bodies:
            if body["order"]["orderNo"] not in results:
                status, _, answer = gw.call(ISSUE, body)
                results[body["order"]["orderNo"]] = (status, answer)
        sim.clear_faults()
        wait_until(
            lambda: sim.ledger()["totals"]["accepted"] >= 30, timeout=30, what="the drain to start"
        )
        gw.restart(kill=True)  # while draining
        acknowledged = {
            order_no: answer["submission_id"]
            for order_no, (status, answer) in results.items()
            if status == 202
        }
        assert {202} == {status for status, _ in results.values()}
        wait_delivered(gw, list(acknowledged.values()), timeout=60)
        assert {"delivered": len(bodies)} == store_states(gw)
        ledger = sim.ledger()
        assert 0 == ledger["totals"]["doubles"]
        for order_no in acknowledged:
            order = ledger["orders"][order_no]
            assert (1, 1) == (order["issued"], order["sends"]), order_no
    finally:
        gw.process.stop()


def test_client_disconnect_does_not_lose_the_result(gateway: Gateway, simulator: Simulator) -> None:
    """A client that hangs up mid-forward gets the result on retry; the invoice exists once."""
    gateway.call(QUERY, {"orderNos": ["warm-up"]})
    simulator.fault(kind="slow", delay_s=1.0, operations=[ISSUE], count=1)
    body = invoice()
    with pytest.raises(TimeoutError):  # the client gives up after 0.2 s, closing the connection
        http_json(
            "POST",
            gateway.url + "/open/v1/services",
            body,
            headers={"method": ISSUE, "X-Api-Key": TENANT_KEY},
            timeout=0.2,
        )

    def replayed() -> tuple[int, dict[str, str], Any] | None:
        status, headers, answer = gateway.call(ISSUE, body)
        return (status, headers, answer) if status != 409 else None

    status, headers, answer = wait_until(replayed, timeout=10, what="the first request to finish")
    assert (200, "true") == (status, headers.get("Idempotent-Replayed"))
    assert "E0000" == answer["code"]
    assert 1 == simulator.ledger()["orders"][body["order"]["orderNo"]]["issued"]


def test_status_page_shows_the_outbox(tmp_path: Path, sim: Simulator, store_url: str) -> None:
    """During an outage /status shows the circuit open and the queued submissions."""
    gw = start_gateway(tmp_path, sim, store_url)
    try:
        # Issuing down, tokens not: with the token endpoint down too, each call would wait out
        # the token refresh's back-off (seconds, twice: this test runs on both stores).
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        for _ in range(5):
            assert 202 == gw.call(ISSUE, invoice())[0]
        status, _, facts = http_json("GET", gw.url + "/status?format=json")
        assert 200 == status
        counts = facts["outbox"]["counts"]
        assert 5 == counts["queued"] + counts["delivering"] + counts["unknown"]
        assert facts["outbox"]["oldest_queued_age_s"] is not None
        status, headers, page = http_json("GET", gw.url + "/status")
        assert headers["Content-Type"].startswith("text/html")
        assert "Outbox" in page
        assert TENANT_KEY not in page
    finally:
        gw.process.stop()


def test_clock_stepped_back_across_a_restart_does_not_stall_the_outbox(
    tmp_path: Path, sim: Simulator
) -> None:
    """The host's clock steps back an hour while the gateway is down: what was queued before is
    still delivered at once, not an hour late — also a submission already looked up once
    before the step (its lookups are counted afresh, not an hour after the first).

    SQLite only: the embedded store keeps the host's times and rebases them after a step;
    replicas on PostgreSQL run on the database's clock, whatever the host's says."""
    env = jumped_clock(tmp_path / "clock", "+0")
    gw = Gateway.start(tmp_path / "gw", sim.url, overrides=OVERRIDES, env=env)
    try:
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        answers = [gw.call(ISSUE, invoice()) for _ in range(5)]
        assert [202] * 5 == [status for status, _, _ in answers]
        # A submission that may have been sent has been looked up once (and not found) before
        # the step: its record of lookups was written by the clock before the step.
        wait_until(
            lambda: "not found yet" in gw.process.stderr_path.read_text(),
            timeout=10,
            interval=0.05,
            what="a lookup before the clock steps back",
        )
        gw.process.kill9()
        (tmp_path / "clock" / "faketime").write_text("-3600\n")
        sim.clear_faults()
        gw.restart()
        wait_delivered(gw, [answer["submission_id"] for _, _, answer in answers], timeout=30)
    finally:
        gw.process.stop()
