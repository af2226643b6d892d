"""The Prometheus rules in deploy/prometheus/: promtool accepts them and their unit tests pass,
each alert is unit-tested both firing and not firing and tells on-call what to do, and every
name they read is one the gateway exposes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.generate import BURN_WINDOWS, ERROR_BUDGET, metric_names, recorded_series
from tests.observability.conftest import PROMETHEUS_DIR, RULE_FILES, RULE_TESTS, promtool
from tests.support.processes import ROOT

RUNBOOK = ROOT / "docs" / "runbook.md"


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def relative(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts every rule file."""
    assert RULE_FILES
    result = promtool("check", "rules", *relative(RULE_FILES))
    assert 0 == result.returncode, f"promtool check rules failed:\n{result.stdout}{result.stderr}"


def test_promtool_rule_unit_tests_pass() -> None:
    """`promtool test rules` passes every unit test in deploy/prometheus/tests/."""
    assert RULE_TESTS
    result = promtool("test", "rules", *relative(RULE_TESTS))
    assert 0 == result.returncode, f"promtool test rules failed:\n{result.stdout}{result.stderr}"


def test_promtool_checks_the_example_config() -> None:
    """The example prometheus.yml is valid and loads the rule files."""
    result = promtool("check", "config", str((PROMETHEUS_DIR / "prometheus.yml").relative_to(ROOT)))
    assert 0 == result.returncode, f"promtool check config failed:\n{result.stdout}{result.stderr}"
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


def test_each_alert_is_tested_firing_and_not_firing() -> None:
    """Every alert has a unit test where it fires and one where it stays quiet."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) == fires, "alerts never shown firing"
    assert set(alerts()) == quiet, "alerts never shown staying quiet"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("name", sorted(alerts()))
def test_each_alert_says_what_to_do(name: str) -> None:
    """The alert has a severity, a summary and a description with a first check, each in
    English and in Chinese (the Chinese with the same template values, humanize functions
    included), and a link to a section of the runbook that exists."""
    rule = alerts()[name]
    assert rule["labels"]["severity"] in ("page", "ticket")
    annotations = rule["annotations"]
    values = re.compile(r"\{\{.*?\}\}")
    for english in ("summary", "description"):
        chinese = f"{english}_zh"
        assert annotations[english].strip()
        assert re.search(r"[\u4e00-\u9fff]", annotations[chinese]), f"{chinese} is not Chinese"
        assert sorted(values.findall(annotations[english])) == sorted(
            values.findall(annotations[chinese])
        ), f"{chinese} does not carry the template values of {english}"
        # A folded YAML scalar (`>-`) puts a space at each line end, between Chinese characters.
        folded = re.search(
            r"[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef] [\u4e00-\u9fff]", annotations[chinese]
        )
        assert folded is None, f"{chinese} has a space between Chinese characters: {folded}"
    assert "First check" in annotations["description"]
    assert "首先" in annotations["description_zh"]
    target, _, anchor = annotations["runbook_url"].partition("#")
    assert "docs/runbook.md" == target
    if anchor:
        headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
        assert anchor in {github_anchor(h) for h in headings}, f"no section #{anchor}"


def test_rules_read_only_exposed_or_recorded_names(exposed_series: frozenset[str]) -> None:
    """Every metric a rule reads is exposed by the gateway or recorded by another rule."""
    known = exposed_series | recorded_series()
    unknown = {
        (rule.get("alert") or rule["record"], name)
        for rule in rules()
        for name in metric_names(rule["expr"]) - known
    }
    assert set() == unknown


def test_slo_counts_exactly_the_submit_operations() -> None:
    """The SLO's operation regex matches the `kind: submit` operations of the default profile,
    and nothing else."""
    config = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    text = (PROMETHEUS_DIR / "rules" / "slo.yml").read_text()
    regexes = set(re.findall(r'operation=~"((?:[^"\\]|\\.)*)"', text))
    assert 1 == len(regexes), f"the copies of the operation regex differ: {regexes}"
    # A PromQL double-quoted string unescapes `\\` to `\`; Prometheus anchors the regex.
    pattern = re.compile(regexes.pop().replace("\\\\", "\\"))
    submits = {op["name"] for op in config["operations"] if op["kind"] == "submit"}
    matched = {op["name"] for op in config["operations"] if pattern.fullmatch(op["name"])}
    assert submits == matched


def test_dashboards_and_alerts_share_the_slo() -> None:
    """The burn rates the dashboards draw are the thresholds the SLO alerts use."""
    expected = {round(rate * ERROR_BUDGET, 10) for _, rate in BURN_WINDOWS}
    used = set()
    for name, rule in alerts().items():
        if not name.startswith("GatewayErrorBudgetBurn"):
            continue
        for factor, budget in re.findall(r">\s*\(?([\d.]+)(?:\s*\*\s*([\d.]+))?\)?", rule["expr"]):
            used.add(round(float(factor) * float(budget or 1), 10))
    assert expected == used
