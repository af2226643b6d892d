"""The gateway's wall clock stepping (NTP-style) while it queues and drains, with a kill -9 in
a jumped clock, and slow clients alongside."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.drill.scenarios import DrillScenario, crash, fault
from tests.chaos.drills import (
    STORE_FILE,
    ChaosMode,
    ChaosRun,
    SlowClients,
    assert_passed,
    jump_clock,
    seed_for,
    store_rows,
)
from tests.support.processes import faketime_env


async def test_clock_jumps_and_slow_clients(
    tmp_path: Path, mode: ChaosMode, run_index: int
) -> None:
    """The wall clock an hour ahead, then half an hour behind, then right, with the gateway
    killed and restarted on a jumped clock; clients trickling requests in or never reading:
    everyone else is served, nothing lost or doubled, a cut-off request leaves nothing."""
    run = ChaosRun("clock-and-slow-clients", seed_for(4, run_index), mode, tmp_path / "drill")
    at = run.at
    run.workdir.mkdir(parents=True)
    timestamp_file = run.workdir / "faketime"
    timestamp_file.write_text("+0\n")
    slow = SlowClients(run, tricklers=3, non_readers=3, trickle_s=5.0, hold_s=6.0)
    steps = (
        slow.start(at(2)),
        jump_clock(at(5), timestamp_file, "+3600", "(an hour ahead) while accepting"),
        fault(at(8), "platform down: refuses connections for 8 s", kind="refuse", duration_s=at(8)),
        crash(at(10), "the gateway is killed (kill -9) an hour ahead, restarted an hour ahead"),
        jump_clock(at(13), timestamp_file, "-1800", "(half an hour behind) while queueing"),
        crash(at(17), "the gateway is killed (kill -9) half an hour behind, while draining"),
        jump_clock(at(21), timestamp_file, "+0", "(right again)"),
        slow.finish(at(26)),
    )
    scenario = DrillScenario(
        "chaos-clock",
        "Wall-clock steps of +1 h and -30 min around an outage, kills on a jumped clock, slow "
        "clients alongside.",
        mode.traffic_s,
        steps,
        at(16),
    )
    result = await run.drill(scenario, gateway_env=faketime_env(timestamp_file))
    assert_passed(run, result)
    assert 2 == result.crashes
    left_behind = store_rows(run.workdir / STORE_FILE, slow.cut_off)
    assert {} == left_behind, "a cut-off request left a row in the outbox"
    assert 6 == len(slow.finished) + len(slow.cut_off)
