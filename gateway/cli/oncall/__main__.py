"""`python -m gateway.cli.oncall outbox|circuit|status …`: the on-call commands on their own.

The same commands as `invoice-gateway outbox|circuit|status …`, for use where only this package is
importable.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gateway.cli.oncall.commands import configure_circuit, configure_outbox, configure_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invoice-gateway", description="On-call commands for the invoice gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configure_outbox(commands.add_parser("outbox", help="see and repair the outbox"))
    configure_circuit(commands.add_parser("circuit", help="circuit breakers: status, open, close"))
    configure_status(commands.add_parser("status", help="the line on /status: set, clear"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
