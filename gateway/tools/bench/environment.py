"""What the figures were measured on: where the runs' stores live (and on what filesystem), the
machine, the processes' CPU time, and the environment block every report opens with."""

from __future__ import annotations

import contextlib
import os
import platform as platform_module
import re
import tempfile
from pathlib import Path
from typing import Final

from gateway.tools.bench.generators import LoadGenerator
from gateway.tools.bench.options import BenchOptions, say

#: Filesystems where fsync returns without touching a disk.
MEMORY_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs"})


_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def filesystem_type(path: Path, mountinfo: str) -> str:
    """The type of the filesystem holding `path`, from `/proc/self/mountinfo` text."""
    target = str(path.resolve())
    best, best_type = "", "unknown"
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        # Mount points escape space, tab, newline and backslash as octal (`\040`).
        mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fstype
    return best_type


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` on this machine ("unknown" when unreadable)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    return filesystem_type(path, mountinfo)


def choose_store_parent(explicit: Path | None) -> tuple[Path, str]:
    """Where the runs' directories go, and that filesystem's type.

    The system temporary directory unless it is in memory (tmpfs), then `/var/tmp`.
    """
    if explicit is not None:
        return explicit, filesystem_of(explicit)
    default = Path(tempfile.gettempdir())
    fstype = filesystem_of(default)
    if fstype in MEMORY_FILESYSTEMS:
        fallback = Path("/var/tmp")  # noqa: S108 — a local disk for a real fsync, by design
        if fallback.is_dir() and filesystem_of(fallback) not in MEMORY_FILESYSTEMS:
            return fallback, filesystem_of(fallback)
    return default, fstype


def machine_description() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count() or 0),
        "cpu": cpu or platform_module.processor() or "unknown",
        "system": f"{platform_module.system()} {platform_module.release()}",
        "python": platform_module.python_version(),
    }


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process `pid` so far (Linux `/proc`), None when unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        # Fields after the command name (which may hold spaces) start at field 3 (state).
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def bench_environment(
    options: BenchOptions, generator: LoadGenerator
) -> tuple[Path, dict[str, str]]:
    """Where the runs' directories go, and what a reader needs to compare figures across runs."""
    parent, fstype = choose_store_parent(options.store_parent)
    store = f"{parent} ({fstype})"
    if fstype in MEMORY_FILESYSTEMS:
        store += " - fsync costs nothing here, so durable figures are overstated; see --store-dir"
    say(f"store under {store}; load from {generator.name}")
    load_1, load_5, load_15 = os.getloadavg()
    return parent, {
        "generator": generator.name,
        "connections": str(options.connections),
        "duration": f"{options.duration_s:g} s per run",
        "store": store,
        **machine_description(),
        "load average": f"{load_1:.2f} {load_5:.2f} {load_15:.2f} before the runs",
    }
