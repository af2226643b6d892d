"""Scenario `all`: the reports of every scenario combined, the ratio only a whole run can give,
and one seconds-long real run of every scenario (the smoke run `make test` keeps: each scenario
produces its rows; never an assertion on speed)."""

from __future__ import annotations

import json

import pytest

from gateway.tools.bench import Report, Row, TargetCheck, combine
from gateway.tools.bench.suite import DURABLE_RATIO, ORDER
from tests.unit.tools.bench.samples import load
from tests.unit.tools.bench.test_cli import python_m


def report(scenario: str, label: str, good: int, status: int = 200, **environment: str) -> Report:
    made = Report(scenario, "ok", {"cpus": "2", **environment})
    made.rows.append(Row(label=label, settings={}, load=load({status: good}), good_status=status))
    made.targets.append(TargetCheck("a target", "1.00x", "≥ 1.00x", True))
    return made


def test_combined_rows_ratios_targets_and_problems_name_their_scenario() -> None:
    """Durable acceptance 1,000/s against a reference proxy at 4,000/s: 0.25x, not met; every
    row, target and problem says which scenario it is from; an environment value that differs
    between scenarios is kept under the scenario's name."""
    passing = report("pass-through", "reference proxy", 8_000)
    durable = report("durable-accept", "sqlite, group commit on", 2_000, 202, store="/srv/disk")
    durable.problems.append("durability check failed")
    combined = combine({"pass-through": passing, "durable-accept": durable})
    assert ["pass-through: reference proxy", "durable-accept: sqlite, group commit on"] == [
        row.label for row in combined.rows
    ]
    assert ["durable-accept: durability check failed"] == combined.problems
    assert "/srv/disk" == combined.environment["durable-accept: store"]
    assert 0.25 == pytest.approx(combined.ratios[DURABLE_RATIO])
    *named, durable_target = combined.targets
    assert ["pass-through: a target", "durable-accept: a target"] == [t.name for t in named]
    assert (DURABLE_RATIO, "0.25x", False) == (
        durable_target.name,
        durable_target.measured,
        durable_target.met,
    )


def test_without_both_runs_there_is_no_durable_ratio() -> None:
    """Only pass-through (or a durable run without group commit): no ratio is made up."""
    combined = combine({"pass-through": report("pass-through", "reference proxy", 8_000)})
    assert DURABLE_RATIO not in combined.ratios
    assert [] == [t for t in combined.targets if t.name == DURABLE_RATIO]


@pytest.mark.integration
def test_a_seconds_long_run_of_every_scenario_produces_every_row() -> None:
    """`bench --scenario all` at a tiny size: exit 0, rows from each scenario, the targets of
    each scenario (met or not; memory's says nothing about a run this small), and the
    durable-accept / reference proxy ratio."""
    argv = ["gateway", "bench", "--scenario", "all", "--duration", "1", "--connections", "4"]
    argv += ["--group-commit", "on", "--backlog", "100", "--rate", "100", "--queued", "300"]
    completed = python_m(*argv, "--open-connections", "20", "--json", timeout=240)
    assert 0 == completed.returncode, completed.stderr[-3000:] + completed.stdout[-3000:]
    document = json.loads(completed.stdout)
    assert ("all", True, []) == (document["scenario"], document["ok"], document["problems"])
    by_scenario: dict[str, list[str]] = {}
    for run in document["runs"]:
        scenario, _, label = run["label"].partition(": ")
        by_scenario.setdefault(scenario, []).append(label)
        assert run["good"] > 0, run["label"]
    assert list(ORDER) == list(by_scenario)
    assert 6 == len(by_scenario["pass-through"])
    assert ["sqlite, group commit on"] == by_scenario["durable-accept"]
    assert 2 == len(by_scenario["drain"])
    assert 1 == len(by_scenario["memory"])
    targets = {target["name"].partition(": ")[0] for target in document["targets"]}
    assert {"pass-through", "drain", DURABLE_RATIO} <= targets
    assert DURABLE_RATIO in document["ratios"]
