"""The issuance lifecycle end to end: a real gateway process follows invoices the real simulator
accepted to their final status, and shows it in the status API, the CLI and /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.tools.simulator import make_tax_number
from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_oncall_cli import cli_json, cli_json_lines, start_gateway
from tests.support.harness import Gateway, Simulator
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

#: The default profile looks each invoice up at delivery and then every 5 s.
FINAL_WITHIN_S = 30.0


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    """A simulator that issues 0.3 s after accepting and signs 0.3 s after that."""
    with Simulator.start(
        tmp_path / "sim", "--issue-delay", "0.3", "--sign-delay", "0.3", dedup=False
    ) as sim:
        yield sim


@pytest.fixture
def gw(tmp_path: Path, sim: Simulator) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path / "gw", sim.url)
    try:
        yield gateway
    finally:
        gateway.process.stop()


def wrong_check_character(tax_number: str) -> str:
    """`tax_number` with another check character: the platform accepts, then fails issuing."""
    last = "1" if tax_number[-1] != "1" else "2"
    return tax_number[:-1] + last


def accepted(gw: Gateway, body: dict[str, Any]) -> str:
    """Send `body`; the platform accepts it at once (E0000); its submission id, via the CLI."""
    status, _, answer = gw.call(ISSUE, body)
    assert (200, "E0000") == (status, answer["code"])
    rows = cli_json_lines(gw, "outbox", "list", "--search", body["order"]["orderNo"])
    assert 1 == len(rows)
    return str(rows[0]["submission_id"])


def final_view(gw: Gateway, submission_id: str) -> dict[str, Any]:
    """The status API's view once its issuance is final (bounded wait)."""
    views: list[dict[str, Any]] = []

    def final() -> bool:
        view = gw.status(submission_id)
        views.append(view)
        issuance = view.get("issuance") or {}
        return issuance.get("status") not in (None, "issuing")

    wait_until(final, timeout=FINAL_WITHIN_S, interval=0.3, what="a final issuance")
    return views[-1]


def metric(gw: Gateway, sample: str) -> float:
    return gw.metric(sample)


def test_an_invoice_that_fails_after_acceptance_shows_as_issue_failed(gw: Gateway) -> None:
    """Accepted (E0000), then 22 for a wrong buyer tax number: issue_failed in the status API,
    in `outbox show` and `outbox list --state issue_failed`, and counted in /metrics."""
    body = invoice()
    body["order"]["buyerTaxNum"] = wrong_check_character(make_tax_number(7))
    submission_id = accepted(gw, body)

    view = final_view(gw, submission_id)
    assert ("issue_failed", "failed", "22") == (
        view["status"],
        view["issuance"]["status"],
        view["issuance"]["platform_status"],
    )
    assert "校验失败" in view["issuance"]["fail_cause"]
    assert view["issuance"]["serial"]

    shown = cli_json(gw, "outbox", "show", submission_id)
    assert ("issue_failed", "failed") == (shown["status"], shown["issuance"]["status"])
    listed = cli_json_lines(gw, "outbox", "list", "--state", "issue_failed")
    assert [submission_id] == [row["submission_id"] for row in listed]

    sample = f'gateway_issuance_final_total{{operation="{ISSUE}",outcome="failed"}}'
    assert 1.0 == metric(gw, sample)
    depth = 'gateway_outbox_submissions{state="issue_failed"}'
    wait_until(lambda: metric(gw, depth) == 1.0, timeout=10, interval=0.5, what="the sampled depth")


def test_an_invoice_that_is_issued_shows_its_invoice_number(gw: Gateway, sim: Simulator) -> None:
    """Accepted, then 2 (issued and signed): delivered, with the simulator's invoice number and
    PDF in the status API and `outbox show`, counted as done."""
    body = invoice()
    submission_id = accepted(gw, body)

    view = final_view(gw, submission_id)
    assert ("delivered", "done", "2") == (
        view["status"],
        view["issuance"]["status"],
        view["issuance"]["platform_status"],
    )
    [entry] = [e for e in sim.ledger()["invoices"] if e["orderNo"] == body["order"]["orderNo"]]
    assert entry["invoiceNo"] == view["issuance"]["invoice_number"]
    assert view["issuance"]["pdf_url"]

    shown = cli_json(gw, "outbox", "show", submission_id)
    assert entry["invoiceNo"] == shown["issuance"]["invoice_number"]
    sample = f'gateway_issuance_final_total{{operation="{ISSUE}",outcome="done"}}'
    assert 1.0 == metric(gw, sample)
