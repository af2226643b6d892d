"""A small filesystem for the store, and filling it up: the full-disk faults of the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

CHUNK = b"\0" * 65536


def mount_small_fs(where: Path, size: str = "4m") -> None:
    """A tmpfs of `size` at `where` (needs root, as CI runs); `unmount` it in a finally."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(filler: Path) -> int:
    """Grow `filler` until the filesystem is full; the bytes written. Unbuffered, so closing
    the file never has a last write to fail."""
    written = 0
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                written += out.write(CHUNK)
        except OSError:
            pass
    return written
