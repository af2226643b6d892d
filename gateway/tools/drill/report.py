"""The drill report: what was drilled, what the client saw, how long the drain took, and the
ledger check — as plain text for the terminal, Markdown for the file a business keeps, and JSON
for machines."""

from __future__ import annotations

import json
import platform as host
from datetime import UTC, datetime
from typing import Any

from gateway import __version__
from gateway.tools.drill.checks import describe
from gateway.tools.drill.runner import DrillResult, clock


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def facts(result: DrillResult) -> dict[str, Any]:
    """Everything the report says, as data (the JSON form)."""
    book, found = result.book, result.check
    answers = sum(book.statuses.values())
    return {
        "scenario": result.scenario.name,
        "summary": result.scenario.summary,
        "passed": result.passed,
        "verdict": found.summary(),
        "problems": found.problems()
        + [f"gateway exited by itself: {e}" for e in result.unexpected_exits],
        "started_at": datetime.fromtimestamp(result.started_wall, UTC).isoformat(
            timespec="seconds"
        ),
        "duration_s": round(result.duration_s, 1),
        "against": result.against,
        "rate": result.options.rate,
        "seed": result.options.seed,
        "gateway_version": __version__,
        "host": f"{host.node()} ({host.system()} {host.machine()}, Python {host.python_version()})",
        "timeline": [{"at_s": round(e.at_s, 1), "text": e.text} for e in result.events],
        "client": {
            "submitted": found.submitted,
            "answers": answers,
            "resends": book.resends,
            "by_outcome": dict(book.outcomes),
            "by_status": {str(k): v for k, v in sorted(book.statuses.items())},
            "problems": dict(book.problems),
            "latency_ms": {
                "p50": book.latency_ms(50),
                "p99": book.latency_ms(99),
                "max": book.latency_ms(100),
            },
        },
        "drain": {
            "queued_peak": result.queued_peak,
            "platform_healthy_at_s": result.scenario.healthy_from_s,
            "drained_s_after_recovery": None
            if result.drain_s is None
            else round(result.drain_s, 1),
            "backlog_cleared_s_after_recovery": None
            if result.backlog_cleared_s is None
            else round(result.backlog_cleared_s, 1),
        },
        "gateway_crashes": result.crashes,
        "ledger": {
            "acknowledged": found.acknowledged,
            "forwarded": found.forwarded,
            "queued": found.queued,
            "refused_by_platform": found.refused,
            "rejected_by_gateway": found.rejected,
            "failed_after_queueing": found.failed_after_queueing,
            "issued_exactly_once": found.issued_once,
            "lost": len(found.lost),
            "issued_twice": len(found.doubled),
            "stuck": dict(found.stuck),
            "unanswered": len(found.unanswered),
            "told_not_issued_but_issued": len(found.contradicted),
            "issued_unasked": len(found.unknown),
            "duplicate_code_answers": found.duplicates_rejected,
            "orders_sent_more_than_once": len(found.resent),
            "outbox_rows": dict(found.row_states),
        },
        "faults_hit": dict(result.faults_hit),
    }


def text(result: DrillResult) -> str:
    """The report for the terminal."""
    return "\n".join(_lines(result, markdown=False)) + "\n"


def markdown(result: DrillResult) -> str:
    """The report to keep (docs/, the business's runbook)."""
    return "\n".join(_lines(result, markdown=True)) + "\n"


def as_json(result: DrillResult) -> str:
    return json.dumps(facts(result), ensure_ascii=False, indent=2) + "\n"


