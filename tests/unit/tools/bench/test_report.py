"""The report: the table for people and the JSON for machines."""

from __future__ import annotations

import json
import re

from gateway.tools.bench import (
    format_table,
)
from tests.unit.tools.bench.samples import sample_report


def test_table_shows_each_run_the_ratio_and_ok() -> None:
    """One line per run with rate, count, latency, rows, verdict and errors; then the ratio."""
    text = format_table(sample_report())
    assert "invoice-gateway bench: durable-accept" in text
    assert re.search(r"group commit on\s+450\.0\s+900\s+10\.0\s+30\.0\s+1000\s+yes\s+503: 1", text)
    assert "socket timeout: 2" in text
    assert "group commit on / off: 3.00x" in text
    assert re.search(r"store\s+/var/tmp \(ext4\)", text)
    assert text.rstrip().endswith("ok")


def test_table_names_a_failed_durability_check() -> None:
    """Fewer rows than 202s shows `NO` and a PROBLEM line, and the report is not ok."""
    report = sample_report(rows_on=899)
    text = format_table(report)
    assert not report.ok
    assert re.search(r"group commit on .*\bNO\b", text)
    assert "PROBLEM: group commit on: 899 rows for 900 acknowledged: MISSING 1" in text


def test_json_report_shape() -> None:
    """The machine-readable report: runs with counts, rates, latency and durability; ratios."""
    document = json.loads(json.dumps(sample_report().to_json()))
    keys = {"scenario", "measure", "ok", "environment", "runs", "ratios", "targets", "problems"}
    assert keys == set(document)
    first = document["runs"][0]
    assert {
        "label": "group commit on",
        "good_status": 202,
        "good": 900,
        "good_per_s": 450.0,
        "statuses": {"202": 900, "503": 1},
        "errors": {"503": 1, "socket timeout": 2},
        "latency_ms": {"p50": 10.0, "p99": 30.0},
        "durability": {"rows": 1000, "acknowledged": 900, "ok": True},
    }.items() <= first.items()
    assert {"group commit on / off": 3.0} == document["ratios"]
    assert document["ok"] is True
