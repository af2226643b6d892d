"""The report: one `Row` per measured run, ratios between runs, and the problems that make the
command exit 1; `format_table` for people, `Report.to_json` for machines (`--json`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.tools.bench.checks import DurabilityCheck
from gateway.tools.bench.generators import LoadResult


@dataclass(frozen=True, slots=True)
class Row:
    """One measured run: what was set up, what the load saw, what was on disk afterwards."""

    label: str
    settings: Mapping[str, str]
    load: LoadResult
    #: The status that counts as success in this scenario (202 for durable acceptance).
    good_status: int
    durability: DurabilityCheck | None = None
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def good(self) -> int:
        return self.load.count(self.good_status)

    @property
    def good_per_s(self) -> float:
        return self.load.rate(self.good_status)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """One of the performance targets, as this run measured it: met or not, never a failure of
    the command (a bench measures; the tests and checks decide what is broken)."""

    name: str
    #: What was measured, with its unit ("0.83x", "1.4 ms").
    measured: str
    #: The target, in the same terms ("≥ 1.00x", "≤ 2 ms").
    goal: str
    met: bool


@dataclass
class Report:
    scenario: str
    #: What the figures are per second of (e.g. "accepted submissions").
    measure: str
    environment: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[TargetCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "measure": self.measure,
            "ok": self.ok,
            "environment": self.environment,
            "runs": [
                {
                    "label": row.label,
                    "settings": dict(row.settings),
                    "generator": row.load.generator,
                    "elapsed_s": round(row.load.elapsed_s, 3),
                    "good_status": row.good_status,
                    "good": row.good,
                    "good_per_s": round(row.good_per_s, 1),
                    "answers": row.load.answers,
                    "statuses": {str(k): v for k, v in sorted(row.load.statuses.items())},
                    "outcomes": dict(sorted(row.load.outcomes.items())),
                    "errors": row.load.errors(row.good_status),
                    "latency_ms": {
                        "p50": _round(row.load.latency_p50_ms),
                        "p99": _round(row.load.latency_p99_ms),
                    },
                    "durability": None
                    if row.durability is None
                    else {
                        "rows": row.durability.rows,
                        "acknowledged": row.durability.acknowledged,
                        "ok": row.durability.ok,
                    },
                    "notes": dict(row.notes),
                }
                for row in self.rows
            ],
            "ratios": {name: round(value, 3) for name, value in self.ratios.items()},
            "targets": [
                {"name": t.name, "measured": t.measured, "goal": t.goal, "met": t.met}
                for t in self.targets
            ],
            "problems": list(self.problems),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_errors(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in errors.items()) or "none"


def format_table(report: Report) -> str:
    """The report for people: the environment, one line per run, the ratios, any problems."""
    lines = [f"invoice-gateway bench: {report.scenario}", ""]
    width = max((len(key) for key in report.environment), default=0)
    lines += [f"  {key:<{width}}  {value}" for key, value in report.environment.items()]
    header = (
        "run",
        f"{report.measure}/s",
        report.measure,
        "p50 ms",
        "p99 ms",
        "store rows",
        "durable",
        "errors",
    )
    table = [header]
    for row in report.rows:
        durability = row.durability
        table.append(
            (
                row.label,
                f"{row.good_per_s:.1f}",
                str(row.good),
                _ms(row.load.latency_p50_ms),
                _ms(row.load.latency_p99_ms),
                "-" if durability is None else str(durability.rows),
                "-" if durability is None else ("yes" if durability.ok else "NO"),
                format_errors(row.load.errors(row.good_status)),
            )
        )
    widths = [max(len(cells[i]) for cells in table) for i in range(len(header))]
    lines.append("")
    for cells in table:
        # Label and errors left-aligned, figures right-aligned.
        text = [
            cell.ljust(widths[i]) if i in (0, len(cells) - 1) else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        lines.append("  " + "  ".join(text).rstrip())
    notes = [(row.label, key, value) for row in report.rows for key, value in row.notes.items()]
    if notes:
        lines.append("")
        lines += [f"  {label}: {key} {value}" for label, key, value in notes]
    if report.ratios:
        lines.append("")
        lines += [f"  {name}: {value:.2f}x" for name, value in report.ratios.items()]
    if report.targets:
        lines.append("")
        lines += [
            f"  target {t.name}: {t.measured} (goal {t.goal}) {'met' if t.met else 'NOT MET'}"
            for t in report.targets
        ]
    lines.append("")
    if report.problems:
        lines += [f"  PROBLEM: {problem}" for problem in report.problems]
    else:
        lines.append("  ok")
    return "\n".join(lines)
