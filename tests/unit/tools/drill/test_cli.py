"""`invoice-gateway drill` arguments: what is refused before anything starts, and what a run
prints and writes (with the drill engine replaced)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import gateway.tools.drill.cli as drill_cli
from gateway.cli.main import main
from gateway.tools.children import ChildStartError
from gateway.tools.drill.checks import check
from gateway.tools.drill.runner import DrillOptions, DrillResult, Event
from gateway.tools.drill.scenarios import SCENARIOS
from tests.unit.tools.drill.books import book, delivered, issued, order

SIMULATOR_ONLY = ("overload", "token-expiry", "month-end")
STAGING_OK = ("outage", "flapping", "answer-lost", "gateway-crash")


@dataclass
class FakeEngine:
    """Stands in for `run_drill`: records the options it got; the check sees `issued`."""

    calls: list[DrillOptions] = field(default_factory=list)
    workdirs: list[Path] = field(default_factory=list)
    issued: dict[str, int] = field(default_factory=lambda: {"A1": 1})

    async def __call__(self, options: DrillOptions, out: Any, workdir: Path) -> DrillResult:
        self.calls.append(options)
        self.workdirs.append(workdir)
        out("00:00.0  gateway up")
        the_book = book(order("A1"))
        return DrillResult(
            options.scenario,
            options,
            1767225600.0,
            the_book,
            check(the_book, delivered(["A1"]), issued(**self.issued)),
            [Event(0.0, "gateway up")],
            None,
            0,
            0,
            [],
            1.0,
            "the simulator",
            {},
        )


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(drill_cli, "run_drill", fake)
    return fake


@pytest.fixture
def no_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


def test_list_prints_every_scenario(capsys: pytest.CaptureFixture[str], engine: FakeEngine) -> None:
    """`--list` exits 0 with one line per scenario and starts nothing."""
    assert 0 == main(["drill", "--list"])
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"\n{name} " in f"\n{out}"
    assert [] == engine.calls


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "no --scenario given"),
        (["--scenario", "blackout"], "unknown scenario 'blackout'"),
    ],
)
def test_missing_or_unknown_scenario_is_usage(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """No scenario, or one nobody knows: exit 2 naming the known ones."""
    assert 2 == main(["drill", *argv])
    err = capsys.readouterr().err
    assert says in err
    assert f"choose one of: {', '.join(SCENARIOS)}" in err
    assert [] == engine.calls


@pytest.mark.parametrize("name", SIMULATOR_ONLY)
def test_simulator_only_scenario_against_staging_is_usage(
    name: str, capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """A scenario that needs the simulator is refused with an upstream, naming usable ones."""
    code = main(
        ["drill", "--scenario", name, "--upstream", "http://127.0.0.1:1", "--confirm-staging"]
    )
    assert 2 == code
    err = capsys.readouterr().err
    assert f"scenario {name!r} needs the simulator" in err
    assert f"run one of: {', '.join(STAGING_OK)}" in err
    assert [] == engine.calls


@pytest.mark.parametrize("url", ["ftp://x", "staging.example", "http://"])
def test_upstream_must_be_an_http_url(
    url: str, capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """Only http(s) URLs with a host are upstreams."""
    code = main(["drill", "--scenario", "outage", "--upstream", url, "--confirm-staging"])
    assert 2 == code
    assert f"--upstream must be an http(s) URL, got {url!r}" in capsys.readouterr().err
    assert [] == engine.calls


@pytest.mark.usefixtures("no_tty")
def test_staging_without_confirmation_and_no_terminal_is_usage(
    capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """Without --confirm-staging and nobody to ask, nothing starts: exit 2 saying what to add."""
    code = main(["drill", "--scenario", "outage", "--upstream", "http://127.0.0.1:1"])
    assert 2 == code
    captured = capsys.readouterr()
    assert "a staging drill issues real test invoices on 127.0.0.1" in captured.err
    assert "add --confirm-staging" in captured.err
    assert "" == captured.out
    assert [] == engine.calls


@pytest.mark.parametrize(("typed", "code"), [("staging.example\n", 0), ("yes\n", 2)])
def test_staging_confirmed_at_the_terminal_by_the_host_name(
    typed: str,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    engine: FakeEngine,
) -> None:
    """At a terminal the host name must be typed; anything else sends nothing."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal(typed))
    argv = ["drill", "--scenario", "outage", "--upstream", "https://staging.example/"]
    assert code == main(argv)
    captured = capsys.readouterr()
    assert "Type the host name to confirm" in captured.out
    if code:
        assert "not confirmed; nothing was sent" in captured.err
        assert [] == engine.calls
    else:
        assert ["https://staging.example/"] == [o.upstream for o in engine.calls]


