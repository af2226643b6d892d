"""`invoice-gateway demo`: simulator, gateway and client traffic through an outage.

    plan       the command line and the timeline: healthy → outage → recovery → settle
    children   the simulator and gateway processes (with the demo's lively timings), and the
               simulator's control API (fault rules, the ledger)
    outbox     the accepted submissions as the client sees them, polled until delivered
    view       the demo's state, the wording of the timeline, the live and the plain view
    scenario   runs the plan and tells what happens; `run_demo` puts it all together

Everything lives in a temporary directory (gateway config, SQLite store, child logs) that is
removed at the end unless `--keep` is given. Children are always stopped, also on errors and
Ctrl-C: SIGTERM, then SIGKILL after a timeout.
"""

from gateway.tools.demo.children import (
    DEMO_OVERRIDES,
    ISSUE_DELAY_S,
    Child,
    Credentials,
    Endpoints,
    LedgerTotals,
    SimulatorControl,
    build_children,
    gateway_child,
    simulator_child,
    stop_children,
    wait_ready,
    write_gateway_config,
)
from gateway.tools.demo.outbox import OutboxTracker, StatusPoller
from gateway.tools.demo.plan import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ChildStartError,
    DemoError,
    Plan,
    configure_parser,
)
from gateway.tools.demo.scenario import Scenario, run_demo
from gateway.tools.demo.view import describe_ledger, describe_outage

__all__ = [
    "DEMO_OVERRIDES",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "ISSUE_DELAY_S",
    "Child",
    "ChildStartError",
    "Credentials",
    "DemoError",
    "Endpoints",
    "LedgerTotals",
    "OutboxTracker",
    "Plan",
    "Scenario",
    "SimulatorControl",
    "StatusPoller",
    "build_children",
    "configure_parser",
    "describe_ledger",
    "describe_outage",
    "gateway_child",
    "run_demo",
    "simulator_child",
    "stop_children",
    "wait_ready",
    "write_gateway_config",
]
