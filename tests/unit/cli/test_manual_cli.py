"""`outbox export-manual` and `outbox mark-issued`: what they refuse before calling the admin API,
and how the `--from-csv` file is read (the commands against a real gateway:
tests/integration/test_manual_issuance.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.cli.oncall import EXIT_USAGE
from gateway.cli.oncall.commands import UsageError, read_mark_csv
from tests.unit.cli.test_oncall_cli import parser, run


def test_the_csv_is_read_with_or_without_a_bom(tmp_path: Path) -> None:
    """Excel writes a BOM and CRLF; blank lines are ignored; each row keeps its line number."""
    path = tmp_path / "numbers.csv"
    path.write_bytes(
        b"\xef\xbb\xbforderNo, invoiceNumber\r\nSO-1,2411\r\n,\r\n SO-2 ,2412\r\nSO-3,\r\n"
    )
    assert [(2, "SO-1", "2411"), (4, "SO-2", "2412"), (5, "SO-3", "")] == read_mark_csv(path)


def test_a_csv_without_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.csv"
    path.write_text("SO-1,2411\n")
    with pytest.raises(UsageError, match="orderNo,invoiceNumber"):
        read_mark_csv(path)


def test_both_commands_need_a_reason_and_export_a_file(capsys: Any) -> None:
    for argv in (
        ["outbox", "mark-issued", "sub_1", "--invoice-number", "1"],
        ["outbox", "export-manual", "-o", "stuck.csv"],
        ["outbox", "export-manual", "--reason", "outage"],
        ["outbox", "export-manual", "-o", "x", "--reason", "r", "--format", "pdf"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser().parse_args(argv)
        assert 2 == exit_info.value.code, argv
    assert "--reason" in capsys.readouterr().err


def test_mark_issued_needs_an_id_and_a_number_or_a_csv(capsys: Any) -> None:
    """Neither, half of one, or both forms at once: a usage error before any request."""
    for argv in (
        ["outbox", "mark-issued", "--reason", "r"],
        ["outbox", "mark-issued", "sub_1", "--reason", "r"],
        ["outbox", "mark-issued", "sub_1", "--from-csv", "x.csv", "--reason", "r"],
    ):
        assert EXIT_USAGE == run(None, *argv), argv
    assert "--from-csv" in capsys.readouterr().err
