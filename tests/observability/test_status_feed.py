"""The public side of an incident, with real processes: `/status/feed.json` after a platform
outage (the simulator failing every call) and the incident line shared by two replicas on one
PostgreSQL database."""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_core_gateway import ISSUE, QUERY, invoice
from tests.observability.test_status_chromium import ADMIN, OPERATOR_TOKEN, OVERRIDES
from tests.support.harness import Gateway, Simulator
from tests.support.postgres import scratch_database_sync
from tests.support.processes import TENANT_KEY, USER_TAX, http_json, wait_until

pytestmark = pytest.mark.integration

ENV = {"STATUS_ADMIN_OPERATOR": OPERATOR_TOKEN}
LINE = "开票平台故障，发票将在恢复后自动开具"
QUEUED = 6


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator.start(tmp_path / "sim") as simulator:
        yield simulator


def start(workdir: Path, sim: Simulator, **extra: Any) -> Gateway:
    overrides = copy.deepcopy({**OVERRIDES, **ADMIN, **extra})
    return Gateway.start(workdir, sim.url, overrides=overrides, env=ENV)


def feed(gw: Gateway) -> dict[str, Any]:
    status, headers, document = http_json("GET", gw.url + "/status/feed.json")
    assert 200 == status, document
    assert "*" == headers["Access-Control-Allow-Origin"]
    assert headers["Cache-Control"].startswith("public, max-age=")
    assert isinstance(document, dict)
    return document


def availability(gw: Gateway) -> str:
    status, _, facts = http_json("GET", gw.url + "/status?format=json")
    assert 200 == status, facts
    return str(facts["availability"]["state"])


def set_line(gw: Gateway, message: str) -> None:
    status, _, answer = gw.admin(
        "PUT", "/status/incident", {"message": message, "reason": "drill"}, token=OPERATOR_TOKEN
    )
    assert 200 == status, answer


def test_the_feed_lists_an_outage_with_what_was_queued_and_delivered(
    tmp_path: Path, sim: Simulator
) -> None:
    """Reads fail until the circuit opens (reads are never queued), then every submission is
    queued; once the platform is back the feed shows the outage with its start and end, the
    submissions queued during it and delivered after it, and the line on-call set."""
    with start(tmp_path / "gw", sim) as gw:
        gw.call(QUERY, {"orderNos": []})  # the access token is fetched while the platform is up
        sim.fault(kind="http_error", status=503, operations=[ISSUE, QUERY])
        wait_until(
            lambda: gw.call(QUERY, {"orderNos": ["X"]})[0] >= 500 and availability(gw) == "down",
            timeout=15,
            interval=0.1,
            what="the circuit to open on failed reads",
        )
        for _ in range(QUEUED):
            status, _, answer = gw.call(ISSUE, invoice())
            assert 202 == status, answer
        set_line(gw, LINE)
        during = feed(gw)
        assert [None] == [outage["end"] for outage in during["outages"]]
        assert LINE == during["incident"]["message"]

        sim.clear_faults()
        wait_until(
            lambda: feed(gw)["outages"][0]["delivered_after"] == QUEUED,
            timeout=20,
            interval=0.3,
            what="the queued submissions to be delivered after the outage",
        )
        document = feed(gw)
        [outage] = document["outages"]
        assert outage["start"] < outage["end"] <= document["now"]
        assert (QUEUED, QUEUED) == (outage["queued_during"], outage["delivered_after"])
        assert [LINE] == [line["message"] for line in document["incidents"]]
        text = str(document)
        assert TENANT_KEY not in text
        assert USER_TAX not in text
        assert "orderNo" not in text


def test_a_line_set_on_one_replica_shows_on_the_other(tmp_path: Path, sim: Simulator) -> None:
    """Two replicas on one PostgreSQL database: the line set through A's admin API is on B's
    /status within a few seconds, and gone from A's feed after it is cleared through B."""
    with (
        scratch_database_sync("incident") as database,
        contextlib.ExitStack() as stack,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        starting = [pool.submit(start, tmp_path / n, sim, store_url=database) for n in "ab"]
        a, b = (stack.enter_context(replica.result()) for replica in starting)

        def b_page() -> str:
            status, _, page = http_json("GET", b.url + "/status")
            assert 200 == status
            return str(page)

        assert LINE not in b_page()
        set_line(a, LINE)
        wait_until(lambda: LINE in b_page(), timeout=5, interval=0.2, what="B to show A's line")
        status, _, answer = b.admin("DELETE", "/status/incident", token=OPERATOR_TOKEN)
        assert (200, None) == (status, answer["incident"])
        wait_until(
            lambda: feed(a)["incident"] is None, timeout=5, interval=0.2, what="A to drop it"
        )
        assert LINE not in b_page()
