"""The platform misbehaving in every way that loses answers, while the backlog drains."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.drill.scenarios import ISSUE, DrillScenario, fault
from tests.chaos.drills import ChaosMode, ChaosRun, assert_passed, seed_for

#: The gateway renews a revoked token at most once per `upstream.auth.min_refresh_interval`
#: (the platform allows ~50 renewals in 30 days): a second revocation within it stalls every
#: delivery until it has passed. Revocations are spaced further apart than that.
MIN_REFRESH_INTERVAL_S = 30.0


async def test_flapping_answer_lost_truncated_hangs_and_token_expiry_mid_drain(
    tmp_path: Path, mode: ChaosMode, run_index: int
) -> None:
    """Answers lost, cut short and hanging all along, the platform flapping, then an outage
    and every token revoked while the backlog drains: nothing lost, nothing doubled."""
    run = ChaosRun("platform-faults", seed_for(2, run_index), mode, tmp_path / "drill")
    at = run.at
    along = at(27)
    steps = (
        fault(
            at(1),
            f"answers lost: 10 % of issues processed, then reset, for {along:g} s",
            kind="answer_lost",
            probability=0.1,
            duration_s=along,
            operations=ISSUE,
        ),
        fault(
            at(1),
            f"answers cut short: 3 % of issues processed, then truncated, for {along:g} s",
            kind="truncate",
            probability=0.03,
            duration_s=along,
            operations=ISSUE,
        ),
        fault(
            at(1),
            f"hangs: 2 % of issues never answered (reset after 2 s) for {along:g} s",
            kind="hang",
            probability=0.02,
            hang_s=2,
            duration_s=along,
            operations=ISSUE,
        ),
        *(
            fault(at(t), "platform flaps down for 2 s", kind="refuse", duration_s=at(2))
            for t in (4, 9, 14)
        ),
        fault(
            at(18), "platform down: refuses connections for 5 s", kind="refuse", duration_s=at(5)
        ),
        fault(at(23.5), "every access token revoked (mid-drain)", kind="token_expiry"),
    )
    if mode.traffic_s >= 2 * MIN_REFRESH_INTERVAL_S:
        steps += (fault(at(8), "every access token revoked (while flapping)", kind="token_expiry"),)
    scenario = DrillScenario(
        "chaos-platform-faults",
        "Answers lost, truncated and hanging; flapping; an outage; tokens revoked mid-drain.",
        mode.traffic_s,
        steps,
        at(28),
    )
    result = await run.drill(scenario)
    assert_passed(run, result)
