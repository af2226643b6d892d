"""The named drill scenarios: consistent timelines, where each can run, and time scaling."""

from __future__ import annotations

import pytest

from gateway.tools.drill.scenarios import SCENARIOS, DrillScenario, crash, describe_scenarios

NAMES = sorted(SCENARIOS)
#: Faults that make the platform unreachable or unusable: over by `healthy_from_s`.
OUTAGES = frozenset({"refuse", "http_error", "busy"})


@pytest.fixture(params=NAMES)
def scenario(request: pytest.FixtureRequest) -> DrillScenario:
    return SCENARIOS[request.param]


def test_scenarios_are_the_documented_seven() -> None:
    """The scenarios `--list` and docs name."""
    assert [
        "answer-lost",
        "flapping",
        "gateway-crash",
        "month-end",
        "outage",
        "overload",
        "token-expiry",
    ] == NAMES
    assert all(name == s.name for name, s in SCENARIOS.items())


def test_steps_are_sorted_and_within_the_traffic(scenario: DrillScenario) -> None:
    """Steps run in order, each while the client still sends; the platform is healthy again
    before the traffic ends."""
    times = [step.at_s for step in scenario.steps]
    assert sorted(times) == times
    assert all(0 < t < scenario.traffic_s for t in times)
    assert 0 < scenario.healthy_from_s <= scenario.traffic_s
    assert scenario.steps


def test_outages_are_over_when_the_platform_is_called_healthy(scenario: DrillScenario) -> None:
    """Every outage fault ends by `healthy_from_s` (the drain is measured from there)."""
    for step in scenario.steps:
        if step.rule is not None and step.rule["kind"] in OUTAGES:
            assert step.at_s + step.rule["duration_s"] <= scenario.healthy_from_s, step.what


def test_step_text_names_the_rule_values(scenario: DrillScenario) -> None:
    """Fault steps say their duration in words; no template braces are left."""
    for step in scenario.steps:
        assert "{" not in step.what
        if step.rule is not None and "duration_s" in step.rule:
            assert f"{step.rule['duration_s']:g} s" in step.what


def test_needs_simulator_exactly_for_platform_cooperation() -> None:
    """Busy codes and token revocation need the simulator: overload, token-expiry, month-end."""
    assert {"overload", "token-expiry", "month-end"} == {
        name for name, s in SCENARIOS.items() if s.needs_simulator
    }


def test_scaled_halves_the_timeline() -> None:
    """`scaled(0.5)` halves step times, fault durations, traffic and healthy time, and says the
    new durations in the step text."""
    outage = SCENARIOS["outage"]
    half = outage.scaled(0.5)
    assert (20.0, 14.0) == (half.traffic_s, half.healthy_from_s)
    [step] = half.steps
    assert 4.0 == step.at_s
    assert {"kind": "refuse", "duration_s": 10.0} == dict(step.rule or {})
    assert "platform down: refuses connections for 10 s" == step.what
    assert half.summary.startswith(outage.summary)
    assert "×0.5" in half.summary
    # The original is unchanged.
    assert 20 == (outage.steps[0].rule or {})["duration_s"]


def test_scaled_keeps_crashes_and_rules_without_duration(scenario: DrillScenario) -> None:
    """Every step is scaled in time; crash texts, rule kinds and other values stay."""
    scaled = scenario.scaled(0.4)
    assert len(scenario.steps) == len(scaled.steps)
    assert scenario.needs_simulator == scaled.needs_simulator
    assert scenario.overrides == scaled.overrides
    for before, after in zip(scenario.steps, scaled.steps, strict=True):
        assert pytest.approx(before.at_s * 0.4) == after.at_s
        if before.rule is None:
            assert (before.what, None) == (after.what, after.rule)
            continue
        assert after.rule is not None
        expected = dict(before.rule)
        if "duration_s" in expected:
            expected["duration_s"] = pytest.approx(expected["duration_s"] * 0.4)
        assert expected == dict(after.rule)


def test_scaled_by_one_is_the_same_scenario(scenario: DrillScenario) -> None:
    """Scale 1 changes nothing."""
    assert scenario.scaled(1) is scenario


def test_scaled_steps_still_act() -> None:
    """A scaled crash step keeps its action."""
    crash_step = SCENARIOS["gateway-crash"].steps[1]
    assert crash_step.act is SCENARIOS["gateway-crash"].scaled(2).steps[1].act


def test_with_steps_sorts_extra_steps_in() -> None:
    """Chaos tests' extra steps join the timeline in time order."""
    outage = SCENARIOS["outage"]
    more = outage.with_steps(crash(30.0), crash(1.0), traffic_s=50.0)
    assert [1.0, 8.0, 30.0] == [s.at_s for s in more.steps]
    assert (50.0, outage.healthy_from_s) == (more.traffic_s, more.healthy_from_s)


def test_describe_scenarios_lists_every_name() -> None:
    """`--list` has one line per scenario: its name, then its summary."""
    lines = describe_scenarios().splitlines()
    assert len(SCENARIOS) == len(lines)
    for line, (name, s) in zip(lines, SCENARIOS.items(), strict=True):
        assert line.startswith(name)
        assert line.endswith(s.summary)
