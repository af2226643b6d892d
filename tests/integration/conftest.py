from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import Gateway, Simulator
from tests.support.postgres import scratch_database_sync, server_url


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


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The gateway's store, once of each kind: a SQLite file in the test's directory, or a
    scratch database on the local PostgreSQL server (dropped afterwards). A test asks for it
    to run on both; the `gateway` fixture stays on SQLite."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    server_url()  # checked out of any event loop, before `scratch_database_sync` runs one
    with scratch_database_sync("outbox") as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
