"""`invoice-gateway simulate` (and `python -m gateway.tools.simulator`): the simulator as a process.

On start it prints one JSON line to stdout,
`{"event": "simulator listening", "listen": "127.0.0.1:9000", "control": null, "token": null,
...}`,
and runs until SIGTERM or SIGINT, then exits 0. A port that cannot be bound exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
from typing import TextIO

from gateway.quantities import duration, number, whole_number
from gateway.tools.simulator.operations import OPERATIONS
from gateway.tools.simulator.platform import (
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_USER_TAX,
    PlatformSettings,
)
from gateway.tools.simulator.scenarios import SCENARIOS, ScenarioError, parse_scenario
from gateway.tools.simulator.server import HostPort, build_simulator
from gateway.tools.simulator.switches import switches


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to `parser` (a subcommand parser or a standalone one)."""
    parser.add_argument(
        "--listen",
        type=host_port,
        default=("127.0.0.1", 9000),
        metavar="HOST:PORT",
        help="where the platform API (and /_sim/*) listens (default 127.0.0.1:9000)",
    )
    parser.add_argument(
        "--control-listen",
        type=host_port,
        metavar="HOST:PORT",
        help="also serve /_sim/* here; this listener stays up while `refuse` is active",
    )
    parser.add_argument(
        "--token-listen",
        type=host_port,
        metavar="HOST:PORT",
        help="serve /accessToken here only, as the platform's own token host; the API listener "
        "then answers it 404 (counted as token_calls_to_api_host)",
    )
    parser.add_argument(
        "--app-key", help=f"appkey to accept (default $NUONUO_APP_KEY, else {DEMO_APP_KEY})"
    )
    parser.add_argument(
        "--app-secret",
        help="appSecret to verify with (default $NUONUO_APP_SECRET, else a demo value)",
    )
    parser.add_argument(
        "--user-tax",
        help=f"the seller's tax number (default $NUONUO_USER_TAX, else {DEMO_USER_TAX})",
    )
    parser.add_argument(
        "--token-ttl",
        type=duration(0, above=True),
        default=86_400.0,
        metavar="SECONDS",
        help="lifetime of access tokens (default 86400)",
    )
    parser.add_argument(
        "--token-quota",
        type=whole_number(0),
        metavar="N",
        help="tokens /accessToken may issue in total; further calls get 070306 (default unlimited)",
    )
    parser.add_argument(
        "--isv-code",
        action="append",
        type=_isv_code,
        default=[],
        metavar="CODE=TAXNUM",
        help="accept CODE once with grant_type=authorization_code, for the merchant with tax "
        "number TAXNUM, as a service provider's application (repeatable)",
    )
    parser.add_argument(
        "--issue-delay",
        type=duration(0),
        default=1.0,
        metavar="SECONDS",
        help="time from accepted (status 20) to issued or failed (default 1.0)",
    )
    parser.add_argument(
        "--sign-delay",
        type=duration(0),
        default=0.0,
        metavar="SECONDS",
        help="time an issued invoice is signing (status 21) before it is done (default 0)",
    )
    parser.add_argument(
        "--dedup",
        choices=("on", "off"),
        default="on",
        help="on: answer E9106 to a reused orderNo; off: issue it again, as a double (default on)",
    )
    parser.add_argument(
        "--lookup-lag",
        type=duration(0),
        default=0.0,
        metavar="SECONDS",
        help="queryInvoiceResult lists an invoice only this long after it was accepted (default 0)",
    )
    parser.add_argument(
        "--fail-issuance-rate",
        type=number(0, 1),
        default=0.0,
        metavar="SHARE",
        help="share of accepted invoices that end 22, issuance failed (0 to 1, default 0)",
    )
    parser.add_argument(
        "--fail-signing-rate",
        type=number(0, 1),
        default=0.0,
        metavar="SHARE",
        help="share of accepted invoices that end 24, signing failed (0 to 1, default 0)",
    )
    parser.add_argument(
        "--disable-api",
        action="append",
        choices=tuple(OPERATIONS),
        default=[],
        metavar="METHOD",
        help="answer this operation 070302, API not enabled (repeatable)",
    )
    parser.add_argument(
        "--scenario",
        type=_scenario,
        metavar="NAME[:key=value,...]",
        help=f"install a named fault scenario at start: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--seed", type=int, help="seed for probabilistic faults, for repeatable runs"
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    settings = PlatformSettings(
        app_key=args.app_key or os.environ.get("NUONUO_APP_KEY") or DEMO_APP_KEY,
        app_secret=args.app_secret or os.environ.get("NUONUO_APP_SECRET") or DEMO_APP_SECRET,
        user_tax=args.user_tax or os.environ.get("NUONUO_USER_TAX") or DEMO_USER_TAX,
        token_ttl_s=args.token_ttl,
        token_quota=args.token_quota,
        isv_codes=dict(args.isv_code),
        issue_delay_s=args.issue_delay,
        sign_delay_s=args.sign_delay,
        dedup=args.dedup == "on",
        lookup_lag_s=args.lookup_lag,
        fail_issuance_rate=args.fail_issuance_rate,
        fail_signing_rate=args.fail_signing_rate,
        disabled_apis=frozenset(args.disable_api),
    )
    return asyncio.run(_serve(args, settings))


async def _serve(args: argparse.Namespace, settings: PlatformSettings) -> int:
    simulator = build_simulator(
        settings,
        rng=random.Random(args.seed),
        scenario=args.scenario,
        own_token_host=args.token_listen is not None,
    )
    try:
        await simulator.start(args.listen, args.control_listen, args.token_listen)
    except OSError as exc:
        await simulator.stop()
        _emit({"event": "simulator failed", "error": str(exc)}, sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    control = simulator.control_address
    _emit(
        {
            "event": "simulator listening",
            "listen": format_host_port(simulator.api_address),
            "control": format_host_port(control) if control is not None else None,
            "token": format_host_port(token) if (token := simulator.token_address) else None,
            "scenario": args.scenario,
            "settings": switches(settings),
        },
        sys.stdout,
    )
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await simulator.stop()
    _emit({"event": "simulator stopped"}, sys.stdout)
    return 0


def host_port(text: str) -> HostPort:
    """`HOST:PORT` (IPv6 as `[::1]:9000`) for argparse."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def format_host_port(address: HostPort) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _emit(event: dict[str, object], stream: TextIO) -> None:
    print(json.dumps(event), file=stream, flush=True)


def _isv_code(text: str) -> tuple[str, str]:
    code, sep, tax_num = text.partition("=")
    if not sep or not code or not tax_num:
        raise argparse.ArgumentTypeError(f"expected CODE=TAXNUM, got {text!r}")
    return code, tax_num


def _scenario(text: str) -> str:
    try:
        parse_scenario(text)
    except ScenarioError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