def test_config_without_upstream_is_usage(
    capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """--config is only for a staging drill."""
    assert 2 == main(["drill", "--scenario", "outage", "--config", "config/gateway.yaml"])
    assert "--config is for a staging drill (with --upstream)" in capsys.readouterr().err
    assert [] == engine.calls


def test_token_url_without_upstream_is_usage(
    capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """--token-url is only for a staging drill (the simulator serves its own tokens)."""
    argv = ["drill", "--scenario", "outage", "--token-url", "http://127.0.0.1:1/accessToken"]
    assert 2 == main(argv)
    assert "--token-url is for a staging drill (with --upstream)" in capsys.readouterr().err
    assert [] == engine.calls


def test_token_url_reaches_a_staging_drill(engine: FakeEngine) -> None:
    """A staging drill is told the token endpoint given with --token-url."""
    argv = [
        "drill",
        "--scenario",
        "outage",
        "--upstream",
        "https://staging.example/",
        "--token-url",
        "https://tokens.staging.example/accessToken",
        "--confirm-staging",
    ]
    main(argv)
    assert ["https://tokens.staging.example/accessToken"] == [o.token_url for o in engine.calls]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--rate", "0"], "must be between 0 and 1000 invoices/s, got 0"),
        (["--rate", "many"], "not a number: 'many'"),
        (["--time-scale", "100"], "must be between 0.1 and 20, got 100"),
        (["--time-scale", "0.05"], "must be between 0.1 and 20, got 0.05"),
    ],
)
def test_rate_and_time_scale_out_of_range_are_argument_errors(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse refuses them: exit 2 with the reason."""
    with pytest.raises(SystemExit) as exit_info:
        main(["drill", "--scenario", "outage", *argv])
    assert 2 == exit_info.value.code
    assert says in capsys.readouterr().err


def test_a_run_prints_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """A passing run exits 0, prints the text report and writes Markdown and JSON; the
    scenario handed to the engine is the scaled one."""
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    argv = ["--scenario", "outage", "--time-scale", "0.5", "--rate", "7", "--seed", "3"]
    assert 0 == main(["drill", *argv, "--report", str(md), "--json", str(js)])
    [options] = engine.calls
    [workdir] = engine.workdirs
    assert workdir.name.startswith("invoice-gateway-drill-outage-")
    assert not workdir.exists()  # removed without --keep
    assert (20.0, 7.0, 3, None) == (
        options.scenario.traffic_s,
        options.rate,
        options.seed,
        options.upstream,
    )
    out = capsys.readouterr().out
    assert out.startswith("drill outage: ")
    assert "Drill report: outage — PASS" in out
    assert f"report written to {md}" in out
    assert md.read_text(encoding="utf-8").startswith("# Drill report: outage — PASS")
    assert json.loads(js.read_text(encoding="utf-8"))["passed"] is True


def test_keep_keeps_the_working_directory(
    capsys: pytest.CaptureFixture[str], engine: FakeEngine
) -> None:
    """--keep leaves the working directory (logs, config, store) and says where it is."""
    assert 0 == main(["drill", "--scenario", "flapping", "--keep"])
    [workdir] = engine.workdirs
    try:
        assert workdir.is_dir()
        assert f"invoice-gateway drill: kept {workdir}" in capsys.readouterr().err
    finally:
        workdir.rmdir()


def test_a_failing_run_exits_1(capsys: pytest.CaptureFixture[str], engine: FakeEngine) -> None:
    """A drill whose check fails exits 1, with the report printed."""
    engine.issued = {}
    assert 1 == main(["drill", "--scenario", "outage"])
    out = capsys.readouterr().out
    assert "Drill report: outage — FAIL" in out
    assert "1 acknowledged but never issued (LOST): A1" in out


def test_a_gateway_that_does_not_start_names_the_config_to_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A staging drill whose gateway refuses its config says which file to check."""

    async def refuses(options: DrillOptions, out: Any, workdir: Path) -> DrillResult:
        raise ChildStartError("the gateway exited with code 2 while starting", "bad key")

    monkeypatch.setattr(drill_cli, "run_drill", refuses)
    config = tmp_path / "mine.yaml"
    staging = ["--upstream", "http://127.0.0.1:1", "--confirm-staging", "--config", str(config)]
    code = main(["drill", "--scenario", "outage", *staging])
    err = capsys.readouterr().err
    assert 1 == code
    assert "bad key" in err
    assert f"invoice-gateway check-config {config}" in err
