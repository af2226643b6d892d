"""`invoice-gateway store backup` as an operator runs it: real processes and real SQLite files,
a gateway accepting submissions while the backup is taken, and a gateway started on the backup."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_outbox import OVERRIDES, wait_delivered
from tests.integration.test_store_copy import run_cli
from tests.support.harness import Gateway, Simulator
from tests.support.processes import wait_until

#: Submissions accepted before the backup starts; the client goes on submitting meanwhile.
BEFORE = 20
#: At most this many in all (the client stops when the backup is done, or here).
MOST = 400


class Client(threading.Thread):
    """An integrator submitting invoices one after another until stopped; what was accepted."""

    def __init__(self, gw: Gateway) -> None:
        super().__init__(daemon=True)
        self.gw = gw
        self.done = threading.Event()
        #: submission id → order number, of the submissions the gateway accepted (202).
        self.accepted: dict[str, str] = {}
        self.refused: list[object] = []

    def run(self) -> None:
        while not self.done.is_set() and len(self.accepted) < MOST:
            body = invoice()
            status, _, answer = self.gw.call(ISSUE, body)
            if status != 202:
                self.refused.append((status, answer))
                return
            self.accepted[answer["submission_id"]] = body["order"]["orderNo"]


def submissions(path: Path) -> dict[str, str]:
    """id → state of every submission in the SQLite file at `path` (checked whole first)."""
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        assert [("ok",)] == db.execute("PRAGMA integrity_check").fetchall()
        return dict(db.execute("SELECT id, state FROM submission"))


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store file made by `invoice-gateway migrate` (once: each test copies it)."""
    path = tmp_path_factory.mktemp("empty") / "gateway.db"
    assert 0 == run_cli("migrate", "--store-url", f"sqlite:///{path}").returncode
    return path


def a_store(empty_store: Path, path: Path) -> str:
    """A copy of `empty_store` at `path`; its URL."""
    shutil.copyfile(empty_store, path)
    return f"sqlite:///{path}"


def test_a_backup_taken_while_a_gateway_queues_is_delivered_by_a_gateway_started_on_it(
    tmp_path: Path,
) -> None:
    """The platform is down, so every submission queues; a client keeps submitting while the
    backup is taken (in steps of 2 pages). The backup is a whole SQLite file holding only
    submissions the source had, at least those accepted before it began, and records
    store.backup in the source's audit log. A gateway started on it, with the platform back,
    delivers each of them: each order number issued once, and none of those the backup
    missed."""
    backup = tmp_path / "backups" / "gateway.db"
    backup.parent.mkdir()
    with Simulator.start(tmp_path / "sim", dedup=False) as sim:
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        with Gateway.start(tmp_path / "gw", sim.url, overrides=OVERRIDES) as gw:
            client = Client(gw)
            client.start()
            try:
                wait_until(
                    lambda: len(client.accepted) >= BEFORE or client.refused,
                    timeout=20.0,
                    what=f"{BEFORE} accepted submissions",
                )
                started = len(client.accepted)
                result = run_cli(
                    "store", "backup", "-o", str(backup), "--store-url", gw.store_url,
                    "--pages", "2", "--json",
                )  # fmt: skip
                during = len(client.accepted)
                # A few more after it: those the backup cannot hold.
                wait_until(
                    lambda: len(client.accepted) >= during + 5 or client.refused,
                    timeout=20.0,
                    what="submissions after the backup",
                )
            finally:
                client.done.set()
                client.join(timeout=30.0)
            assert [] == client.refused
            assert 0 == result.returncode, result.stderr
            assert during > started, "the client was not submitting while the backup ran"
            assert 0 == gw.process.stop(), gw.process.logs()
        source = submissions(Path(gw.store_url.removeprefix("sqlite:///")))
        copied = submissions(backup)
        summary = json.loads(result.stdout)
        assert (len(copied), str(backup), True) == (
            summary["submissions"],
            summary["file"],
            summary["audited"],
        )
        assert started <= len(copied) < len(client.accepted) == len(source)
        assert set(copied) <= set(source) == set(client.accepted)
        with sqlite3.connect(Path(gw.store_url.removeprefix("sqlite:///"))) as db:
            actions = [row[0] for row in db.execute("SELECT action FROM audit_log")]
        assert ["store.backup"] == actions

        sim.clear_faults()
        with Gateway.start(
            tmp_path / "restored",
            sim.url,
            overrides={**OVERRIDES, "store_url": f"sqlite:///{backup}"},
        ) as restored:
            wait_delivered(restored, list(copied), timeout=60.0)
            restored.process.stop()
        ledger = sim.ledger()
    orders = ledger["orders"]
    for submission_id, order_no in client.accepted.items():
        expected = 1 if submission_id in copied else 0
        assert expected == orders.get(order_no, {}).get("issued", 0), (submission_id, order_no)
    assert 0 == ledger["totals"]["doubles"]


