"""The Grafana dashboards in dashboards/: importable JSON, a query on every panel, only metrics a
real gateway exposes (or the rules record), a layout the SDK's builders cannot bend, and up to
date with their generator."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from grafana_foundation_sdk.builders import dashboard

from dashboards.generate import (
    OUTPUTS,
    expressions,
    graph,
    metric_names,
    place,
    query,
    recorded_series,
)
from tests.support.processes import ROOT

DASHBOARDS = sorted(OUTPUTS)


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "dashboards" / name).read_text()))


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_importable(name: str) -> None:
    """Grafana can import it: the schema of the Grafana release the pinned SDK build models
    (11.6: 41), a uid and title, the data source and the tenant and operation filters as
    variables."""
    board = load(name)
    assert 41 == board["schemaVersion"]
    assert board["uid"]
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert "datasource" == variables["datasource"]["type"]
    assert "prometheus" == variables["datasource"]["query"]
    for label in ("tenant", "operation"):
        variable = variables[label]
        assert "query" == variable["type"]
        assert variable["definition"].startswith("label_values(")
        assert f", {label})" in variable["definition"]
        assert "${datasource}" == variable["datasource"]["uid"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_has_a_query_on_the_variable_datasource(name: str) -> None:
    """No panel is empty, and every panel and query uses the `${datasource}` variable."""
    board = load(name)
    assert board["panels"]
    for panel in board["panels"]:
        assert "${datasource}" == panel["datasource"]["uid"], panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert "${datasource}" == target["datasource"]["uid"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panels_fit_the_grid_without_overlap(name: str) -> None:
    """Every panel lies within Grafana's 24 columns, and no two overlap."""
    cells: dict[tuple[int, int], str] = {}
    ids = []
    for panel in load(name)["panels"]:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", DASHBOARDS)
def test_queries_use_only_metrics_the_gateway_exposes(
    name: str, exposed_series: frozenset[str]
) -> None:
    """Each metric a query names is exposed by a real gateway's /metrics or recorded by
    deploy/prometheus/rules."""
    known = exposed_series | recorded_series()
    used = {metric for expr in expressions(load(name)) for metric in metric_names(expr)}
    assert used, "no metric names found: the PromQL reader is broken"
    assert set() == used - known


def test_metric_names_reads_promql() -> None:
    """The PromQL reader finds selected metrics, not functions, labels, keywords or variables."""
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{op=~"$op", x="b_total"}'
        "[$__rate_interval]))) / ignoring (result) group_left sum(b:rec:ratio offset 5m)"
        ' and on () (max(c) == bool 1) or label_replace(d, "dst", "$1", "src", "(.*)")'
    )
    assert {"a_bucket", "b:rec:ratio", "c", "d"} == metric_names(expr)


def test_a_row_that_does_not_fill_the_grid_is_refused() -> None:
    """The SDK starts a new row only once 24 columns are used, so a narrower row would shift
    every panel after it: generating refuses it."""
    row = [graph("left", "", query("up"), width=12), graph("right", "", query("up"), width=8)]
    with pytest.raises(ValueError, match="20 columns wide"):
        place(dashboard.Dashboard("rows"), [row])


def test_a_panel_wider_than_the_grid_fails_when_generating() -> None:
    """The SDK's builders check what they are given: a panel 25 columns wide is an error when
    the dashboards are generated, not a broken dashboard in Grafana."""
    with pytest.raises(ValueError, match="w must be <= 24"):
        graph("too wide", "", query("up"), width=25)


def test_generated_files_are_up_to_date() -> None:
    """`dashboards/generate.py --check` passes: the JSON is what the generator writes."""
    result = subprocess.run(
        [sys.executable, "dashboards/generate.py", "--check"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
