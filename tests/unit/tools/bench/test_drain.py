"""The drain scenario: its runs, the measured window, the delivery check, and one real run at a
tiny size (never asserting on speed)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.outbox.submissions import fingerprint
from gateway.tools.bench import BenchOptions, body_templates
from gateway.tools.bench.drain import (
    UNTHROTTLED_RATE,
    Backlog,
    DrainCheck,
    FastFingerprint,
    Sample,
    count_by_state,
    drain,
    drain_check,
    drain_runs,
    drain_target,
    fill_backlog,
    steady_window,
)


def sample(at: float, delivered: int, cpu: float | None = None) -> Sample:
    return Sample(
        at=at,
        delivered=delivered,
        waiting=100 - delivered,
        gateway_cpu=cpu,
        simulator_cpu=None if cpu is None else cpu / 2,
    )


def test_the_window_runs_from_10_to_90_percent_delivered() -> None:
    """Start-up and the last stragglers are left out; CPU is counted over the same window."""
    samples = [sample(0.0, 0, 1.0), sample(1.0, 5, 1.1), sample(2.0, 10, 1.2)]
    samples += [sample(3.0, 50, 1.6), sample(4.0, 90, 2.0), sample(9.0, 100, 2.1)]
    window = steady_window(samples, 100)
    assert window is not None
    assert (2.0, 4.0, 80, 40.0) == (window.first.at, window.last.at, window.delivered, window.per_s)
    assert 10.0 == pytest.approx(window.cpu_per_thousand("gateway"))
    assert 0.2 == pytest.approx(window.core_share("simulator"))


def test_a_drain_too_quick_for_the_window_is_measured_from_its_first_to_last_delivery() -> None:
    """Every row delivered between two samples: from the last sample before any delivery."""
    window = steady_window([sample(0.0, 0), sample(0.5, 0), sample(1.0, 100)], 100)
    assert window is not None
    assert (0.5, 1.0, 200.0) == (window.first.at, window.last.at, window.per_s)
    assert window.cpu_per_thousand("gateway") is None


def test_no_rate_without_two_samples_around_a_delivery() -> None:
    """Nothing delivered, or everything before the first sample: no rate to report."""
    assert steady_window([sample(0.0, 0), sample(1.0, 0)], 100) is None
    assert steady_window([sample(0.0, 100)], 100) is None


def test_the_throttled_run_lasts_about_the_duration_and_the_unthrottled_has_no_bucket() -> None:
    """Throttled: rate x duration submissions (at most the backlog); unthrottled: the rate and
    burst far above reach; the same concurrency in both."""
    unthrottled, throttled = drain_runs(
        BenchOptions(scenario="drain", backlog=20_000, rate=500.0, duration_s=10.0)
    )
    assert (20_000, 5_000) == (unthrottled.backlog, throttled.backlog)
    assert ("unthrottled", "throttled at 500/s") == (unthrottled.label, throttled.label)
    assert UNTHROTTLED_RATE == unthrottled.overrides()["outbox.dispatcher.rate"]
    assert (500.0, 50) == (
        throttled.overrides()["outbox.dispatcher.rate"],
        throttled.overrides()["outbox.dispatcher.burst"],
    )
    assert (
        unthrottled.overrides()["outbox.dispatcher.concurrency"]
        == throttled.overrides()["outbox.dispatcher.concurrency"]
    )
    small = drain_runs(BenchOptions(scenario="drain", backlog=100, rate=500.0, duration_s=10.0))
    assert 100 == small[1].backlog


def test_the_targets_are_a_rate_unthrottled_and_the_configured_rate_kept_throttled() -> None:
    """At least 2,000/s without the bucket; within 5 % of the configured rate with it."""
    unthrottled, throttled = drain_runs(BenchOptions(scenario="drain", rate=500.0))
    assert (True, False) == (
        drain_target(unthrottled, 2_000.0).met,
        drain_target(unthrottled, 1_999.0).met,
    )
    assert [True, True, False, False] == [
        drain_target(throttled, per_s).met for per_s in (476.0, 524.0, 474.0, 526.0)
    ]
    assert "(-1.0%)" in drain_target(throttled, 495.0).measured


BACKLOG = Backlog(count=3, prefix="Dtest-", seconds=1.0)


def test_the_check_holds_when_every_order_was_issued_once() -> None:
    orders = {BACKLOG.order_no(i): {"sends": 1, "issued": 1} for i in range(3)}
    check = drain_check(BACKLOG, 3, orders, doubles=0)
    assert DrainCheck(3, 3, 3, 0, 0, 0) == check
    assert check.ok
    assert check.describe().endswith(": ok")


@pytest.mark.parametrize(
    ("delivered_rows", "issued", "doubles", "expected"),
    [
        (2, (1, 1, 1), 0, (2, 3, 0, 0)),
        (3, (1, 1, 0), 0, (3, 2, 0, 1)),
        (3, (1, 2, 1), 1, (3, 2, 1, 0)),
    ],
    ids=["a-row-not-delivered", "an-order-never-issued", "an-order-issued-twice"],
)
def test_the_check_fails_when_a_submission_is_not_delivered_exactly_once(
    delivered_rows: int,
    issued: tuple[int, int, int],
    doubles: int,
    expected: tuple[int, int, int, int],
) -> None:
    """A row left undelivered, an order the platform never issued, or one it issued twice."""
    orders = {BACKLOG.order_no(i): {"issued": n} for i, n in enumerate(issued) if n}
    check = drain_check(BACKLOG, delivered_rows, orders, doubles=doubles)
    assert expected == (check.delivered_rows, check.issued_once, check.issued_twice, check.missing)
    assert not check.ok
    assert "NOT EVERY SUBMISSION DELIVERED ONCE" in check.describe()


def test_the_fast_fingerprint_is_the_stores_fingerprint_of_the_body() -> None:
    """Hashing the canonical template with the order number put in gives what
    `submissions.fingerprint` computes from the rendered body, for every template."""
    for template in body_templates("91110108000000001A", count=8):
        assert fingerprint(template.render("Dabc123-0000042")) == FastFingerprint.of(template)(
            "Dabc123-0000042"
        )


async def test_a_filled_store_holds_the_backlog_queued_as_the_store_writes_it(
    tmp_path: Path,
) -> None:
    """Rows of the store's own schema, every one queued, acknowledged and due, each with its
    own order number as idempotency, business and ordering key."""
    path = tmp_path / "backlog.db"
    backlog = await fill_backlog(path, count=50, tenant="demo", seller_tax="91110108000000001A")
    with sqlite3.connect(path) as db:
        assert {"queued": 50} == count_by_state(db)
        keys = db.execute(
            "SELECT DISTINCT idempotency_key = business_key AND business_key = ordering_key, "
            "acknowledged, next_attempt_at IS NOT NULL FROM submission"
        ).fetchall()
        first = db.execute("SELECT business_key FROM submission ORDER BY seq LIMIT 1").fetchone()
    assert [(1, 1, 1)] == keys
    assert backlog.order_no(0) == first[0]


@pytest.mark.integration
def test_a_tiny_drain_delivers_every_submission_once_in_both_runs(tmp_path: Path) -> None:
    """200 queued submissions drained unthrottled, then 200 at 100/s: both runs report a rate,
    every submission delivered in the store and issued once by the simulator."""
    options = BenchOptions(
        scenario="drain", backlog=200, rate=100.0, duration_s=2.0, store_parent=tmp_path
    )
    report = asyncio.run(drain(options))
    assert ([], True) == (report.problems, report.ok)
    unthrottled, throttled = report.rows
    assert ("unthrottled", "throttled at 100/s") == (unthrottled.label, throttled.label)
    for row in report.rows:
        assert row.good > 0
        assert row.good_per_s > 0
        assert row.durability is not None
        assert (200, 200) == (row.durability.rows, row.durability.acknowledged)
        assert "200 issued once, 0 more than once, 0 never" in row.notes["delivery check"]
        assert "per 1,000 deliveries" in row.notes["gateway CPU"]
    assert "100/s" == throttled.notes["configured rate"]
    assert "deviation" in throttled.notes
    names = [target.name for target in report.targets]
    assert ["drain rate, unthrottled", "drain rate at 100/s"] == names
    assert list(tmp_path.iterdir()) == []  # the runs' directories are removed
