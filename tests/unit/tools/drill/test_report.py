"""The drill report, as text, Markdown and JSON, on results built by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.tools.drill import report
from gateway.tools.drill.checks import check
from gateway.tools.drill.integrator import Book, Settled
from gateway.tools.drill.runner import DrillOptions, DrillResult, Event
from gateway.tools.drill.scenarios import SCENARIOS
from tests.unit.tools.drill.books import book, delivered, issued, order, rows

#: 2026-01-01 00:00:00 UTC.
STARTED = 1767225600.0


def drill_result(
    the_book: Book,
    found_rows: list[dict[str, Any]],
    found: dict[str, int],
    *,
    drain_s: float | None = 3.44,
    exits: list[str] | None = None,
) -> DrillResult:
    scenario = SCENARIOS["outage"]
    the_book.statuses.update({200: 1, 202: 1, 0: 2})
    the_book.outcomes.update({"forwarded": 1, "queued": 1, "no answer": 2})
    the_book.problems.update({"ClientConnectorError": 2})
    the_book.latencies_s.extend([0.012, 0.3])
    the_book.resends = 2
    return DrillResult(
        scenario=scenario,
        options=DrillOptions(scenario, rate=25, seed=7),
        started_wall=STARTED,
        book=the_book,
        check=check(the_book, found_rows, issued(**found)),
        events=[
            Event(0.0, "simulator and gateway up"),
            Event(8.04, "platform down: refuses connections for 20 s"),
            Event(75.5, "traffic stopped: 2 invoices submitted"),
        ],
        drain_s=drain_s,
        queued_peak=12,
        crashes=1,
        unexpected_exits=exits or [],
        duration_s=41.23,
        against="the simulator",
        faults_hit={"refuse": 1},
        backlog_cleared_s=1.26,
    )


def passing() -> DrillResult:
    return drill_result(
        book(order("A1"), order("A2", queued=True)), delivered(["A1", "A2"]), {"A1": 1, "A2": 1}
    )


def failing() -> DrillResult:
    names = [f"L{i}" for i in range(1, 7)]
    return drill_result(
        book(
            *(order(n, queued=True) for n in names),
            order("D1"),
            order("U1", Settled.UNANSWERED),
            order("S1", queued=True),
        ),
        [*delivered([*names, "D1"]), *rows(S1="dead")],
        {"D1": 2},
    )


def test_text_of_a_passing_drill() -> None:
    """The heading says PASS; the sections and the verdict line follow, no problems section."""
    out = report.text(passing())
    first = out.splitlines()[0]
    assert "Drill report: outage — PASS — nothing lost, nothing issued twice" == first
    for line in (
        "Timeline",
        "  00:08.0  platform down: refuses connections for 20 s",
        "  01:15.5  traffic stopped: 2 invoices submitted",
        "What the client saw",
        "  2 invoices submitted; 4 answers (2 of them to resends)",
        "  By outcome: 1 forwarded, 2 no answer, 1 queued",
        "  By HTTP status: 2× no answer, 1× 200, 1× 202",
        "  Latency of answers: p50 12 ms, p99 300 ms, max 300 ms",
        "  Problems and errors seen (each was resent): 2× ClientConnectorError",
        "  Most submissions waiting at once: 12",
        "  Gateway crashes survived (kill -9, restart on the same store): 1",
        "  Faults the platform side injected: 1 refuse",
        "Ledger check",
        "  Acknowledged: 2 (1 forwarded at once, 1 queued with 202)",
        "  Issued exactly once: 2",
    ):
        assert line in out.splitlines(), line
    assert "the last queued submission was delivered 3.4 s later" in out
    assert "  Outbox empty again: 1.3 s after the platform was back (the backlog drained)" in (
        out.splitlines()
    )
    assert "against the simulator" in out
    assert "seed 7" in out
    assert "25 invoices/s" in out
    assert "2026-01-01T00:00:00+00:00" in out
    assert out.splitlines()[-1].startswith("PASS: 2 submitted")
    assert "Problems\n" not in out


def test_text_of_a_failing_drill() -> None:
    """The heading says FAIL; the counts and the problems, with order numbers, are shown."""
    out = report.text(failing())
    lines = out.splitlines()
    assert "Drill report: outage — FAIL" == lines[0]
    assert (
        "  Lost: 6 · issued twice: 1 · stuck in the outbox: 1 · unanswered: 1 · "
        "told 'not issued' but issued: 0 · issued though never asked: 0"
    ) in lines
    problems = lines[lines.index("Problems") + 2 :]
    assert [
        "  6 acknowledged but never issued (LOST): L1, L2, L3, L4, L5 …",
        "  1 issued more than once (DOUBLED): D1",
        "  1 not finished in the outbox (1 dead): S1",
        "  1 never got a settling answer, even after retries: U1",
    ] == problems
    assert any(line.startswith("FAIL: 9 submitted") for line in lines)


def test_an_unexpected_gateway_exit_fails_a_clean_ledger() -> None:
    """A gateway that exited by itself fails the drill even with a clean ledger."""
    result = drill_result(
        book(order("A1")), delivered(["A1"]), {"A1": 1}, exits=["exit code 1: boom"]
    )
    assert result.check.passed
    assert not result.passed
    out = report.text(result)
    assert out.startswith("Drill report: outage — FAIL")
    assert "  gateway exited by itself: exit code 1: boom" in out.splitlines()


def test_markdown_headings_and_lists() -> None:
    """Markdown: a title, second-level sections, list items, the verdict in bold."""
    out = report.markdown(passing())
    lines = out.splitlines()
    assert lines[0].startswith("# Drill report: outage — PASS")
    for heading in ("## Timeline", "## What the client saw", "## The outbox", "## Ledger check"):
        assert heading in lines
    assert "- 00:08.0  platform down: refuses connections for 20 s" in lines
    assert lines[-1].startswith("**PASS: 2 submitted")
    assert lines[-1].endswith("**")


def test_markdown_of_a_failing_drill_has_the_problems_section() -> None:
    """A failing drill's Markdown ends with its problems."""
    out = report.markdown(failing())
    assert out.startswith("# Drill report: outage — FAIL\n")
    assert "\n## Problems\n\n- 6 acknowledged but never issued (LOST): L1" in out


