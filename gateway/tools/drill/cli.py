"""`invoice-gateway drill`: run a named outage scenario and print the report.

    invoice-gateway drill --list
    invoice-gateway drill --scenario outage [--report drill.md] [--json drill.json]
    invoice-gateway drill --scenario outage --upstream https://staging.example --confirm-staging

Exit codes: 0 the drill passed (nothing lost, nothing issued twice, nothing stuck), 1 it failed
or could not run, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from gateway.quantities import number
from gateway.tools.children import ChildStartError, ToolError, scratch_dir
from gateway.tools.drill import report
from gateway.tools.drill.runner import DrillOptions, run_drill
from gateway.tools.drill.scenarios import SCENARIOS, describe_scenarios

EXIT_PASS: Final = 0
EXIT_FAIL: Final = 1
EXIT_USAGE: Final = 2


_rate = number(0, 1000, above=True, unit=" invoices/s")


_scale = number(0.1, 20)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", metavar="NAME", help="the scenario to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--rate", type=_rate, default=40.0, help="invoices per second the client sends (40)"
    )
    parser.add_argument(
        "--time-scale",
        type=_scale,
        default=1.0,
        metavar="FACTOR",
        help="stretch the scenario's timeline (2 doubles the outage and the traffic; 0.5 halves)",
    )
    parser.add_argument("--seed", type=int, help="seed for the client and faults (repeatable runs)")
    parser.add_argument(
        "--report", type=Path, metavar="PATH", help="also write the report as Markdown"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs, config, store)"
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="drill against this staging upstream instead of the simulator (sends real requests)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="gateway config for a staging drill (default: config/gateway.yaml)",
    )
    parser.add_argument(
        "--token-url",
        metavar="URL",
        help="the staging platform's token endpoint, if not the config's upstream.auth.token_url",
    )
    parser.add_argument(
        "--dedup",
        choices=("on", "off"),
        default="off",
        help="whether the simulator refuses a reused order number (default off: what the drill "
        "proves is the gateway's own reconciliation, not the platform's duplicate check)",
    )
    parser.add_argument(
        "--confirm-staging",
        action="store_true",
        help="confirm that --upstream is a staging platform where test invoices may be issued",
    )


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(describe_scenarios())
        return EXIT_PASS
    scenario = SCENARIOS.get(args.scenario or "")
    if scenario is not None:
        scenario = scenario.scaled(args.time_scale)
    if scenario is None:
        known = ", ".join(SCENARIOS)
        what = f"unknown scenario {args.scenario!r}" if args.scenario else "no --scenario given"
        print(f"invoice-gateway drill: {what}; choose one of: {known}", file=sys.stderr)
        return EXIT_USAGE
    if args.upstream is not None:
        refusal = _staging_refusal(args, scenario.needs_simulator)
        if refusal:
            print(f"invoice-gateway drill: {refusal}", file=sys.stderr)
            return EXIT_USAGE
    elif args.config is not None or args.token_url is not None:
        option = "--config" if args.config is not None else "--token-url"
        print(
            f"invoice-gateway drill: {option} is for a staging drill (with --upstream)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    options = DrillOptions(
        scenario,
        rate=args.rate,
        seed=args.seed,
        upstream=args.upstream,
        config=args.config,
        token_url=args.token_url,
        dedup=args.dedup == "on",
    )
    print(f"drill {scenario.name}: {scenario.summary}", flush=True)
    prefix = f"invoice-gateway-drill-{scenario.name}-"
    with scratch_dir("drill", prefix, keep=args.keep) as workdir:
        try:
            result = asyncio.run(run_drill(options, _say, workdir))
        except KeyboardInterrupt:
            print("invoice-gateway drill: interrupted; no report", file=sys.stderr)
            return EXIT_FAIL
        except ChildStartError as exc:
            config = str(args.config) if args.config else "config/gateway.yaml"
            print(exc.explain("drill", config), file=sys.stderr)
            return EXIT_FAIL
        except ToolError as exc:
            print(f"invoice-gateway drill: {exc}", file=sys.stderr)
            return EXIT_FAIL
    print()
    print(report.text(result), end="")
    for path, render in ((args.report, report.markdown), (args.json, report.as_json)):
        if path is not None:
            path.write_text(render(result), encoding="utf-8")
            print(f"report written to {path}")
    return EXIT_PASS if result.passed else EXIT_FAIL


def _say(line: str) -> None:
    print(line, flush=True)


def _staging_refusal(args: argparse.Namespace, needs_simulator: bool) -> str | None:
    """Why a staging drill must not start (None: go ahead)."""
    parts = urlsplit(args.upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--upstream must be an http(s) URL, got {args.upstream!r}"
    if args.token_url is not None:
        token = urlsplit(args.token_url)
        if token.scheme not in ("http", "https") or not token.hostname:
            return f"--token-url must be an http(s) URL, got {args.token_url!r}"
    if needs_simulator:
        usable = ", ".join(n for n, s in SCENARIOS.items() if not s.needs_simulator)
        return (
            f"scenario {args.scenario!r} needs the simulator (busy codes and token revocation "
            f"need the platform's cooperation); against a staging upstream run one of: {usable}"
        )
    if args.confirm_staging:
        return None
    if not sys.stdin.isatty():
        return (
            f"a staging drill issues real test invoices on {parts.hostname}; add "
            "--confirm-staging to confirm it is a staging platform"
        )
    answer = input(
        f"This drill issues real test invoices on {parts.hostname}, about "
        f"{args.rate:g} per second for a minute. Type the host name to confirm: "
    )
    return None if answer.strip() == parts.hostname else "not confirmed; nothing was sent"
