"""The scenario registry and the durable-accept scenario's settings."""

from __future__ import annotations

import pytest

from gateway.tools.bench import (
    SCENARIOS,
    durable_accept_overrides,
    postgres_accept_overrides,
    scenario,
    sqlite_store,
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


def test_on_postgresql_the_store_moves_and_the_sqlite_settings_stay_out() -> None:
    """Same outage profile; only `store_url` differs (SQLite's pragmas do not apply there)."""
    url = "postgresql://postgres@127.0.0.1:5432/gwbench_1_1"
    assert {
        "log.level": "warning",
        "store_url": url,
        "resilience.breaker.reset_timeout": "1h",
        "resilience.probe": None,
    } == postgres_accept_overrides(url)


def test_sqlite_runs_are_named_for_their_group_commit_setting() -> None:
    """Each SQLite run's key, label and reported settings say which one it is."""
    on, off = sqlite_store(group_commit=True), sqlite_store(group_commit=False)
    assert ("sqlite-on", "sqlite, group commit on") == (on.key, on.label)
    assert {"store": "sqlite", "group_commit": "off", "synchronous": "FULL"} == off.settings
    assert off.overrides == durable_accept_overrides(group_commit=False)
    assert on.server_cpu is None


def test_a_scenario_name_can_be_registered_once() -> None:
    """A second registration under the same name is a mistake, caught at import."""
    with pytest.raises(ValueError, match="registered twice"):
        scenario("durable-accept", "again")(SCENARIOS["durable-accept"].run)
