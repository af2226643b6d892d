"""A stand-in for the invoice platform (docs/design.md#simulator), with fault injection and a
ledger.

    simulator = build_simulator(PlatformSettings(issue_delay_s=0.5))
    await simulator.start(("127.0.0.1", 9000), control_listen=("127.0.0.1", 9001))
    ...
    await simulator.stop()

`simulator.app` can instead be served in-process (aiohttp `TestServer`). The HTTP surfaces, the
codes it answers and the fault API are described in `docs/simulator.md`.
"""

from __future__ import annotations

from gateway.tools.simulator.faults import FaultKind, FaultRule, FaultSpecError
from gateway.tools.simulator.ledger import Invoice, InvoiceKind, InvoiceStatus, Ledger
from gateway.tools.simulator.operations import (
    ELECTRON_FAST_INVOICE_RED,
    ELECTRON_QUERY_INVOICE_RESULT,
    ELECTRON_REQUEST_BILLING,
    FAST_INVOICE_RED,
    INVOICE_INSPECTION,
    QUERY_INVOICE_RESULT,
    REQUEST_BILLING,
)
from gateway.tools.simulator.platform import (
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_USER_TAX,
    Platform,
    PlatformSettings,
)
from gateway.tools.simulator.scenarios import SCENARIOS, ScenarioError
from gateway.tools.simulator.server import Simulator, build_simulator
from gateway.tools.simulator.tax_numbers import is_valid_tax_number, make_tax_number

__all__ = [
    "DEMO_APP_KEY",
    "DEMO_APP_SECRET",
    "DEMO_USER_TAX",
    "ELECTRON_FAST_INVOICE_RED",
    "ELECTRON_QUERY_INVOICE_RESULT",
    "ELECTRON_REQUEST_BILLING",
    "FAST_INVOICE_RED",
    "INVOICE_INSPECTION",
    "QUERY_INVOICE_RESULT",
    "REQUEST_BILLING",
    "SCENARIOS",
    "FaultKind",
    "FaultRule",
    "FaultSpecError",
    "Invoice",
    "InvoiceKind",
    "InvoiceStatus",
    "Ledger",
    "Platform",
    "PlatformSettings",
    "ScenarioError",
    "Simulator",
    "build_simulator",
    "is_valid_tax_number",
    "make_tax_number",
]
