from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import Gateway, Simulator


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    """A real simulator process on free ports."""
    with Simulator.start(tmp_path / "sim") as sim:
        yield sim


@pytest.fixture
def gateway(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    """A real gateway process with the default profile, pointed at the simulator."""
    with Gateway.start(tmp_path / "gw", simulator.url) as gw:
        yield gw


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
