"""What the figures were measured on: the store's filesystem, the machine, CPU time."""

# The /tmp and /var/tmp paths here are mount-point test data and labels; nothing is written there.
# ruff: noqa: S108

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from gateway.tools.bench import (
    BenchOptions,
    bench_environment,
    choose_generator,
    filesystem_type,
    process_cpu_seconds,
)

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:21 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw,size=1024k
26 22 254:2 / /var/tmp rw,relatime shared:6 - xfs /dev/vda2 rw
27 22 254:3 / /mnt/my\\040disk rw,relatime shared:7 - btrfs /dev/vdb rw
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/tmp/run-1", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/tmpish/run", "ext4"),
        ("/var/tmp/invoice-gateway-bench", "xfs"),
        ("/mnt/my disk/x", "btrfs"),
        ("/home/someone", "ext4"),
    ],
)
def test_filesystem_type_is_that_of_the_deepest_mount_holding_the_path(
    path: str, expected: str
) -> None:
    """Longest mount-point prefix wins, on whole path components, with octal escapes decoded."""
    assert expected == filesystem_type(Path(path), MOUNTINFO)


def test_process_cpu_seconds_of_ourselves_and_of_nobody() -> None:
    """Our own CPU time is a number (on Linux); an unknown process gives None."""
    if Path("/proc/self/stat").exists():
        assert (process_cpu_seconds(os.getpid()) or 0.0) >= 0.0
    assert process_cpu_seconds(None) is None


def test_environment_names_the_generator_store_filesystem_and_machine(tmp_path: Path) -> None:
    """Every report says what drove the load, where the store was (and on what), and the CPUs."""
    generator = choose_generator(builtin=True)
    options = BenchOptions(scenario="durable-accept", connections=8, store_parent=tmp_path)
    with contextlib.redirect_stderr(io.StringIO()):
        parent, environment = bench_environment(options, generator)
    assert tmp_path == parent
    assert "built-in asyncio/aiohttp" == environment["generator"]
    assert environment["store"].startswith(f"{tmp_path} (")
    assert {"connections", "duration", "cpus", "cpu", "load average"} <= environment.keys()
