"""`invoice-gateway demo`: simulator, gateway and client traffic through a platform outage.

    plan       the command line, the timeline (healthy → outage → recovery → settle) and the
               demo's lively timings
    outbox     the accepted submissions as the client sees them, polled until delivered
    view       the demo's state, the wording of the timeline, the live and the plain view
    scenario   runs the plan and tells what happens; `run_demo` puts it all together

The simulator and the gateway run as child processes through the harness the tools share
(`gateway.tools.children`). Everything lives in a temporary directory (gateway config, SQLite
store, child logs) that is removed at the end unless `--keep` is given. Children are always
stopped, also on errors and Ctrl-C: SIGTERM, then SIGKILL after a timeout.
"""

from gateway.tools.demo.outbox import OutboxTracker, StatusPoller
from gateway.tools.demo.plan import (
    DEMO_OVERRIDES,
    DEMO_TIMINGS,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ISSUE_DELAY_S,
    DemoError,
    Plan,
    configure_parser,
)
from gateway.tools.demo.scenario import Scenario, build_children, run_demo
from gateway.tools.demo.view import describe_ledger, describe_outage

__all__ = [
    "DEMO_OVERRIDES",
    "DEMO_TIMINGS",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "ISSUE_DELAY_S",
    "DemoError",
    "OutboxTracker",
    "Plan",
    "Scenario",
    "StatusPoller",
    "build_children",
    "configure_parser",
    "describe_ledger",
    "describe_outage",
    "run_demo",
]
