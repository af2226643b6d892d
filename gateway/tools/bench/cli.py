"""`invoice-gateway bench` (and `python -m gateway.tools.bench`): the options, and one scenario
run from them to its report. Exit 0 when every check held, 1 otherwise, 2 on usage."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from gateway.outbox.store.urls import is_postgres_url
from gateway.quantities import duration, number, whole_number
from gateway.tools.bench.generators import INSTALL_WRK
from gateway.tools.bench.options import (
    DEFAULT_BACKLOG,
    DEFAULT_CONNECTIONS,
    DEFAULT_DURATION_S,
    DEFAULT_OPEN_CONNECTIONS,
    DEFAULT_QUEUED,
    DEFAULT_RATE,
    BenchOptions,
    say,
)
from gateway.tools.bench.postgres import DEFAULT_POSTGRES_URL
from gateway.tools.bench.report import format_table
from gateway.tools.bench.scenarios import SCENARIOS
from gateway.tools.children import ChildStartError, ToolError

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

#: What `invoice-gateway bench --help` says the command does.
DESCRIPTION: Final = (
    "Run a named benchmark scenario against a fresh simulator and gateway and report the "
    "figures. Never part of the tests: timing belongs here."
)

_positive_duration = duration(0, above=True)


_positive_int = whole_number(1)


_positive_rate = number(0, above=True, unit="/s")


def _postgres_url(text: str) -> str:
    if not is_postgres_url(text):
        raise argparse.ArgumentTypeError(
            f"expected postgresql://USER@HOST:PORT/DB (a maintenance database), got {text!r}"
        )
    return text


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its subcommand parser."""
    # argparse formats help with `%`: a summary's "±5 %" must not be taken for a placeholder.
    listing = "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values()).replace("%", "%%")
    parser.add_argument(
        "--scenario",
        required=True,
        choices=sorted(SCENARIOS),
        help=f"what to measure ({listing})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_duration,
        default=DEFAULT_DURATION_S,
        metavar="SECONDS",
        help=f"length of each measured run (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--connections",
        type=_positive_int,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help=f"concurrent client connections (default {DEFAULT_CONNECTIONS})",
    )
    parser.add_argument(
        "--group-commit",
        choices=("on", "off", "both"),
        default="both",
        help="durable-accept: measure with group commit, without, or both and their ratio "
        "(default both)",
    )
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=DEFAULT_POSTGRES_URL,
        type=_postgres_url,
        metavar="URL",
        help="durable-accept: also measure with the store on PostgreSQL, in a scratch database "
        "created and dropped on the server at URL (its maintenance database; without URL: "
        f"{DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--store-dir",
        type=Path,
        metavar="DIR",
        help="where the runs' stores go (default: the temporary directory, or /var/tmp when "
        "that is tmpfs)",
    )
    parser.add_argument(
        "--builtin-generator",
        action="store_true",
        help=f"use the built-in asyncio generator even when wrk is installed ({INSTALL_WRK})",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's directory (config, store, logs)"
    )
    parser.add_argument(
        "--backlog",
        type=_positive_int,
        default=DEFAULT_BACKLOG,
        metavar="N",
        help=f"drain: submissions queued before the unthrottled run (default {DEFAULT_BACKLOG})",
    )
    parser.add_argument(
        "--rate",
        type=_positive_rate,
        default=DEFAULT_RATE,
        metavar="PER_S",
        help=f"drain: the throttled run's dispatcher rate, deliveries/s (default "
        f"{DEFAULT_RATE:g}); it delivers what this rate does in --duration, at most --backlog",
    )
    parser.add_argument(
        "--queued",
        type=_positive_int,
        default=DEFAULT_QUEUED,
        metavar="N",
        help=f"memory: submissions queued in the store (default {DEFAULT_QUEUED})",
    )
    parser.add_argument(
        "--open-connections",
        type=_positive_int,
        default=DEFAULT_OPEN_CONNECTIONS,
        metavar="N",
        help=f"memory: idle keep-alive client connections held open (default "
        f"{DEFAULT_OPEN_CONNECTIONS})",
    )


def run_bench(args: argparse.Namespace) -> int:
    """Run one scenario; 0 when it finished and every check held, 1 otherwise."""
    options = BenchOptions(
        scenario=args.scenario,
        duration_s=float(args.duration),
        connections=int(args.connections),
        group_commit=args.group_commit,
        store_parent=args.store_dir,
        keep=bool(args.keep),
        builtin_generator=bool(args.builtin_generator),
        postgres=args.postgres,
        backlog=int(args.backlog),
        rate=float(args.rate),
        queued=int(args.queued),
        open_connections=int(args.open_connections),
    )
    chosen = SCENARIOS.get(options.scenario)
    if chosen is None:
        say(f"no scenario {options.scenario!r}; there are: {', '.join(sorted(SCENARIOS))}")
        return EXIT_USAGE
    if options.store_parent is not None and not options.store_parent.is_dir():
        say(f"--store-dir {options.store_parent} is not a directory")
        return EXIT_USAGE
    try:
        report = asyncio.run(chosen.run(options))
    except ChildStartError as exc:
        say(f"{exc}.\n--- last lines of its stderr ---\n{exc.stderr_tail or '(empty)'}\n---")
        return EXIT_FAILURE
    except ToolError as exc:
        say(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        say("interrupted; no figures")
        return EXIT_FAILURE
    print(json.dumps(report.to_json(), indent=2) if args.json else format_table(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.tools.bench`, the same as `invoice-gateway bench`."""
    parser = argparse.ArgumentParser(prog="invoice-gateway bench", description=DESCRIPTION)
    configure_parser(parser)
    return run_bench(parser.parse_args(argv))
