"""The drill engine's refusals before anything runs (the runs themselves: tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.tools.children import ToolError
from gateway.tools.drill import runner
from gateway.tools.drill.relay import FaultRelay
from gateway.tools.drill.runner import DrillError, DrillOptions, run_drill
from gateway.tools.drill.scenarios import SCENARIOS

STAGING = {"NUONUO_APP_KEY": "k", "NUONUO_APP_SECRET": "s", "NUONUO_USER_TAX": "t"}


async def test_staging_without_credentials_names_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging drill without the platform credentials in the environment names them all."""
    for name in STAGING:
        monkeypatch.delenv(name, raising=False)
    options = DrillOptions(SCENARIOS["outage"], upstream="http://127.0.0.1:1")
    with pytest.raises(DrillError, match="NUONUO_APP_KEY, NUONUO_APP_SECRET, NUONUO_USER_TAX"):
        await run_drill(options, lambda _line: None, tmp_path)


async def test_unreadable_config_stops_the_relay_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging drill whose config cannot be read fails before any process starts, and the
    fault relay it had opened is closed again."""
    relays: list[Recorded] = []

    class Recorded(FaultRelay):
        closed = False

        async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
            relays.append(self)
            return await super().start(host, port)

        async def close(self) -> None:
            self.closed = True
            await super().close()

    for name, value in STAGING.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runner, "FaultRelay", Recorded)
    options = DrillOptions(
        SCENARIOS["outage"], upstream="http://127.0.0.1:1", config=tmp_path / "missing.yaml"
    )
    with pytest.raises(ToolError, match="cannot read the profile"):
        await run_drill(options, lambda _line: None, tmp_path)
    assert [True] == [relay.closed for relay in relays]
