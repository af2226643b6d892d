"""The memory scenario: reading a process's memory, the target's verdict, the overrides, and one
real run at a tiny size (never asserting on a figure's size)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.tools.bench import BenchError, BenchOptions
from gateway.tools.bench.memory import (
    Memory,
    memory,
    memory_overrides,
    memory_target,
    parse_status_memory,
    process_memory,
)
from tests.support.processes import ROOT

STATUS = """Name:\tpython
VmPeak:\t  300000 kB
VmHWM:\t   97656 kB
VmRSS:\t   48828 kB
Threads:\t3
"""


def test_rss_and_peak_come_from_proc_status_in_megabytes() -> None:
    """`VmRSS` and `VmHWM` are in KiB; the report gives MB (10^6 bytes)."""
    memory_now = parse_status_memory(STATUS)
    assert 50.0 == pytest.approx(memory_now.rss_mb, abs=0.01)
    assert 100.0 == pytest.approx(memory_now.peak_mb, abs=0.01)


def test_a_status_without_the_figures_is_an_error() -> None:
    with pytest.raises(BenchError, match="VmRSS"):
        parse_status_memory("Name:\tpython\n")


def test_this_process_has_a_resident_set() -> None:
    """Read from /proc for a live process: something, never more than its peak."""
    mine = process_memory(os.getpid())
    assert isinstance(mine, Memory)
    assert 0 < mine.rss_mb <= mine.peak_mb


@pytest.mark.parametrize(
    ("rss", "queued", "connections", "met"),
    [(80.0, 1_000_000, 10_000, True), (120.0, 1_000_000, 10_000, False)],
)
def test_the_target_is_judged_at_its_size(
    rss: float, queued: int, connections: int, met: bool
) -> None:
    target = memory_target(rss, queued, connections)
    assert target is not None
    assert (met, f"{rss:.1f} MB", "≤ 100 MB") == (target.met, target.measured, target.goal)
    assert "1,000,000 queued and 10,000 connections" in target.name


def test_a_smaller_run_claims_the_target_only_when_it_misses_it_already() -> None:
    """Within 100 MB at 2,000 queued says nothing about 1,000,000; above it does."""
    assert memory_target(50.0, 2_000, 50) is None
    missed = memory_target(120.0, 2_000, 50)
    assert missed is not None
    assert not missed.met
    assert "the target is set for 1,000,000" in missed.name


def test_the_gateway_admits_every_connection_and_keeps_idle_ones_past_the_reading() -> None:
    """Room for the connections and the harness's own polls; an idle timeout of 10 minutes;
    the circuit, if it opens, stays open; no probe calls the platform."""
    overrides = memory_overrides(10_000)
    assert (10_100, "10m") == (
        overrides["limits.max_connections"],
        overrides["limits.read_timeout"],
    )
    assert ("1h", None) == (
        overrides["resilience.breaker.reset_timeout"],
        overrides["resilience.probe"],
    )


#: Run in a child whose hard limit of open files is lowered to 512 (any process may lower its
#: own), so the check is exercised whatever this machine's limit is.
_LIMITED_CHILD = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))
from gateway.tools.bench.memory import raise_open_files
from gateway.tools.bench.options import BenchError
try:
    raise_open_files(513)
except BenchError as exc:
    print("refused:", exc)
print("raised to", raise_open_files(100), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_more_open_files_than_the_hard_limit_allows_is_an_error() -> None:
    """Asking for more than the hard limit is refused, saying how to raise it; asking for less
    raises the soft limit to the hard one."""
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_CHILD],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert "refused: 513 open files are needed and the hard limit is 512" in done.stdout
    assert "raised to 512 512" in done.stdout


@pytest.mark.integration
def test_a_tiny_memory_run_reports_the_gateways_rss_with_the_queue_kept(
    tmp_path: Path,
) -> None:
    """2,000 queued submissions and 50 idle connections: every connection answered and still
    open after a second idle, the queue untouched, RSS, start-up and idle CPU reported."""
    options = BenchOptions(
        scenario="memory",
        queued=2_000,
        open_connections=50,
        duration_s=1.0,
        store_parent=tmp_path,
    )
    report = asyncio.run(memory(options))
    assert ([], True) == (report.problems, report.ok)
    (row,) = report.rows
    assert (50, 200) == (row.good, row.good_status)
    assert row.durability is not None
    assert (2_000, 2_000) == (row.durability.rows, row.durability.acknowledged)
    rss_mb = float(row.notes["RSS"].split()[0])
    peak_mb = float(row.notes["peak RSS"].split()[0])
    assert 0 < rss_mb <= peak_mb
    assert float(row.notes["start-up"].split()[0]) > 0
    assert "over 1 s idle" in row.notes["gateway CPU"]
    assert all(not target.met for target in report.targets)  # only a target missed is told
    assert "queued" in row.notes["rows by state"]
    assert list(tmp_path.iterdir()) == []
