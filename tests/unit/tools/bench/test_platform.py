"""The children of a measured run: the default profile with the scenario's overrides."""

from __future__ import annotations

from gateway.tools.bench import (
    apply_overrides,
)


def test_overrides_set_nested_keys_and_none_switches_a_section_off() -> None:
    """Dotted keys reach into the profile; None becomes null (e.g. no background probe)."""
    config = {"log": {"level": "info"}, "resilience": {"probe": {"interval": "15s"}}}
    apply_overrides(
        config, {"log.level": "warning", "resilience.probe": None, "outbox.group_commit": False}
    )
    assert {
        "log": {"level": "warning"},
        "resilience": {"probe": None},
        "outbox": {"group_commit": False},
    } == config
