"""The real `invoice-gateway` command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.cli import help_results
from tests.support.processes import ROOT, base_env, gateway_command


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command(*args),
        env=env or base_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_commands() -> None:
    """`--help` names every subcommand."""
    result = run_cli("--help")
    assert 0 == result.returncode
    for command in ("run", "simulate", "check-config", "demo"):
        assert command in result.stdout


def test_every_command_answers_its_help_from_the_package() -> None:
    """`--help` works for every command and subcommand of the tree (walked from the parser, so
    a new one is covered at once): each one's module imports from where the package layout
    puts it. One child process for all of them; `python -m gateway --help` as its own."""
    results = help_results()
    assert {"run", "outbox list", "store backup", "callbacks replay", "status set"} <= set(results)
    failed = {
        words: str(output)[-500:]
        for words, (code, output) in results.items()
        if code != 0 or "usage:" not in str(output)
    }
    assert {} == failed
    top = run_cli("--help")
    assert 0 == top.returncode, top.stderr
    assert "usage:" in top.stdout


def test_check_config_ok() -> None:
    """The default profile checks out with its secrets in the environment."""
    result = run_cli("check-config", "config/gateway.yaml")
    assert 0 == result.returncode, result.stderr
    assert "config/gateway.yaml: OK" in result.stdout
    assert "operations 4 (2 read, 2 submit)" in result.stdout


def test_check_config_ok_for_the_sandbox_profile() -> None:
    """The vendor's sandbox profile checks out: the sandbox API host, the platform's token host."""
    result = run_cli("check-config", "config/sandbox.yaml")
    assert 0 == result.returncode, result.stderr
    assert "config/sandbox.yaml: OK" in result.stdout
    assert "upstream   https://sandbox.nuonuocs.cn (auth: nuonuo-hmac)" in result.stdout
    assert "tokens     https://open.nuonuo.com/accessToken" in result.stdout


def test_check_config_ok_for_the_electron_invoice_profile() -> None:
    """The ElectronInvoice product line's profile checks out: its five operations, the
    platform's API and token hosts."""
    result = run_cli("check-config", "config/electron-invoice.yaml")
    assert 0 == result.returncode, result.stderr
    assert "config/electron-invoice.yaml: OK" in result.stdout
    assert "operations 5 (2 read, 3 submit)" in result.stdout
    assert "upstream   https://sdk.nuonuo.com (auth: nuonuo-hmac)" in result.stdout
    assert "tokens     https://open.nuonuo.com/accessToken" in result.stdout


def test_check_config_names_each_problem(tmp_path: Path) -> None:
    """An invalid file exits 2 and names every bad key."""
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "config" / "gateway.yaml").read_text()
    bad.write_text(text.replace("  timeout: 15s", "  timout: 15s"))
    env = base_env()
    del env["NUONUO_APP_SECRET"]
    result = run_cli("check-config", str(bad), env=env)
    assert 2 == result.returncode
    assert "upstream.timout: unknown key (did you mean 'timeout'?)" in result.stderr
    assert "NUONUO_APP_SECRET is not set" in result.stderr


def test_check_config_refuses_a_key_written_twice(tmp_path: Path) -> None:
    """A key written twice exits 2 like any other problem, naming the key and both lines."""
    twice = tmp_path / "twice.yaml"
    text = (ROOT / "config" / "gateway.yaml").read_text()
    twice.write_text(text.replace("  timeout: 15s\n", "  timeout: 15s\n  timeout: 30s\n"))
    line = text.splitlines().index("  timeout: 15s") + 1
    result = run_cli("check-config", str(twice))
    assert 2 == result.returncode
    assert f"upstream.timeout: written twice, at lines {line} and {line + 1}" in result.stderr
    assert "OK" not in result.stdout


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    """`run` refuses to start on an invalid configuration, saying why."""
    missing = tmp_path / "nope.yaml"
    result = run_cli("run", "--config", str(missing))
    assert 2 == result.returncode
    assert "cannot read the configuration file" in result.stderr