def _lines(result: DrillResult, *, markdown: bool) -> list[str]:
    f = facts(result)
    client, drain, ledger = f["client"], f["drain"], f["ledger"]
    h1, h2 = ("# ", "## ") if markdown else ("", "")
    item = "- " if markdown else "  "
    verdict = "PASS — nothing lost, nothing issued twice" if f["passed"] else "FAIL"
    out = [
        f"{h1}Drill report: {f['scenario']} — {verdict}",
        "",
        f"{f['summary']}",
        "",
        f"{item}Run: {f['started_at']}, {f['duration_s']:g} s, against {f['against']}, "
        f"gateway {f['gateway_version']}, on {f['host']}",
        f"{item}Client: a well-behaved integrator sending {f['rate']:g} invoices/s, resending "
        "whatever got no settling answer with the same order number (the idempotency key)"
        + (f"; seed {f['seed']}" if f["seed"] is not None else ""),
        "",
        f"{h2}Timeline",
        "",
    ]
    out += [f"{item}{clock(e['at_s'])}  {e['text']}" for e in f["timeline"]]
    by_outcome = ", ".join(f"{n} {k}" for k, n in sorted(client["by_outcome"].items()))
    by_status = ", ".join(
        f"{n}× {'no answer' if k == '0' else k}" for k, n in client["by_status"].items()
    )
    latency = client["latency_ms"]
    out += [
        "",
        f"{h2}What the client saw",
        "",
        f"{item}{client['submitted']} invoices submitted; {client['answers']} answers "
        f"({client['resends']} of them to resends)",
        f"{item}By outcome: {by_outcome or 'none'}",
        f"{item}By HTTP status: {by_status or 'none'}",
        f"{item}Latency of answers: p50 {_ms(latency['p50'])}, p99 {_ms(latency['p99'])}, "
        f"max {_ms(latency['max'])}",
    ]
    if client["problems"]:
        seen = ", ".join(f"{n}× {k}" for k, n in sorted(client["problems"].items()))
        out.append(f"{item}Problems and errors seen (each was resent): {seen}")
    drained = drain["drained_s_after_recovery"]
    cleared = drain["backlog_cleared_s_after_recovery"]
    out += [
        "",
        f"{h2}The outbox",
        "",
        f"{item}Most submissions waiting at once: {drain['queued_peak']}",
        f"{item}Platform healthy again at {clock(drain['platform_healthy_at_s'])}; "
        + (
            "nothing was queued"
            if drained is None
            else "every queued submission had been delivered by then"
            if drained <= 0
            else f"the last queued submission was delivered {drained:g} s later"
        ),
        f"{item}Outbox empty again: "
        + (
            "not while the drill watched"
            if cleared is None
            else f"{cleared:g} s after the platform was back (the backlog drained)"
        ),
        f"{item}Gateway crashes survived (kill -9, restart on the same store): "
        f"{f['gateway_crashes']}",
        f"{item}Faults the platform side injected: {describe(f['faults_hit'])}",
        "",
        f"{h2}Ledger check",
        "",
        f"{item}Acknowledged: {ledger['acknowledged']} ({ledger['forwarded']} forwarded at once, "
        f"{ledger['queued']} queued with 202)",
        f"{item}Issued exactly once: {ledger['issued_exactly_once']}",
        f"{item}Refused by the platform (passed to the client as its verdict): "
        f"{ledger['refused_by_platform']}; refused by the platform after queueing: "
        f"{ledger['failed_after_queueing']}; rejected by the gateway: "
        f"{ledger['rejected_by_gateway']}",
        f"{item}Lost: {ledger['lost']} · issued twice: {ledger['issued_twice']} · "
        f"stuck in the outbox: {sum(ledger['stuck'].values())} · "
        f"unanswered: {ledger['unanswered']} · "
        f"told 'not issued' but issued: {ledger['told_not_issued_but_issued']} · "
        f"issued though never asked: {ledger['issued_unasked']}",
        f"{item}Duplicate-code answers (resends after a lost answer, caught by the platform and "
        f"reconciled by lookup): {ledger['duplicate_code_answers']}; order numbers the platform "
        f"received more than once: {ledger['orders_sent_more_than_once']}",
        f"{item}Outbox rows at the end: {describe(ledger['outbox_rows'])}",
        "",
        f"{'**' if markdown else ''}{f['verdict']}{'**' if markdown else ''}",
    ]
    if f["problems"]:
        out += ["", f"{h2}Problems", ""] + [f"{item}{p}" for p in f["problems"]]
    return out
