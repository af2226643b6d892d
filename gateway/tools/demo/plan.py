"""The demo's command line, its timeline (healthy → outage → recovery → settle), and the lively
timings its gateway runs with."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.quantities import duration, number
from gateway.tools.children import ToolError

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

#: Time the simulator takes from accepting an invoice to issuing it.
ISSUE_DELAY_S: Final = 1.0

#: Demo timings on top of the default profile, for a lively demo. The profile's production
#: values (probe every 15 s, circuit retried after 15 s, outbox back-off from 1 s, drain at
#: 50/s) would leave a one-minute demo staring at an open circuit long after the platform is
#: back. This is a demo, not advice: keep the profile's values in production.
DEMO_OVERRIDES: Final[Mapping[str, Any]] = {
    "resilience.probe.interval": "1s",
    "resilience.probe.timeout": "1s",
    "resilience.probe.healthy_threshold": 2,
    "resilience.breaker.reset_timeout": "3s",
    "outbox.backoff": {"base": "200ms", "cap": "2s"},
    # Slow enough that the drain is visible, fast enough that it ends within seconds.
    "outbox.dispatcher.rate": 40,
    "outbox.dispatcher.burst": 5,
}
#: The demo timings in words, for the header.
DEMO_TIMINGS: Final = "probe every 1 s, circuit retried after 3 s, outbox drains at most 40/s"


class DemoError(ToolError):
    """The demo cannot run as asked; the message says what to do."""


_positive_duration = duration(0, above=True)


_non_negative_duration = duration(0)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its subcommand parser."""
    parser.add_argument(
        "--duration",
        type=_positive_duration,
        default=60.0,
        metavar="SECONDS",
        help="length of the scenario's traffic and outage (default 60); the outbox may take a "
        "few seconds more to drain before the ledger check",
    )
    parser.add_argument(
        "--rate",
        type=number(0, above=True),
        default=20.0,
        metavar="N",
        help="client requests per second, ~80%% submissions and 20%% result queries (default 20)",
    )
    parser.add_argument(
        "--outage-at",
        type=_non_negative_duration,
        metavar="SECONDS",
        help="when the platform goes down (default: a quarter into the scenario)",
    )
    parser.add_argument(
        "--outage-for",
        type=_non_negative_duration,
        metavar="SECONDS",
        help="how long it stays down; 0 for no outage (default: a third of the scenario)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the working directory (gateway config, store, logs) and print its path",
    )
    parser.add_argument("--seed", type=int, help="seed for the generated invoices and traffic mix")


@dataclass(frozen=True, slots=True)
class Plan:
    """The scenario's timeline, in seconds since the traffic started.

    Traffic runs until `traffic_until_s`; then the settle phase waits for the outbox to drain
    and the platform to finish issuing (at least until `duration_s`, at most `SETTLE_TIMEOUT_S`
    more), and the ledger check ends the demo.
    """

    duration_s: float
    rate: float
    outage_at_s: float
    outage_for_s: float
    settle_s: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        duration = float(args.duration)
        if duration < 5:
            raise DemoError("--duration must be at least 5 seconds")
        settle = min(5.0, max(1.5, duration * 0.1))
        outage_at = round(duration / 4, 1) if args.outage_at is None else float(args.outage_at)
        outage_for = round(duration / 3, 1) if args.outage_for is None else float(args.outage_for)
        plan = cls(duration, float(args.rate), outage_at, outage_for, settle)
        if outage_for > 0 and plan.outage_end_s > plan.traffic_until_s:
            raise DemoError(
                f"the outage (at {outage_at:g} s for {outage_for:g} s) must end before traffic "
                f"stops at {plan.traffic_until_s:g} s; shorten --outage-at or --outage-for, or "
                "lengthen --duration"
            )
        return plan

    @property
    def outage_end_s(self) -> float:
        return self.outage_at_s + self.outage_for_s

    @property
    def traffic_until_s(self) -> float:
        return self.duration_s - self.settle_s

    def phase(self, elapsed_s: float) -> str:
        if self.outage_for_s > 0 and self.outage_at_s <= elapsed_s < self.outage_end_s:
            return "outage"
        if elapsed_s >= self.traffic_until_s:
            return "settle"
        if self.outage_for_s > 0 and elapsed_s >= self.outage_end_s:
            return "recovery"
        return "healthy"
