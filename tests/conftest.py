"""What every test run shares: before the first test, the PostgreSQL databases that killed runs
left behind are dropped (tests/support/postgres.py names each run's `gwtest_<run>_…`); at the
end, the counts of every chaos drill are printed (they arrive with the tests' reports, so they
are shown also when the tests ran in several worker processes)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support import postgres


def pytest_sessionstart(session: pytest.Session) -> None:
    """`drop_leftovers()`, one connection, when that is cheap and safe: the local server already
    answers (it is not started for this), no other pytest runs on this machine (its databases
    are not leftovers), and GATEWAY_TEST_POSTGRES names no other server (a shared one holds
    other machines' runs). Whatever fails here is left to the tests that need PostgreSQL."""
    if os.environ.get("GATEWAY_TEST_POSTGRES") or _other_pytest_running():
        return
    address = urlsplit(postgres.DEFAULT_URL)
    ready = shutil.which("pg_isready")
    if ready is None:
        return
    probe = [ready, "-q", "-t", "1", "-h", str(address.hostname), "-p", str(address.port)]
    if subprocess.run(probe, check=False, timeout=10).returncode != 0:
        return
    try:
        # Checked here, outside an event loop: `server_url()` probes with an `asyncio.run`.
        postgres.server_url()
        dropped = asyncio.run(asyncio.wait_for(postgres.drop_leftovers(), 15))
    except (OSError, asyncpg.PostgresError, RuntimeError, TimeoutError) as exc:
        _say(session, f"PostgreSQL: could not drop earlier runs' test databases: {exc}")
        return
    if dropped:
        _say(session, f"PostgreSQL: dropped {dropped} test database(s) left by killed runs")


#: The report property a chaos drill's counts line travels in (tests/chaos/conftest.py).
COUNTS_PROPERTY = "chaos-counts"
_COUNTS: list[str] = []
#: The report property the admin fuzzing's case counts travel in (test_admin_fuzz.py).
FUZZ_COUNTS_PROPERTY = "fuzz-counts"
_FUZZ_COUNTS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _COUNTS.extend(str(v) for name, v in report.user_properties if name == COUNTS_PROPERTY)
    if report.when == "call":
        _FUZZ_COUNTS.extend(
            str(v) for name, v in report.user_properties if name == FUZZ_COUNTS_PROPERTY
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FUZZ_COUNTS:
        terminalreporter.section("admin API fuzzing: cases sent")
        for line in _FUZZ_COUNTS:
            terminalreporter.write_line(line)
    if not _COUNTS:
        return
    terminalreporter.section("chaos drills: counts of every run")
    for line in _COUNTS:
        terminalreporter.write_line(line)


def _other_pytest_running() -> bool:
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names = [Path(arg.decode(errors="replace")).name for arg in argv]
        if any(name in ("pytest", "py.test") for name in names) or any(
            a == "-m" and b == "pytest" for a, b in itertools.pairwise(names)
        ):
            return True
    return False


def _say(session: pytest.Session, line: str) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
