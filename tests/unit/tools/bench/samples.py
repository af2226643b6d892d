"""Sample loads, targets and reports the bench tests share."""

from __future__ import annotations

from gateway.tools.bench import (
    DurabilityCheck,
    LoadResult,
    LoadTarget,
    Report,
    Row,
    body_templates,
    submit_headers,
)
from gateway.tools.simulator.tax_numbers import make_tax_number

SELLER = make_tax_number(4242)


def load(statuses: dict[int, int], socket_errors: dict[str, int] | None = None) -> LoadResult:
    return LoadResult(
        generator="wrk test",
        elapsed_s=2.0,
        statuses=statuses,
        socket_errors=socket_errors or {},
        outcomes={},
        latency_p50_ms=10.0,
        latency_p99_ms=30.0,
    )


def target(prefix: str = "Babc123", base_url: str = "http://127.0.0.1:1") -> LoadTarget:
    return LoadTarget(
        base_url=base_url,
        headers=submit_headers("tenant-key"),
        templates=body_templates(SELLER, count=4),
        order_prefix=prefix,
    )


def sample_report(*, rows_on: int = 1_000) -> Report:
    report = Report(
        scenario="durable-accept",
        measure="accepted",
        # A label in the report, not a path anything is written to.
        environment={
            "store": "/var/tmp (ext4)",  # noqa: S108
            "generator": "wrk 4.1.0, 1 thread(s)",
        },
    )
    for label, accepted, rows in (("on", 900, rows_on), ("off", 300, 310)):
        durability = DurabilityCheck(rows=rows, acknowledged=accepted)
        report.rows.append(
            Row(
                label=f"group commit {label}",
                settings={"group_commit": label, "synchronous": "FULL"},
                load=load({202: accepted, 503: 1}, socket_errors={"timeout": 2}),
                good_status=202,
                durability=durability,
                notes={"durability": durability.describe()},
            )
        )
        if not durability.ok:
            report.problems.append(f"group commit {label}: {durability.describe()}")
    report.ratios["group commit on / off"] = 3.0
    return report
