"""The outbox's store under attack: a full disk, a locked database, a WAL checkpointer."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.drill.scenarios import DrillScenario, fault
from tests.chaos.drills import (
    STORE_FILE,
    ChaosMode,
    ChaosRun,
    assert_passed,
    checkpoint_loop,
    fill_disk,
    hold_lock,
    seed_for,
)
from tests.support.disk import mount_small_fs, unmount


async def test_store_disk_full_locked_database_and_wal_checkpoint_under_load(
    tmp_path: Path, mode: ChaosMode, run_index: int
) -> None:
    """The store's disk full while accepting and while draining, another process holding the
    database locked, another checkpointing the WAL all along: the client sees 503 and retries,
    nothing acknowledged is lost or doubled."""
    run = ChaosRun("store-faults", seed_for(3, run_index), mode, tmp_path / "drill")
    at = run.at
    disk = tmp_path / "store"
    store = disk / STORE_FILE
    mount_small_fs(disk, "64m")
    try:
        steps = (
            checkpoint_loop(run, at(1), store, at(27)),
            fill_disk(run, at(5), disk, at(3), "while accepting"),
            hold_lock(run, at(10), store, 2.5),
            fault(
                at(13),
                "platform down: refuses connections for 6 s",
                kind="refuse",
                duration_s=at(6),
            ),
            fill_disk(run, at(21), disk, at(3), "while draining"),
            hold_lock(run, at(25), store, 2.5),
        )
        scenario = DrillScenario(
            "chaos-store",
            "A full disk, a locked database and a WAL checkpointer, with an outage between.",
            mode.traffic_s,
            steps,
            at(19),
        )
        result = await run.drill(scenario, store_dir=disk, dedup=True)
    finally:
        unmount(disk)
    assert result.book.statuses[503] > 0, "the full disk or the lock never refused a submission"
    assert_passed(run, result, store_faults=4)
