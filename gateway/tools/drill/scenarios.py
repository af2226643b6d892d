"""Named drill scenarios: the outages a business should rehearse, as timed steps.

A scenario is client traffic for `traffic_s` seconds and steps at fixed times into it: platform
faults (the simulator's fault rules; against a staging upstream, the fault relay's) and gateway
crashes (`kill -9`, then a restart on the same store). `healthy_from_s` is when the platform is
reachable again after its last outage: the drain time is measured from there.

    outage         the platform refuses connections for 20 s
    flapping       down 3 s, up 3 s, five times
    overload       peak-time overload: busy codes, 503s and slow answers for 20 s
    answer-lost    the platform acts but 15 % of answers are lost, 5 % cut short
    token-expiry   an outage, then every access token revoked while the backlog drains
    gateway-crash  an outage with the gateway killed (kill -9) while queueing and while draining
    month-end      all of it in one run: overload, outage, a crash, answers lost
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from gateway.tools.drill.integrator import Book
from gateway.tools.loadgen import SUBMIT_OPERATION


class FaultTarget(Protocol):
    async def add_fault(self, rule: Mapping[str, Any]) -> str:
        """Install one fault rule; returns its id."""
        ...


class DrillStage(Protocol):
    """What a step acts on (the runner's stage): the platform, the gateway, the timeline."""

    @property
    def platform(self) -> FaultTarget: ...

    @property
    def book(self) -> Book:
        """The client's orders (a step with a client of its own adds its orders here)."""
        ...

    async def crash_gateway(self) -> None:
        """kill -9 the gateway, start it again on the same config and store, wait until ready."""
        ...

    def note(self, text: str) -> None:
        """Put a line on the drill's timeline."""
        ...


#: Fault kinds only the simulator can produce (they need the platform's cooperation).
SIMULATOR_ONLY: Final = frozenset({"busy", "token_expiry", "rate_limit", "quota"})


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float
    #: What happens, in words, for the timeline ("the platform refuses connections for 20 s").
    what: str
    act: Callable[[DrillStage], Awaitable[None]]
    #: The platform fault rule this step installs, if it is one (to tell where it can run),
    #: and `what` before the rule's values were filled in.
    rule: Mapping[str, Any] | None = None
    template: str = ""


def fault(at_s: float, what: str, **rule: Any) -> Step:
    """A step installing one platform fault rule (the simulator's `/_sim/faults` JSON); `what`
    may name the rule's values: "refuses connections for {duration_s:g} s"."""

    async def act(stage: DrillStage) -> None:
        await stage.platform.add_fault(rule)

    return Step(at_s, what.format_map(rule), act, rule, what)


def crash(at_s: float, what: str = "the gateway is killed (kill -9) and restarted") -> Step:
    async def act(stage: DrillStage) -> None:
        await stage.crash_gateway()

    return Step(at_s, what, act)


@dataclass(frozen=True, slots=True)
class DrillScenario:
    name: str
    #: One or two sentences for `--list` and the report.
    summary: str
    traffic_s: float
    steps: tuple[Step, ...]
    healthy_from_s: float
    #: Extra gateway settings (dotted keys) on top of the drill's.
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_simulator(self) -> bool:
        return any(step.rule and step.rule.get("kind") in SIMULATOR_ONLY for step in self.steps)

    def scaled(self, factor: float) -> DrillScenario:
        """The same scenario with its timeline (step times, fault durations, traffic) stretched
        by `factor` (0.5 halves it)."""
        if factor == 1:
            return self
        steps = tuple(
            Step(step.at_s * factor, step.what, step.act)
            if step.rule is None
            else fault(step.at_s * factor, step.template, **_scaled_rule(step.rule, factor))
            for step in self.steps
        )
        return DrillScenario(
            self.name,
            self.summary + (f" (timeline ×{factor:g})"),
            self.traffic_s * factor,
            steps,
            self.healthy_from_s * factor,
            self.overrides,
        )

    def with_steps(self, *extra: Step, traffic_s: float | None = None) -> DrillScenario:
        """This scenario with more steps (chaos tests add their own)."""
        steps = tuple(sorted((*self.steps, *extra), key=lambda s: s.at_s))
        return DrillScenario(
            self.name,
            self.summary,
            traffic_s if traffic_s is not None else self.traffic_s,
            steps,
            self.healthy_from_s,
            self.overrides,
        )


ISSUE: Final = [SUBMIT_OPERATION]


def _scaled_rule(rule: Mapping[str, Any], factor: float) -> dict[str, Any]:
    scaled = dict(rule)
    if scaled.get("duration_s") is not None:
        scaled["duration_s"] = float(scaled["duration_s"]) * factor
    return scaled


def _flapping(after: float, down: float, up: float, cycles: int) -> tuple[Step, ...]:
    return tuple(
        fault(
            after + i * (down + up),
            f"platform down ({i + 1} of {cycles}): refuses connections for {{duration_s:g}} s",
            kind="refuse",
            duration_s=down,
        )
        for i in range(cycles)
    )


SCENARIOS: Final[Mapping[str, DrillScenario]] = {
    s.name: s
    for s in (
        DrillScenario(
            "outage",
            "The platform goes down for 20 s in the middle of 40 s of traffic: submissions are "
            "queued and delivered once it is back.",
            40.0,
            (
                fault(
                    8.0,
                    "platform down: refuses connections for {duration_s:g} s",
                    kind="refuse",
                    duration_s=20,
                ),
            ),
            28.0,
        ),
        DrillScenario(
            "flapping",
            "The platform goes down for 3 s and comes back for 3 s, five times.",
            40.0,
            _flapping(5.0, 3.0, 3.0, 5),
            32.0,
        ),
        DrillScenario(
            "overload",
            "Peak-time overload for 20 s: 40 % of calls answered 'service busy' (040102), 20 % "
            "HTTP 503, 20 % slowed by 1.5 s.",
            40.0,
            (
                fault(
                    5.0,
                    "platform busy: 40 % answered 040102 for {duration_s:g} s",
                    kind="busy",
                    probability=0.4,
                    duration_s=20,
                ),
                fault(
                    5.0,
                    "platform overloaded: 20 % answered HTTP 503 for {duration_s:g} s",
                    kind="http_error",
                    status=503,
                    probability=0.2,
                    duration_s=20,
                ),
                fault(
                    5.0,
                    "platform slow: 20 % of calls take 1.5 s longer for {duration_s:g} s",
                    kind="slow",
                    delay_s=1.5,
                    probability=0.2,
                    duration_s=20,
                ),
            ),
            25.0,
        ),
        DrillScenario(
            "answer-lost",
            "For 20 s the platform issues invoices but 15 % of its answers are lost on the way "
            "back and 5 % arrive cut short: each must be reconciled, never issued twice.",
            40.0,
            (
                fault(
                    5.0,
                    "answers lost: 15 % of issued invoices' answers reset for {duration_s:g} s",
                    kind="answer_lost",
                    probability=0.15,
                    duration_s=20,
                    operations=ISSUE,
                ),
                fault(
                    5.0,
                    "answers cut short: 5 % of answers truncated for {duration_s:g} s",
                    kind="truncate",
                    probability=0.05,
                    duration_s=20,
                    operations=ISSUE,
                ),
            ),
            25.0,
        ),
        DrillScenario(
            "token-expiry",
            "The platform is down for 12 s; just after it is back, while the backlog drains, it "
            "revokes every access token.",
            35.0,
            (
                fault(
                    5.0,
                    "platform down: refuses connections for {duration_s:g} s",
                    kind="refuse",
                    duration_s=12,
                ),
                fault(18.0, "every access token revoked (mid-drain)", kind="token_expiry"),
            ),
            18.0,
        ),
        DrillScenario(
            "gateway-crash",
            "The platform is down for 20 s; the gateway is killed (kill -9) while it queues and "
            "again while it drains, and restarted each time on the same store.",
            40.0,
            (
                fault(
                    5.0,
                    "platform down: refuses connections for {duration_s:g} s",
                    kind="refuse",
                    duration_s=20,
                ),
                crash(14.0, "the gateway is killed (kill -9) while queueing, then restarted"),
                crash(26.5, "the gateway is killed (kill -9) while draining, then restarted"),
            ),
            25.0,
        ),
        DrillScenario(
            "month-end",
            "Month end in one run: overload, then a 12 s outage with a gateway crash in it, then "
            "answers lost while the backlog drains.",
            45.0,
            (
                fault(
                    3.0,
                    "platform busy: 30 % answered 040102 for {duration_s:g} s",
                    kind="busy",
                    probability=0.3,
                    duration_s=10,
                ),
                fault(
                    13.0,
                    "platform down: refuses connections for {duration_s:g} s",
                    kind="refuse",
                    duration_s=12,
                ),
                crash(19.0, "the gateway is killed (kill -9) during the outage, then restarted"),
                fault(
                    25.0,
                    "platform back; 10 % of issued invoices' answers lost for {duration_s:g} s",
                    kind="answer_lost",
                    probability=0.1,
                    duration_s=10,
                    operations=ISSUE,
                ),
            ),
            25.0,
        ),
    )
}


def describe_scenarios() -> str:
    """The `--list` text."""
    width = max(map(len, SCENARIOS))
    lines = [f"{name:<{width}}  {s.summary}" for name, s in SCENARIOS.items()]
    return "\n".join(lines)
