"""kill -9 of the gateway at random points, through flapping and an outage."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.drill.scenarios import DrillScenario, fault
from tests.chaos.drills import ChaosMode, ChaosRun, assert_passed, random_kills, seed_for


async def test_kill_9_at_random_points_through_outages_loses_and_doubles_nothing(
    tmp_path: Path, mode: ChaosMode, run_index: int
) -> None:
    """Random kill -9s while accepting, while the platform is down and while draining: every
    acknowledged submission issued exactly once, none resent blindly."""
    run = ChaosRun("kill-9", seed_for(1, run_index), mode, tmp_path / "drill")
    at = run.at
    platform = (
        fault(at(6), "platform flaps down for 2 s", kind="refuse", duration_s=at(2)),
        fault(at(9.5), "platform flaps down for 2 s", kind="refuse", duration_s=at(2)),
        fault(
            at(13), "platform down: refuses connections for 7 s", kind="refuse", duration_s=at(7)
        ),
        fault(at(24.5), "platform flaps down for 2 s", kind="refuse", duration_s=at(2)),
    )
    kills = random_kills(
        run.rng,
        [
            (at(3.5), at(5.5), "while accepting (platform up)"),
            (at(14), at(19.5), "while the platform is down"),
            (at(21), at(24), "while draining"),
            (at(26.5), at(29), "while draining after the last flap"),
        ],
        mode.kills,
    )
    scenario = DrillScenario(
        "chaos-kill-9",
        "Flapping and an outage, with the gateway killed at random points.",
        mode.traffic_s,
        platform,
        at(26.5),
    )
    result = await run.drill(scenario, extra_steps=kills)
    assert_passed(run, result)
    assert mode.kills == result.crashes
