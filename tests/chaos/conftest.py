"""The chaos layer: every test is one drill over real processes (simulator, gateway, and the
faults' own processes) that ends with the ledger check.

Default mode (what `make test` runs): each test sends ~22 s of traffic at ~50 submissions/s;
the whole layer takes about 2 minutes on a 2-core machine.

    --chaos-long     longer traffic (90 s), a higher rate (100/s), more kills and faults
    --chaos-runs N   run each chaos test N times, each run with its own seed (run0, run1, …)

    .venv/bin/pytest tests/chaos --chaos-long --chaos-runs 3 -s

Every run's counts (the check's summary, kills, faults hit, client answers by status) are
printed at the end of the session, so a CI log shows them whether the run passed or not.
"""

from __future__ import annotations

import pytest

from tests.chaos.drills import RUN_LINES, ChaosMode
from tests.conftest import COUNTS_PROPERTY

#: How many of `RUN_LINES` have been attached to a report already.
_attached = 0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "chaos drills (tests/chaos)")
    group.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="chaos drills with longer traffic, a higher rate and more kills",
    )
    group.addoption(
        "--chaos-runs",
        type=int,
        default=1,
        metavar="N",
        help="run each chaos drill N times with different seeds (default 1)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "run_index" in metafunc.fixturenames:
        runs = metafunc.config.getoption("--chaos-runs")
        if runs < 1:
            raise pytest.UsageError("--chaos-runs must be at least 1")
        metafunc.parametrize("run_index", range(runs), ids=[f"run{i}" for i in range(runs)])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos" in str(item.fspath):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> ChaosMode:
    """Default or long mode (`--chaos-long`)."""
    return ChaosMode.long() if request.config.getoption("--chaos-long") else ChaosMode.default()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Each drill's counts line travels with its test's report (to the controller, when the
    tests run in several worker processes), for the summary in tests/conftest.py."""
    report: pytest.TestReport = yield
    global _attached
    report.user_properties.extend((COUNTS_PROPERTY, line) for line in RUN_LINES[_attached:])
    _attached = len(RUN_LINES)
    return report
