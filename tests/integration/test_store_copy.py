"""`invoice-gateway store copy` and `invoice-gateway migrate` as an operator runs them: real
processes, a SQLite file, and scratch databases on the local PostgreSQL server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_core_gateway import ISSUE, invoice
from tests.integration.test_outbox import OVERRIDES, wait_delivered
from tests.support.harness import Gateway, Simulator
from tests.support.postgres import scratch_database_sync, server_url
from tests.support.processes import ROOT, base_env, gateway_command

SUBMISSIONS = 30


@pytest.fixture
def postgres() -> None:
    """The local PostgreSQL server is up. `scratch_database_sync` would check that inside its
    own event loop, where starting the check's loop fails: so once before, out of any loop."""
    server_url()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command(*args),
        env={**base_env(), **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- refusals -----------------------------------------------------------------------------------


def test_copy_refuses_the_same_store_twice(tmp_path: Path) -> None:
    """`--from` and `--to` naming one file (written two ways): usage error, nothing opened."""
    result = run_cli(
        "store",
        "copy",
        "--from",
        f"sqlite:///{tmp_path}/a.db",
        "--to",
        f"sqlite:///{tmp_path}/./a.db",
    )
    assert 2 == result.returncode
    assert "--from and --to name the same store" in result.stderr
    assert not (tmp_path / "a.db").exists()


def test_copy_refuses_a_source_file_that_is_not_there(tmp_path: Path) -> None:
    """A mistyped source path is not taken for an empty store (nor created)."""
    missing = tmp_path / "nope.db"
    result = run_cli(
        "store", "copy", "--from", f"sqlite:///{missing}", "--to", f"sqlite:///{tmp_path}/b.db"
    )
    assert 2 == result.returncode
    assert f"--from: there is no store at {missing}" in result.stderr
    assert not missing.exists()


def test_migrate_an_unreachable_store_exits_1_without_its_password() -> None:
    url = "postgresql://gateway:s3cret-pw@127.0.0.1:1/gateway"
    result = run_cli("migrate", "--store-url", url)
    assert 1 == result.returncode
    assert "postgresql://gateway:***@127.0.0.1:1/gateway" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


# -- migrate ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("postgres")
def test_migrate_creates_the_schema_of_a_fresh_postgresql_database() -> None:
    with scratch_database_sync("migrate") as url:
        first, second = (
            run_cli("migrate", "--store-url", url),
            run_cli("migrate", "--store-url", url),
        )
    assert (0, 0) == (first.returncode, second.returncode), first.stderr + second.stderr
    assert f"schema is up to date ({url})" in first.stdout


def test_migrate_a_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store' / 'gateway.db'}"
    result = run_cli("migrate", "--store-url", url)
    assert 0 == result.returncode, result.stderr
    assert f"schema is up to date ({url})" in result.stdout
    assert (tmp_path / "store" / "gateway.db").is_file()


def test_migrate_the_configured_store(tmp_path: Path) -> None:
    """With --config, the configuration's store_url as $GATEWAY_STORE_URL overrides it; an
    invalid configuration is a usage error."""
    url = f"sqlite:///{tmp_path / 'configured.db'}"
    result = run_cli("migrate", "--config", "config/gateway.yaml", env={"GATEWAY_STORE_URL": url})
    assert 0 == result.returncode, result.stderr
    assert f"schema is up to date ({url})" in result.stdout
    invalid = run_cli("migrate", "--config", str(tmp_path / "nope.yaml"))
    assert 2 == invalid.returncode
    assert "cannot read the configuration file" in invalid.stderr


def test_the_help_says_to_stop_the_gateway_before_copying() -> None:
    copy, migrate = run_cli("store", "copy", "--help"), run_cli("migrate", "--help")
    assert (0, 0) == (copy.returncode, migrate.returncode)
    assert "Stop the gateway (every replica)" in copy.stdout
    assert "--store-url URL" in migrate.stdout


# -- moving a gateway from SQLite to PostgreSQL -------------------------------------------------


@pytest.mark.usefixtures("postgres")
def test_a_queue_built_during_an_outage_is_delivered_from_postgresql_after_a_copy(
    tmp_path: Path,
) -> None:
    """Submissions queued on SQLite while the platform is down; the gateway stopped, the store
    copied (and copied again: nothing left to copy), a gateway started on PostgreSQL with the
    platform back: every submission is delivered and each invoice issued exactly once."""
    with (
        Simulator.start(tmp_path / "sim", dedup=False) as sim,
        scratch_database_sync("copy") as url,
    ):
        sim.fault(kind="http_error", status=503, operations=[ISSUE])
        sqlite_url = f"sqlite:///{tmp_path / 'gw-sqlite' / 'gateway.db'}"
        bodies = [invoice() for _ in range(SUBMISSIONS)]
        with Gateway.start(tmp_path / "gw-sqlite", sim.url, overrides=OVERRIDES) as gw:
            ids = []
            for body in bodies:
                status, headers, answer = gw.call(ISSUE, body)
                assert (202, "queued") == (status, headers["X-Gateway-Outcome"]), answer
                ids.append(answer["submission_id"])
            assert 0 == gw.process.stop(), gw.process.logs()

        copied = run_cli("store", "copy", "--from", sqlite_url, "--to", url)
        assert 0 == copied.returncode, copied.stderr
        assert f"copied {sqlite_url} → {url}" in copied.stdout
        assert f"submissions  {SUBMISSIONS}: {SUBMISSIONS} copied, 0 already there" in copied.stdout
        assert "every source submission is in the target, in the same state" in copied.stdout

        again = run_cli("store", "copy", "--from", sqlite_url, "--to", url, "--json")
        assert 0 == again.returncode, again.stderr
        summary = json.loads(again.stdout)
        assert (SUBMISSIONS, 0, SUBMISSIONS, True) == (
            summary["submissions"],
            summary["copied"],
            summary["already_present"],
            summary["verified"],
        )

        sim.clear_faults()
        with Gateway.start(
            tmp_path / "gw-postgres", sim.url, overrides=OVERRIDES, env={"GATEWAY_STORE_URL": url}
        ) as moved:
            wait_delivered(moved, ids, timeout=60.0)
            moved.process.stop()
        ledger = sim.ledger()
    for body in bodies:
        assert 1 == ledger["orders"][body["order"]["orderNo"]]["issued"], body["order"]["orderNo"]
    assert 0 == ledger["totals"]["doubles"]