def test_an_existing_file_is_replaced_only_with_force(tmp_path: Path, empty_store: Path) -> None:
    url = a_store(empty_store, tmp_path / "gateway.db")
    target = tmp_path / "backup.db"
    target.write_bytes(b"last night's backup")

    refused = run_cli("store", "backup", "-o", str(target), "--store-url", url)
    assert 2 == refused.returncode
    assert f"{target} exists already: pass --force to replace it" in refused.stderr
    assert ("", b"last night's backup") == (refused.stdout, target.read_bytes())

    forced = run_cli("store", "backup", "-o", str(target), "--store-url", url, "--force")
    assert 0 == forced.returncode, forced.stderr
    assert f"backed up {url} → {target}" in forced.stdout
    assert {} == submissions(target)
    assert {"backup.db", "gateway.db"} == {p.name for p in tmp_path.iterdir()}


def test_a_missing_directory_or_store_is_a_usage_error(tmp_path: Path) -> None:
    """Checked before the store is read (a plain file stands for it)."""
    (tmp_path / "gateway.db").write_bytes(b"")
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    no_dir = run_cli("store", "backup", "-o", str(tmp_path / "nope" / "b.db"), "--store-url", url)
    missing = tmp_path / "missing.db"
    no_store = run_cli(
        "store", "backup", "-o", str(tmp_path / "b.db"), "--store-url", f"sqlite:///{missing}"
    )
    assert (2, 2) == (no_dir.returncode, no_store.returncode)
    assert f"the directory {tmp_path / 'nope'} does not exist" in no_dir.stderr
    assert f"there is no store at {missing}" in no_store.stderr
    assert {"gateway.db"} == {p.name for p in tmp_path.iterdir()}


def test_a_postgresql_store_is_left_to_pg_dump_without_showing_the_password(
    tmp_path: Path,
) -> None:
    """Nothing is connected to (the port is closed) nor written; the advice names pg_dump and
    pg_restore, with the URL's user, host and database but not its password."""
    target = tmp_path / "gateway.dump"
    url = "postgresql://u:secret@127.0.0.1:1/db"
    result = run_cli("store", "backup", "-o", str(target), "--store-url", url)
    assert 2 == result.returncode
    assert f"pg_dump --format=custom --file {target} postgresql://u@127.0.0.1:1/db" in result.stderr
    assert "pg_restore" in result.stderr
    assert "secret" not in result.stdout + result.stderr
    assert not target.exists()


def test_progress_goes_to_stderr_and_the_summary_to_stdout(
    tmp_path: Path, empty_store: Path
) -> None:
    """One progress line per step (pages done / total), ending with all of them; stdout is
    the summary alone, one JSON line."""
    url = a_store(empty_store, tmp_path / "gateway.db")
    target = tmp_path / "backup.db"
    result = run_cli(
        "store", "backup", "-o", str(target), "--store-url", url, "--pages", "4", "--json"
    )
    assert 0 == result.returncode, result.stderr
    summary = json.loads(result.stdout)
    pages = summary["pages"]
    expected = [*range(4, pages, 4), pages]
    assert [
        f"invoice-gateway store backup: {done}/{pages} pages copied" for done in expected
    ] == result.stderr.splitlines()
    assert (target.stat().st_size, 0, {}) == (
        summary["bytes"],
        summary["submissions"],
        summary["by_state"],
    )
