"""Replicas behind PgBouncer in transaction mode: every statement of a gateway's connection may
land on another server connection, so nothing may rely on session state. With
`store.prepared_statements: false` and `LISTEN` on a direct connection (`store.listen_url`),
two replicas behind it migrate, admit, claim, share one token and deliver each queued
submission exactly once."""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_core_gateway import ISSUE, invoice
from tests.support.harness import FAST_OUTBOX, Gateway, Simulator
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import scratch_database_sync
from tests.support.processes import wait_until


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database_sync("pgbouncer") as url:
        yield url


def test_two_replicas_behind_pgbouncer_in_transaction_mode_deliver_each_once(
    tmp_path: Path, database: str
) -> None:
    with (
        Simulator.start(tmp_path / "sim", "--issue-delay", "0.2", dedup=False) as sim,
        PgBouncer(database, pool_mode="transaction", pool_size=3) as bouncer,
    ):
        overrides = {
            "outbox": FAST_OUTBOX,
            "resilience.breaker": {"failure_threshold": 3, "reset_timeout": "500ms"},
            "store_url": bouncer.url,
            "store": {"prepared_statements": False, "listen_url": database},
        }
        replicas: list[Gateway] = []
        try:
            for n in range(2):
                replicas.append(
                    Gateway.start(
                        tmp_path / f"gw{n}", sim.url, name=f"gateway-{n}", overrides=overrides
                    )
                )
            sim.fault(kind="http_error", status=503, operations=[ISSUE])
            bodies = [invoice() for _ in range(40)]
            targets = itertools.cycle(replicas)
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(lambda b: next(targets).call(ISSUE, b), bodies))
            assert {202} == {status for status, _, _ in answers}, answers
            sim.clear_faults()

            def all_issued() -> bool:
                orders = sim.ledger()["orders"]
                return all(orders.get(b["order"]["orderNo"], {}).get("issued") == 1 for b in bodies)

            wait_until(all_issued, timeout=60, interval=0.2, what="every submission issued")
            for _, _, answer in answers:
                assert "delivered" == replicas[0].status(answer["submission_id"])["status"]
            ledger = sim.ledger()
            assert 0 == ledger["totals"]["doubles"]
            assert 40 == ledger["totals"]["accepted"]
            # The platform token is shared: one replica asked, the other took it up.
            assert 1 == ledger["counters"]["token_calls"]
        finally:
            for replica in replicas:
                replica.process.stop()
