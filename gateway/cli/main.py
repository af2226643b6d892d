"""The `invoice-gateway` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway import __version__
from gateway.config import CONFIG_PATH_ENV, GatewayConfig, NuonuoHmacAuthConfig, load_config
from gateway.errors import ConfigError, GatewayError

DEFAULT_CONFIG = "config/gateway.yaml"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _config_path(explicit: str | None) -> str:
    return explicit or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG


def _load(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"invoice-gateway: {path}: {exc}", file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import serve
    from gateway.ops.logs import configure_logging

    path = _config_path(args.config)
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    # Every configured secret (keys, the seller's tax number) is masked wherever it would appear.
    configure_logging(
        config.log.format,
        config.log.level,
        sensitive_values=[ref.value() for _, ref in config.secrets()],
    )
    try:
        run_async(serve(config, config_path=path))
    except GatewayError as exc:
        print(f"invoice-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.outbox.store.urls import masked_url

    path = _config_path(args.path)
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    kinds: dict[str, int] = {}
    for operation in config.operations:
        kinds[operation.kind] = kinds.get(operation.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
    print(f"{path}: OK")
    print(f"  upstream   {config.upstream.url} (auth: {config.upstream.auth.scheme})")
    if config.upstream.backup_url:
        print(f"  backup     {config.upstream.backup_url} (reads only, unless failover is set)")
    auth = config.upstream.auth
    if isinstance(auth, NuonuoHmacAuthConfig):
        print(f"  tokens     {auth.token_endpoint(config.upstream.url)}")
    print(f"  listen     {config.listen}   admin {config.admin.listen}")
    print(f"  store      {masked_url(config.store_url)}")
    print(f"  tenants    {', '.join(t.id for t in config.tenants)}")
    print(
        f"  operations {len(config.operations)} ({summary}); unmatched requests: {config.unmatched}"
    )
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.tools.simulator.cli import run

    return run(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from gateway.tools.bench import run_bench

    return run_bench(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.tools.demo import run_demo

    return run_demo(args)


def _cmd_drill(args: argparse.Namespace) -> int:
    from gateway.tools.drill.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from gateway.cli.oncall import (
        configure_callbacks,
        configure_circuit,
        configure_outbox,
        configure_status,
        configure_token,
    )
    from gateway.cli.store import configure_migrate, configure_store
    from gateway.cli.tenant import configure_tenant
    from gateway.tools.bench import DESCRIPTION as BENCH_DESCRIPTION
    from gateway.tools.bench import configure_parser as configure_bench
    from gateway.tools.demo import configure_parser as configure_demo
    from gateway.tools.drill.cli import configure_parser as configure_drill
    from gateway.tools.simulator.cli import configure_parser as configure_simulator

    parser = argparse.ArgumentParser(
        prog="invoice-gateway",
        description=(
            "Resilience gateway in front of an e-invoice platform: retries, circuit breaking, "
            "a durable outbox for submissions during outages, exactly-once delivery."
        ),
    )
    parser.add_argument("--version", action="version", version=f"invoice-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the gateway",
        description=f"Run the gateway. Config from --config, ${CONFIG_PATH_ENV}, "
        f"or {DEFAULT_CONFIG}; "
        "GATEWAY_LISTEN, GATEWAY_ADMIN_LISTEN, GATEWAY_STORE_URL, GATEWAY_UPSTREAM_URL, "
        "GATEWAY_TOKEN_URL and GATEWAY_ADMIN_TOKEN override it.",
    )
    run.add_argument("--config", metavar="PATH", help="configuration file (YAML)")
    run.set_defaults(handler=_cmd_run)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file and exit",
        description="Validate a configuration file, resolve its secrets, and print a summary. "
        "Exit status 2 when it is invalid, with every problem named by its key.",
    )
    check.add_argument("path", nargs="?", metavar="PATH", help="configuration file (YAML)")
    check.set_defaults(handler=_cmd_check_config)

    simulate = commands.add_parser(
        "simulate",
        help="run the invoice platform simulator (with fault injection)",
        description="Run a stand-in for the invoice platform, with fault injection under /_sim/.",
    )
    configure_simulator(simulate)
    simulate.set_defaults(handler=_cmd_simulate)

    demo = commands.add_parser(
        "demo",
        help="watch the gateway ride out a platform outage",
        description="Start the simulator and the gateway, send traffic through an outage and "
        "recovery, and show what happens live.",
    )
    configure_demo(demo)
    demo.set_defaults(handler=_cmd_demo)

    bench = commands.add_parser(
        "bench",
        help="benchmark the gateway: a named scenario, its figures as a table or JSON",
        description=BENCH_DESCRIPTION,
    )
    configure_bench(bench)
    bench.set_defaults(handler=_cmd_bench)

    drill = commands.add_parser(
        "drill",
        help="rehearse a platform outage: a named scenario, then the report",
        description="Run a named outage scenario through a real gateway (against the simulator, "
        "or a staging upstream with --upstream) and print a report: what the client saw, how "
        "long the drain took, whether anything was lost or issued twice.",
    )
    configure_drill(drill)
    drill.set_defaults(handler=_cmd_drill)

    configure_outbox(
        commands.add_parser(
            "outbox", help="see and repair the outbox: list, show, replay, discard, export, …"
        )
    )
    configure_circuit(
        commands.add_parser("circuit", help="circuit breakers: status, open, close, reset")
    )
    configure_status(
        commands.add_parser(
            "status", help="the line everyone sees on /status: set MESSAGE, clear (incidents)"
        )
    )
    configure_token(
        commands.add_parser(
            "token", help="the platform access token: status, refresh (after a quota refusal)"
        )
    )
    configure_callbacks(
        commands.add_parser(
            "callbacks", help="events sent to the tenants' callback URLs: list, replay"
        )
    )
    configure_tenant(
        commands.add_parser(
            "tenant", help="managed tenant API keys: add, rotate-key, revoke, list, hash-key"
        )
    )
    configure_migrate(commands.add_parser("migrate", help="bring the store's schema up to date"))
    configure_store(
        commands.add_parser(
            "store",
            help="the store itself: copy (e.g. SQLite to PostgreSQL), rotate-key (encryption)",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code: int = args.handler(args)
    except KeyboardInterrupt:
        # Ctrl-C is how people stop the gateway, the simulator and the demo: not an error.
        return EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main())
