"""Issuing by hand during a long outage (docs/manual-issuance.md), end to end: a real gateway on a
real SQLite file, the platform simulator answering 503, and the real `invoice-gateway outbox
export-manual` and `outbox mark-issued` commands. What was marked issued by hand is never sent
when the platform recovers; everything else is delivered once."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from gateway.outbox.manual import HEADERS
from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_oncall_cli import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    cli,
    start_gateway,
)
from tests.support.harness import Gateway, Simulator
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

REASON = "platform down since 09:00; issuing by hand in the portal"
NUMBERS = {"single": "24112000000000000001", "csv": "24112000000000000002"}


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    # Without deduplication a second send of an order number is a second invoice: any send of a
    # marked row would show in the ledger.
    with Simulator.start(tmp_path / "sim", dedup=False) as sim:
        yield sim


@pytest.fixture
def gw(tmp_path: Path, sim: Simulator) -> Iterator[Gateway]:
    with start_gateway(tmp_path / "gw", sim.url) as gateway:
        yield gateway


def two_lines(order_no: str | None = None) -> dict[str, Any]:
    body = invoice(order_no)
    body["order"]["buyerAddress"] = "北京市海淀区示例路1号"
    body["order"]["buyerTel"] = "010-12345678"
    body["order"]["invoiceDetail"].append(
        {
            "goodsName": "软件许可",
            "goodsCode": "1060301020000000000",
            "specType": "标准版",
            "unit": "套",
            "num": "2",
            "price": "100.00",
            "taxRate": "0.13",
            "withTaxFlag": "0",
        }
    )
    return body


def csv_rows(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf"), "no BOM: Excel would not read it as UTF-8"
    return list(csv.reader(io.StringIO(data[3:].decode("utf-8"))))


def test_stuck_invoices_exported_marked_issued_and_never_sent(
    gw: Gateway, sim: Simulator, tmp_path: Path
) -> None:
    """Export what is stuck (CSV and XLSX, buyers' tax numbers whole, totals on stderr); mark
    one issued by its id and one from a CSV; after recovery the marked ones are never sent and
    the others are delivered once each; the status API shows the invoice number; the audit log
    has the export and the marks. Marking needs an operator, a reason and a markable state (a
    delivered row is a 409); exporting a state that cannot be issued by hand is a 400."""
    sim.fault(kind="http_error", status=503, operations=[ISSUE])
    bodies = [two_lines(), invoice(), invoice(), invoice()]
    ids = []
    for body in bodies:
        status, _, answer = gw.call(ISSUE, body)
        assert 202 == status, answer
        ids.append(str(answer["submission_id"]))
    wait_until(
        lambda: (
            {gw.status(i)["status"] for i in ids} <= {"queued", "dead"}
            and {gw.status(i)["status"] for i in ids} != {"queued"}
        ),
        timeout=20,
        interval=0.2,
        what="the submissions stuck (dead after their attempts)",
    )
    orders = [str(body["order"]["orderNo"]) for body in bodies]
    single, from_csv = ids[0], ids[1]

    # -- export -------------------------------------------------------------------------------
    sheet = tmp_path / "stuck.csv"
    export = cli(gw, "outbox", "export-manual", "--state", "queued,dead", "--format", "csv",
                 "-o", str(sheet), "--reason", REASON)  # fmt: skip
    assert 0 == export.returncode, export.stderr
    assert "exported 4 invoices, 5 lines" in export.stderr
    # 943.40 + 56.60 each for the one-line invoices; 200.00 + 26.00 for the licence line.
    assert "amount 3973.60, tax 252.40, total 4226.00" in export.stderr
    header, *rows = csv_rows(sheet)
    assert list(HEADERS) == header
    assert 5 == len(rows)
    by_order: dict[str, list[list[str]]] = {}
    for row in rows:
        by_order.setdefault(row[0], []).append(row)
    assert sorted(orders) == sorted(by_order)
    for body in bodies:
        order = body["order"]
        lines = by_order[order["orderNo"]]
        assert len(order["invoiceDetail"]) == len(lines)
        assert {order["buyerTaxNum"]} == {line[2] for line in lines}  # whole, not masked
    licence = by_order[orders[0]][1]
    assert ["软件许可", "1060301020000000000", "标准版", "套", "2", "100.00"] == licence[6:12]
    assert ["200.00", "0.13", "26.00", "226.00"] == licence[13:]

    workbook = tmp_path / "stuck.xlsx"
    export = cli(gw, "outbox", "export-manual", "--state", "queued,dead", "-o", str(workbook),
                 "--reason", REASON)  # fmt: skip
    assert 0 == export.returncode, export.stderr
    cells = list(load_workbook(workbook).active.iter_rows(values_only=True))  # type: ignore[union-attr]
    # An empty text cell is no cell at all in a workbook.
    assert [list(HEADERS), *rows] == [["" if v is None else v for v in row] for row in cells]

    # -- mark issued: one by its id, one from a CSV (with an unknown order number) -------------
    marked = cli(gw, "outbox", "mark-issued", single, "--invoice-number", NUMBERS["single"],
                 "--reason", "issued in the portal")  # fmt: skip
    assert 0 == marked.returncode, marked.stderr
    numbers = tmp_path / "numbers.csv"
    numbers.write_text(f"orderNo,invoiceNumber\n{orders[1]},{NUMBERS['csv']}\nNO-SUCH-ORDER,1\n")
    bulk = cli(gw, "outbox", "mark-issued", "--from-csv", str(numbers), "--reason", "portal")
    assert 1 == bulk.returncode, bulk.stderr  # the unknown order number was skipped
    assert f"line 2: {orders[1]} → {NUMBERS['csv']}: {from_csv} marked issued_manually" in (
        bulk.stdout
    )
    assert "line 3: NO-SUCH-ORDER → 1: - skipped: unknown order number" in bulk.stdout

    # -- the platform recovers; every replayable row is replayed -------------------------------
    sim.clear_faults()
    replay = {"filter": {}, "dry_run": False, "reason": "platform back"}
    status, _, job = gw.admin("POST", "/replays", replay, token=OPERATOR_TOKEN)
    assert 202 == status, job
    # Until the job has ended and nothing is left to send: whatever it made due was sent.
    wait_until(
        lambda: (
            gw.admin("GET", f"/jobs/{job['job_id']}", token=OPERATOR_TOKEN)[2]["state"] == "done"
            and not {gw.status(i)["status"] for i in ids} & {"queued", "delivering", "unknown"}
        ),
        timeout=20,
        interval=0.2,
        what="the bulk replay done and every submission settled",
    )
    assert ["delivered"] * 2 == [gw.status(i)["status"] for i in ids[2:]]
    assert [0, 0, 1, 1] == [sim.sends(order) for order in orders]
    for submission_id, number in zip((single, from_csv), NUMBERS.values(), strict=True):
        shown = gw.status(submission_id)
        assert ("issued_manually", number) == (shown["status"], shown["invoice_number"])
        assert number == shown["result"]["manual_issuance"]["invoice_number"]

    audit = gw.admin("GET", "/audit?limit=20", token=OPERATOR_TOKEN)[2]["items"]
    exports = [entry for entry in audit if entry["action"] == "export-manual"]
    marks = {tuple(e["submission_ids"]): e for e in audit if e["action"] == "mark-issued"}
    assert [(REASON, 4, "operator")] * 2 == [
        (entry["reason"], entry["details"]["invoices"], entry["role"]) for entry in exports
    ]
    assert {"queued", "dead"} == set(exports[0]["details"]["filter"]["state"])
    assert {(single,), (from_csv,)} == set(marks)
    assert NUMBERS["csv"] == marks[(from_csv,)]["details"]["invoice_number"]

    # -- refused: a viewer, no reason, a delivered row; exporting what cannot be issued by hand --
    path = f"/submissions/{ids[2]}/mark-issued"
    mark = {"invoice_number": NUMBERS["single"], "reason": "portal"}
    assert 403 == gw.admin("POST", path, mark, token=VIEWER_TOKEN)[0]
    assert 400 == gw.admin("POST", path, {"invoice_number": "1"}, token=OPERATOR_TOKEN)[0]
    status, _, problem = gw.admin("POST", path, mark, token=OPERATOR_TOKEN)
    assert (409, True) == (status, "cannot be marked issued" in problem["detail"]), problem
    assert "delivered" == gw.status(ids[2])["status"]
    export_body = {"filter": {"state": "delivered"}, "reason": "x"}
    status, _, problem = gw.admin(
        "POST", "/submissions/export-manual", export_body, token=OPERATOR_TOKEN
    )
    assert (400, True) == (status, "cannot be exported" in problem["detail"]), problem
