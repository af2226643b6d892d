"""The scenario registry and the durable-accept scenario's settings."""

from __future__ import annotations

import pytest

from gateway.tools.bench import (
    SCENARIOS,
    durable_accept_overrides,
    scenario,
)


def test_durable_accept_measures_fsync_per_commit_with_quiet_logs_and_a_circuit_kept_open() -> None:
    """The only differences from the default profile in this scenario, and why they are there."""
    assert {
        "log.level": "warning",
        "outbox.synchronous": "FULL",
        "outbox.group_commit": False,
        "resilience.breaker.reset_timeout": "1h",
        "resilience.probe": None,
    } == durable_accept_overrides(group_commit=False)


def test_a_scenario_name_can_be_registered_once() -> None:
    """A second registration under the same name is a mistake, caught at import."""
    with pytest.raises(ValueError, match="registered twice"):
        scenario("durable-accept", "again")(SCENARIOS["durable-accept"].run)
