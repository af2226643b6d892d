"""`python -m gateway.tools.simulator`: the same as `invoice-gateway simulate`."""

from __future__ import annotations

import argparse
import sys

from gateway.tools.simulator.cli import configure_parser, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.tools.simulator",
        description="Run the simulated invoice platform (see docs/simulator.md).",
    )
    configure_parser(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
