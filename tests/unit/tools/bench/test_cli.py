"""The command line: options, exit codes, and one real run (never asserting on speed)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.tools.bench import (
    DEFAULT_POSTGRES_URL,
    SCENARIOS,
    BenchOptions,
    Report,
    Scenario,
    configure_parser,
    run_bench,
)
from tests.support.postgres import server_url
from tests.support.processes import ROOT
from tests.unit.tools.bench.samples import sample_report


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def test_parser_defaults_and_the_registered_scenario() -> None:
    """durable-accept is registered; 10 s, 64 connections, both group-commit settings."""
    args = parse("--scenario", "durable-accept")
    assert ("durable-accept", 10.0, 64, "both", False) == (
        args.scenario,
        args.duration,
        args.connections,
        args.group_commit,
        args.json,
    )
    assert "durable-accept" in SCENARIOS


OTHER_SERVER = "postgresql://bench@db.example:6432/postgres"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), None),
        (("--postgres",), DEFAULT_POSTGRES_URL),
        (("--postgres", OTHER_SERVER), OTHER_SERVER),
        (("--postgres", "postgres://bench@db/postgres"), "postgres://bench@db/postgres"),
    ],
    ids=["absent", "local-server", "postgresql-url", "postgres-url"],
)
def test_postgres_is_off_the_local_server_or_a_url(
    argv: tuple[str, ...], expected: str | None
) -> None:
    """Without --postgres SQLite only; alone it names the local server; a URL names another."""
    assert expected == parse("--scenario", "durable-accept", *argv).postgres


def test_duration_takes_seconds_or_a_unit() -> None:
    """--duration reads `90`, `90s` and `1.5m` alike."""
    assert [90.0] * 3 == [
        parse("--scenario", "durable-accept", "--duration", d).duration
        for d in ("90", "90s", "1.5m")
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ("--scenario", "nope"),
        ("--scenario", "durable-accept", "--connections", "0"),
        ("--scenario", "durable-accept", "--duration", "-1"),
        ("--scenario", "durable-accept", "--group-commit", "maybe"),
        ("--scenario", "durable-accept", "--postgres", "sqlite:///tmp/x.db"),
        (),
    ],
)
def test_parser_refuses_bad_arguments(argv: tuple[str, ...]) -> None:
    """Unknown scenarios, non-positive numbers and bad choices are usage errors."""
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as raised:
        parse(*argv)
    assert 2 == raised.value.code


@pytest.fixture
def fake_scenario(monkeypatch: pytest.MonkeyPatch) -> list[BenchOptions]:
    seen: list[BenchOptions] = []

    async def run(options: BenchOptions) -> Report:
        seen.append(options)
        return sample_report(rows_on=899 if options.connections == 13 else 1_000)

    monkeypatch.setitem(SCENARIOS, "fake", Scenario("fake", "a test double", run))
    return seen


def test_run_bench_prints_json_and_exits_0_when_every_check_holds(
    fake_scenario: list[BenchOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the report alone on stdout; the options reach the scenario."""
    code = run_bench(
        parse(
            "--scenario", "fake", "--json", "--duration", "3", "--group-commit", "on", "--postgres"
        )
    )
    assert 0 == code
    assert "durable-accept" == json.loads(capsys.readouterr().out)["scenario"]
    seen = fake_scenario[0]
    assert (3.0, "on", DEFAULT_POSTGRES_URL) == (seen.duration_s, seen.group_commit, seen.postgres)


def test_run_bench_exits_1_when_a_check_fails(
    fake_scenario: list[BenchOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    """A durability mismatch is an error: exit 1, with the table saying why."""
    assert 1 == run_bench(parse("--scenario", "fake", "--connections", "13"))
    assert "PROBLEM" in capsys.readouterr().out


def test_run_bench_refuses_a_store_dir_that_is_not_a_directory(
    fake_scenario: list[BenchOptions], tmp_path: Path
) -> None:
    """--store-dir must exist; nothing runs otherwise."""
    with contextlib.redirect_stderr(io.StringIO()):
        code = run_bench(parse("--scenario", "fake", "--store-dir", str(tmp_path / "nope")))
    assert (2, []) == (code, fake_scenario)


# -- one real run -------------------------------------------------------------------------------


def python_m(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m ARGV` from the checkout, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    "command", [("gateway", "bench"), ("gateway.tools.bench",)], ids=["subcommand", "module"]
)
def test_help_from_the_subcommand_and_the_module(command: tuple[str, ...]) -> None:
    """`invoice-gateway bench --help` and `python -m gateway.tools.bench --help` both work."""
    completed = python_m(*command, "--help", timeout=30)
    assert 0 == completed.returncode, completed.stderr
    assert "--scenario {" + ",".join(sorted(SCENARIOS)) + "}" in completed.stdout


@pytest.mark.integration
def test_a_short_durable_accept_run_accepts_and_keeps_every_submission() -> None:
    """2 s with the circuit open on SQLite, then on PostgreSQL: exit 0, submissions accepted,
    every 202 in the store, the ratio, and the scratch database dropped."""
    argv = ["gateway", "bench", "--scenario", "durable-accept", "--duration", "2"]
    argv += ["--connections", "8", "--group-commit", "on", "--postgres", server_url(), "--json"]
    completed = python_m(*argv, timeout=90)
    assert 0 == completed.returncode, completed.stderr + completed.stdout
    report = json.loads(completed.stdout)
    assert ("durable-accept", True, []) == (report["scenario"], report["ok"], report["problems"])
    sqlite, postgres = report["runs"]
    assert {"store": "sqlite", "group_commit": "on", "synchronous": "FULL"} == sqlite["settings"]
    assert "postgresql" == postgres["settings"]["store"]
    for run in (sqlite, postgres):
        assert run["good"] > 0
        assert run["good"] == run["statuses"]["202"] == run["outcomes"].get("queued")
        assert run["durability"]["ok"] is True
        assert run["durability"]["rows"] >= run["durability"]["acknowledged"] >= run["good"]
        assert run["latency_ms"]["p50"] is not None
    assert "PostgreSQL CPU" in postgres["notes"]
    assert {"postgresql / sqlite group commit on"} == set(report["ratios"])
    assert "generator" in report["environment"]
    assert "synchronous_commit=" in report["environment"]["postgresql"]
    assert "circuit open" in completed.stderr
    assert "dropped the scratch database gwbench_" in completed.stderr
