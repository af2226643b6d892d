"""The command line: flags, the start-up line, clean exit on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys

import aiohttp
import pytest

from gateway.tools.simulator.cli import configure_parser, host_port
from tests.support.processes import ROOT

REPO = ROOT


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_documentation():
    """Without flags: API on 127.0.0.1:9000, no control listener, 1 s issuance, 1 day tokens,
    deduplication on, no lookup lag, no drawn failures, every API enabled."""
    args = parse()

    assert (("127.0.0.1", 9000), None, 86_400.0, None, 1.0, None) == (
        args.listen,
        args.control_listen,
        args.token_ttl,
        args.token_quota,
        args.issue_delay,
        args.scenario,
    )
    assert ("on", 0.0, 0.0, 0.0, 0.0, []) == (
        args.dedup,
        args.lookup_lag,
        args.sign_delay,
        args.fail_issuance_rate,
        args.fail_signing_rate,
        args.disable_api,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9000", ("127.0.0.1", 9000)), ("[::1]:9001", ("::1", 9001))],
)
def test_host_port_parses_ipv4_and_bracketed_ipv6(text, expected):
    """HOST:PORT, with IPv6 hosts in brackets."""
    assert expected == host_port(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "9000"],
        ["--listen", "127.0.0.1:70000"],
        ["--token-ttl", "0"],
        ["--issue-delay", "-1"],
        ["--token-quota", "many"],
        ["--scenario", "meltdown"],
        ["--scenario", "outage:down=0"],
        ["--dedup", "no"],
        ["--lookup-lag", "-1"],
        ["--fail-issuance-rate", "1.5"],
        ["--disable-api", "nuonuo.noSuchThing"],
    ],
)
def test_bad_flags_are_usage_errors(argv, capsys):
    """A malformed flag stops argparse with exit status 2 and a message."""
    with pytest.raises(SystemExit) as caught:
        parse(*argv)

    assert 2 == caught.value.code
    assert "error:" in capsys.readouterr().err


async def start_process(*argv: str, env: dict[str, str] | None = None):
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.tools.simulator",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


async def test_process_announces_itself_serves_and_exits_0_on_sigterm():
    """`python -m gateway.tools.simulator` prints its addresses as JSON, takes credentials from the
    environment, and exits 0 on SIGTERM."""
    process = await start_process(
        "--listen",
        "127.0.0.1:0",
        "--control-listen",
        "127.0.0.1:0",
        env={"NUONUO_APP_KEY": "SDENV00001", "NUONUO_APP_SECRET": "env-secret"},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
        started = json.loads(line)
        async with aiohttp.ClientSession() as session:
            form = {
                "client_id": "SDENV00001",
                "client_secret": "env-secret",
                "grant_type": "client_credentials",
            }
            async with session.post(f"http://{started['listen']}/accessToken", data=form) as reply:
                token_answer = await reply.json()
            async with session.get(f"http://{started['control']}/_sim/health") as reply:
                health = reply.status
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), timeout=10)

    assert "simulator listening" == started["event"]
    assert started["listen"].startswith("127.0.0.1:")
    assert "access_token" in token_answer
    assert 200 == health
    assert 0 == process.returncode
    assert {"event": "simulator stopped"} == json.loads(rest)


async def test_process_exits_1_when_the_port_is_taken():
    """A port already in use is reported on stderr with exit status 1."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = await start_process("--listen", f"127.0.0.1:{port}")
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=10)

    assert 1 == process.returncode
    assert b"" == stdout
    assert "simulator failed" == json.loads(stderr)["event"]
