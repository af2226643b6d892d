"""`invoice-gateway drill` end to end: real simulator and gateway processes, the gateway killed
mid-outage, and a staging drill with the simulator standing in for the staging platform."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.support.harness import Simulator
from tests.support.processes import (
    APP_KEY,
    APP_SECRET,
    ROOT,
    USER_TAX,
    base_env,
    gateway_command,
)

#: A drill at time scale 0.3 takes about 20 s; this bounds a hung one.
DRILL_TIMEOUT_S = 120
STAGING_ENV = ("NUONUO_APP_KEY", "NUONUO_APP_SECRET", "NUONUO_USER_TAX")


def run_drill(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command("drill", *args),
        env=env or base_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DRILL_TIMEOUT_S,
        check=False,
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n"
        f"--- stderr ---\n{result.stderr}"
    )


def read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def test_gateway_crash_drill_passes_with_both_crashes(tmp_path: Path) -> None:
    """The gateway killed twice during an outage loses nothing and issues nothing twice; the
    reports say so."""
    md, js = tmp_path / "R.md", tmp_path / "R.json"
    result = run_drill(
        "--scenario",
        "gateway-crash",
        "--time-scale",
        "0.3",
        "--seed",
        "5",
        "--report",
        str(md),
        "--json",
        str(js),
    )
    assert 0 == result.returncode, said(result)
    document = read_json(js)
    assert document["passed"] is True, document["problems"]
    assert 2 == document["gateway_crashes"]
    assert "the simulator" == document["against"]
    ledger = document["ledger"]
    assert (0, 0, 0, 0) == (
        ledger["lost"],
        ledger["issued_twice"],
        ledger["unanswered"],
        ledger["told_not_issued_but_issued"],
    )
    assert {} == ledger["stuck"]
    submitted = document["client"]["submitted"]
    assert submitted > 0
    assert submitted == ledger["acknowledged"] == ledger["issued_exactly_once"]
    assert ledger["queued"] > 0
    assert document["faults_hit"].get("refuse", 0) >= 1

    report = md.read_text(encoding="utf-8")
    assert report.startswith("# Drill report: gateway-crash — PASS")
    assert "\n## Ledger check\n" in report
    assert "\n## Timeline\n" in report
    timeline = re.findall(r"^- \d\d:\d\d\.\d  (.+)$", report, flags=re.MULTILINE)
    for line in (
        "platform down: refuses connections for 6 s",
        "the gateway is killed (kill -9) while queueing, then restarted",
        "the gateway is killed (kill -9) while draining, then restarted",
    ):
        assert line in timeline, timeline
    assert "Drill report: gateway-crash — PASS" in result.stdout


def test_staging_drill_against_a_stand_in_platform(tmp_path: Path) -> None:
    """Against a staging upstream (the simulator, with the credentials the drill signs with),
    the relay's outage fires and nothing is lost."""
    with Simulator.start(
        tmp_path / "sim",
        "--app-key",
        APP_KEY,
        "--app-secret",
        APP_SECRET,
        "--user-tax",
        USER_TAX,
    ) as sim:
        js = tmp_path / "J.json"
        result = run_drill(
            "--scenario",
            "outage",
            "--time-scale",
            "0.3",
            "--seed",
            "9",
            "--upstream",
            sim.url,
            # The default profile's token host is the platform's; the stand-in serves its own.
            "--token-url",
            f"{sim.url}/accessToken",
            "--confirm-staging",
            "--json",
            str(js),
        )
        assert 0 == result.returncode, said(result)
        ledger_totals = sim.ledger()["totals"]
    document = read_json(js)
    assert document["passed"] is True, document["problems"]
    assert f"the staging upstream {sim.url}" in document["against"]
    assert "fault relay" in document["against"]
    assert document["faults_hit"]["refuse"] >= 1
    assert 0 == document["ledger"]["lost"]
    assert document["ledger"]["issued_exactly_once"] == document["client"]["submitted"] > 0
    # The drill's invoices reached the stand-in platform itself.
    assert ledger_totals["accepted"] >= document["client"]["submitted"]
    assert 0 == ledger_totals["doubles"]


def test_staging_drill_needs_the_platform_credentials(tmp_path: Path) -> None:
    """Without NUONUO_* in its environment a staging drill exits 1 naming them."""
    env = {k: v for k, v in base_env().items() if k not in STAGING_ENV}
    result = run_drill(
        "--scenario",
        "outage",
        "--upstream",
        "http://127.0.0.1:1",
        "--confirm-staging",
        "--json",
        str(tmp_path / "J.json"),
        env=env,
    )
    assert 1 == result.returncode, said(result)
    for name in STAGING_ENV:
        assert name in result.stderr
    assert "staging credentials" in result.stderr
    assert not (tmp_path / "J.json").exists()