@pytest.mark.parametrize(
    ("drain_s", "says"),
    [
        (None, "nothing was queued"),
        (0.0, "every queued submission had been delivered by then"),
        (12.0, "the last queued submission was delivered 12 s later"),
    ],
)
def test_drain_in_words(drain_s: float | None, says: str) -> None:
    """The outbox section says when the backlog was delivered, relative to recovery."""
    result = drill_result(book(order("A1")), delivered(["A1"]), {"A1": 1}, drain_s=drain_s)
    assert f"Platform healthy again at 00:28.0; {says}" in report.text(result)


def test_json_round_trips() -> None:
    """The JSON form parses back to the same facts: verdict, client, drain, ledger counts."""
    document = json.loads(report.as_json(failing()))
    assert document["passed"] is False
    assert "outage" == document["scenario"]
    assert "2026-01-01T00:00:00+00:00" == document["started_at"]
    assert (41.2, 25, 7, "the simulator") == (
        document["duration_s"],
        document["rate"],
        document["seed"],
        document["against"],
    )
    assert {"at_s": 8.0, "text": "platform down: refuses connections for 20 s"} == document[
        "timeline"
    ][1]
    assert {"0": 2, "200": 1, "202": 1} == document["client"]["by_status"]
    assert {
        "queued_peak": 12,
        "platform_healthy_at_s": 28.0,
        "drained_s_after_recovery": 3.4,
        "backlog_cleared_s_after_recovery": 1.3,
    } == document["drain"]
    assert 1 == document["gateway_crashes"]
    assert {"refuse": 1} == document["faults_hit"]
    ledger = document["ledger"]
    assert (6, 1, {"dead": 1}, 1, 0) == (
        ledger["lost"],
        ledger["issued_twice"],
        ledger["stuck"],
        ledger["unanswered"],
        ledger["issued_unasked"],
    )
    assert (8, 1, 7) == (ledger["acknowledged"], ledger["forwarded"], ledger["queued"])
    assert 4 == len(document["problems"])
    assert document["verdict"].startswith("FAIL")


def test_json_of_a_passing_drill() -> None:
    """A passing drill's JSON says so, with nothing lost or doubled."""
    document = json.loads(report.as_json(passing()))
    assert document["passed"] is True
    assert (0, 0, 2) == (
        document["ledger"]["lost"],
        document["ledger"]["issued_twice"],
        document["ledger"]["issued_exactly_once"],
    )
    assert [] == document["problems"]
