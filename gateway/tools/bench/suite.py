"""Scenario `all`: every other scenario in one run, one after another on the same options, and
what only a whole run can say — durable acceptance (group commit on) as a share of the
reference proxy's pass-through rate. The report holds every scenario's rows, ratios, targets
and problems, each named after its scenario."""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from gateway.tools.bench.options import BenchOptions, say
from gateway.tools.bench.passthrough import REFERENCE
from gateway.tools.bench.report import Report, TargetCheck
from gateway.tools.bench.scenarios import SCENARIOS, scenario, sqlite_store

#: The scenarios `all` runs, in this order (the quick ones first).
ORDER: Final = ("pass-through", "durable-accept", "drain", "memory")
#: Target (issue #15): durable acceptance at least half the reference proxy's pass-through.
DURABLE_GOAL: Final = 0.5
DURABLE_RATIO: Final = "durable-accept (group commit on) / reference proxy pass-through"


def combine(reports: dict[str, Report]) -> Report:
    """One report of several scenarios' reports: rows, ratios and problems named after their
    scenario; the environment of the first, plus what another one measured differently."""
    first = next(iter(reports.values()))
    environment = dict(first.environment)
    for name, report in reports.items():
        for key, value in report.environment.items():
            if environment.get(key) != value:
                environment[f"{name}: {key}"] = value
    environment["ok"] = (
        "answered (pass-through, memory), accepted (durable-accept), delivered (drain)"
    )
    combined = Report("all", "ok", environment)
    for name, report in reports.items():
        combined.rows += [replace(row, label=f"{name}: {row.label}") for row in report.rows]
        combined.ratios.update({f"{name}: {key}": value for key, value in report.ratios.items()})
        combined.targets += [replace(t, name=f"{name}: {t.name}") for t in report.targets]
        combined.problems += [f"{name}: {problem}" for problem in report.problems]
    durable = _rate(reports.get("durable-accept"), sqlite_store(group_commit=True).label)
    reference = _rate(reports.get("pass-through"), REFERENCE)
    if durable is not None and reference:
        ratio = durable / reference
        combined.ratios[DURABLE_RATIO] = ratio
        combined.targets.append(
            TargetCheck(
                DURABLE_RATIO, f"{ratio:.2f}x", f"≥ {DURABLE_GOAL:.2f}x", ratio >= DURABLE_GOAL
            )
        )
    return combined


def _rate(report: Report | None, label: str) -> float | None:
    if report is None:
        return None
    return next((row.good_per_s for row in report.rows if row.label == label), None)


@scenario(
    "all",
    "every other scenario in one run (pass-through, durable-accept, drain, memory) with every "
    "ratio and target, and durable acceptance against the reference proxy's pass-through",
)
async def everything(options: BenchOptions) -> Report:
    reports: dict[str, Report] = {}
    for name in ORDER:
        say(f"scenario {name} ({ORDER.index(name) + 1} of {len(ORDER)})")
        reports[name] = await SCENARIOS[name].run(replace(options, scenario=name))
    return combine(reports)
