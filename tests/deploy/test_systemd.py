"""The systemd unit passes `systemd-analyze verify` without a word: in a scratch root holding
the systemd targets of this machine, the unit, and stand-ins for the programs it runs (the
gateway is not installed under /opt here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import ROOT

UNIT = ROOT / "deploy" / "invoice-gateway.service"
SYSTEM_UNITS = Path("/lib/systemd/system")


def scratch_root(root: Path, unit_text: str) -> None:
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for target in SYSTEM_UNITS.glob("*.target"):
        shutil.copy(target, units / target.name)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/invoice-gateway.service").write_text(unit_text)
    for line in unit_text.splitlines():
        if line.startswith(("ExecStart=", "ExecReload=")):
            program = line.split("=", 1)[1].split()[0]
            stand_in = root / program.lstrip("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("#!/bin/sh\n")
            stand_in.chmod(0o755)


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: run `bash scripts/bootstrap-system.sh` as root")
    return subprocess.run(
        [analyze, "verify", f"--root={root}", "invoice-gateway.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    scratch_root(tmp_path, UNIT.read_text())
    verified = verify(tmp_path)
    assert (0, "", "") == (verified.returncode, verified.stdout, verified.stderr)


def test_verify_would_see_a_misspelt_setting(tmp_path: Path) -> None:
    """The check can fail: a misspelt hardening setting is reported."""
    scratch_root(tmp_path, UNIT.read_text().replace("ProtectSystem=", "ProtectSytem="))
    verified = verify(tmp_path)
    assert "Unknown key 'ProtectSytem'" in verified.stderr


def test_the_unit_is_hardened_and_stops_gracefully() -> None:
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line[:30]
    )
    assert "strict" == settings["ProtectSystem"]
    assert "true" == settings["NoNewPrivileges"]
    assert "invoice-gateway" == settings["StateDirectory"]
    assert settings["User"] not in ("root", "0")
    assert "SIGTERM" == settings["KillSignal"]
    assert int(settings["TimeoutStopSec"]) > 25  # above shutdown.grace_period
    assert "kill -HUP $MAINPID" in settings["ExecReload"]
    # Readiness: `systemctl start` returns once the gateway says READY=1
    # (tests/integration/test_service_manager.py shows it does).
    assert ("notify", "main") == (settings["Type"], settings["NotifyAccess"])
