"""What the demo shows: its state, the wording of the timeline, and two ways to show them.

DemoState  everything the views show; written by the scenario, read by the views
LiveView   a refreshing terminal view (rich), when stdout is a terminal
PlainView  plain text lines otherwise (CI, pipes): events as they happen, status every 2 s
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gateway.tools.children import Endpoints, LedgerTotals
from gateway.tools.demo.outbox import OutboxTracker, describe_counts
from gateway.tools.demo.plan import DEMO_TIMINGS, Plan
from gateway.tools.loadgen import NO_ANSWER, TrafficStats

#: How often the plain view prints a status line.
PLAIN_EVERY_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    text: str
    #: Something went wrong or is unfinished: shown prominently.
    alert: bool = False


def clock(seconds: float) -> str:
    """`mm:ss` of a time since the start."""
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


# -- the wording --------------------------------------------------------------------------------


def describe_outage(submissions: Mapping[str, int]) -> str:
    """What happened to the submissions sent while the platform was down, in words."""
    queued, rejected = submissions.get("queued", 0), submissions.get("rejected", 0)
    if not any(submissions.values()):
        return "no submissions were sent during the outage"
    parts: list[str] = []
    if queued:
        parts.append(f"queued {queued} submissions during the outage")
    if rejected:
        note = "" if queued else " (no outbox yet)"
        parts.append(f"{rejected} submissions refused during the outage{note}")
    # Forwarded ones went through just before the listener closed or after it reopened.
    for outcome, count in sorted(submissions.items()):
        if count and outcome not in ("queued", "rejected", "forwarded"):
            parts.append(f"{count} {outcome}")
    return ", ".join(parts) or "every submission sent during the outage was forwarded"


def describe_drain(rate: float | None) -> str:
    """The moment queued submissions are seen delivered again."""
    if rate is None:
        return "platform back — draining the outbox"
    return f"platform back — draining ~{rate:.0f}/s"


def describe_ledger(
    accepted: int,
    uncertain: int,
    ledger: LedgerTotals | None,
    *,
    failed: int = 0,
    unfinished: Counter[str] | None = None,
) -> str:
    """The final check: what the gateway accepted against what the platform issued.

    `accepted` counts distinct order numbers. `failed` of them the platform refused for good
    after they were queued, so they are never issued; `unfinished` are still in the outbox (by
    status). `uncertain` submissions lost their answer on the way back, so each may or may not
    have been issued. Everything adds up when `accepted - failed <= issued <= that + uncertain`.
    """
    if ledger is None:
        return f"{accepted} accepted; the simulator's ledger could not be read"
    line = f"{accepted} accepted, {ledger.issued} issued, {ledger.doubles} issued twice"
    pending = sum((unfinished or Counter()).values())
    extras = []
    if pending:
        extras.append(f"{pending} not delivered: {describe_counts(unfinished or Counter())}")
    if ledger.issuing:
        extras.append(f"{ledger.issuing} still issuing")
    if failed:
        extras.append(f"{failed} refused by the platform after queueing")
    if ledger.failed:
        extras.append(f"{ledger.failed} failed on the platform")
    if uncertain:
        extras.append(f"{uncertain} whose answer was lost, so maybe issued")
    if extras:
        line += f" ({'; '.join(extras)})"
    expected = accepted - failed - pending
    if ledger.doubles:
        return f"DOUBLES: {line}"
    if pending:
        return f"NOT SETTLED: {line}"
    if ledger.issuing:
        return f"not settled yet: {line}"
    if expected <= ledger.issued <= expected + uncertain:
        return f"all delivered: {line}" if not failed else f"all settled: {line}"
    if ledger.issued < expected:
        return f"MISSING: {line}"
    return f"check: {line}"


def is_alert(text: str) -> bool:
    """A ledger line that must not go unnoticed."""
    return text.split(":", 1)[0] in ("DOUBLES", "NOT SETTLED", "MISSING", "check")


# -- the state ----------------------------------------------------------------------------------


@dataclass
class DemoState:
    """Everything the views show; written by the scenario, read by the views."""

    plan: Plan
    endpoints: Endpoints
    stats: TrafficStats
    workdir: Path
    keep: bool
    outbox: OutboxTracker = field(default_factory=OutboxTracker)
    pids: dict[str, int | None] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    platform_up: bool | None = None
    platform_since_s: float = 0.0
    #: The circuit as the client sees it (503 circuit-open or 202 answers; deliveries again).
    circuit_open: bool = False
    circuit_since_s: float = 0.0
    ledger: LedgerTotals | None = None
    finished: bool = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def phase(self) -> str:
        if self.finished:
            return "finished"
        phase = self.plan.phase(self.elapsed())
        if phase == "settle" and self.outbox.queued_now:
            return "settle (draining the outbox)"
        return phase


#: A piece of a status value and how to style it ("", "good", "bad", "warn", "dim", "bold").
Segment = tuple[str, str]
OUTCOME_STYLES: Final = {"forwarded": "good", "queued": "warn", "replayed": "good"}


def status_rows(state: DemoState) -> list[tuple[str, list[Segment]]]:
    """The status block, row by row: a label and styled segments (one source for both views)."""
    now = state.elapsed()
    plan = state.plan
    rows: list[tuple[str, list[Segment]]] = []
    rows.append(
        ("phase", [(state.phase(), "bold"), (f"  {clock(now)} / {clock(plan.duration_s)}", "dim")])
    )
    rows.append(("platform", _platform(state, now)))
    rows.append(("circuit", _circuit(state)))

    rates = state.stats.rates()
    requests: list[Segment] = [(f"{sum(rates.values()):.1f}/s", "bold")]
    for outcome, rate in rates.items():
        style = OUTCOME_STYLES.get(outcome, "bad") if rate else "dim"
        requests += [(f"  {outcome} ", "dim"), (f"{rate:.1f}", style)]
    rows.append(("requests", requests))

    statuses: list[Segment] = []
    for status, count in sorted(state.stats.statuses.items()):
        label = NO_ANSWER if status == 0 else str(status)
        style = "good" if 200 <= status < 300 else "bad"
        statuses += [("  " if statuses else "", ""), (label, style), (f" ×{count}", "")]
    rows.append(("statuses", statuses or [("none yet", "dim")]))

    p50, p99 = state.stats.latency(50), state.stats.latency(99)
    if p50 is None or p99 is None:
        latency: list[Segment] = [("no answers in the last few seconds", "dim")]
    else:
        latency = [
            (f"p50 {p50 * 1000:.1f} ms  p99 {p99 * 1000:.1f} ms", ""),
            (f"  (last {state.stats.window_s:g} s)", "dim"),
        ]
    rows.append(("latency", latency))

    outbox = state.outbox
    accepted: list[Segment] = [
        (f"{outbox.accepted} submissions", "bold"),
        (f" ({outbox.forwarded} forwarded at once, {outbox.queued_total} queued)", "dim"),
    ]
    if state.stats.uncertain:
        accepted.append((f", {state.stats.uncertain} with a lost answer", "warn"))
    rows.append(("accepted", accepted))
    rows.append(("outbox", _outbox(outbox)))
    rows.append(("invoices", _ledger(state.ledger)))
    return rows


def _platform(state: DemoState, now: float) -> list[Segment]:
    if state.platform_up is None:
        return [("checking", "dim")]
    since = f" since {clock(state.platform_since_s)}"
    if state.platform_up:
        return [("up", "good"), (since, "dim")]
    return [("DOWN", "bad"), (f"{since} ({now - state.platform_since_s:.0f} s)", "")]


def _circuit(state: DemoState) -> list[Segment]:
    since = f" since {clock(state.circuit_since_s)}"
    if state.circuit_open:
        return [("open", "bad"), (since, ""), ("  (as the client sees it)", "dim")]
    return [("closed", "good"), ("  (as the client sees it)", "dim")]


def _outbox(outbox: OutboxTracker) -> list[Segment]:
    queued, rate = outbox.queued_now, outbox.drain_rate()
    segments: list[Segment] = [
        (f"{queued} queued now", "warn" if queued else "good"),
        (f"  {outbox.delivered} delivered", ""),
        (f" ({outbox.drained} from the outbox)", "dim"),
        (f"  draining {rate:.1f}/s", "bold" if rate else "dim")
        if queued or not outbox.drained
        else ("  drained", "good"),
    ]
    stuck = outbox.statuses()["dead"]
    if stuck:
        segments.append((f"  {stuck} dead", "bad"))
    return segments


def _ledger(ledger: LedgerTotals | None) -> list[Segment]:
    if ledger is None:
        return [("waiting for the simulator's ledger", "dim")]
    return [
        (f"{ledger.issued} issued", "bold"),
        (f", {ledger.issuing} issuing, ", ""),
        (f"{ledger.doubles} issued twice", "bad" if ledger.doubles else "good"),
        ("  (simulator's ledger)", "dim"),
    ]


def header_lines(state: DemoState) -> list[str]:
    e, plan = state.endpoints, state.plan
    outage = (
        f"outage at {plan.outage_at_s:g} s for {plan.outage_for_s:g} s"
        if plan.outage_for_s
        else "no outage"
    )
    kept = "kept after the end: --keep" if state.keep else "removed at the end; --keep keeps them"
    return [
        f"invoice-gateway demo: {plan.duration_s:g} s, ~{plan.rate:g} req/s, {outage}",
        f"  gateway    {e.gateway_url}  health /healthz  pid {state.pids.get('gateway')}",
        f"  simulator  {e.simulator_url}  control {e.control_url}"
        f"  pid {state.pids.get('simulator')}",
        f"  profile    config/gateway.yaml with demo timings: {DEMO_TIMINGS}",
        f"  files      {state.workdir}  ({kept})",
    ]


# -- the views ----------------------------------------------------------------------------------


class View(Protocol):
    def start(self) -> None: ...
    def tick(self) -> None: ...
    def event(self, event: Event) -> None: ...
    def stop(self) -> None: ...


class PlainView:
    """Text lines without ANSI codes: events as they happen, a status line every few seconds.
    Alerts stand out with `!!`."""

    def __init__(self, state: DemoState) -> None:
        self._state = state
        self._last_status = -PLAIN_EVERY_S

    def start(self) -> None:
        for line in header_lines(self._state):
            self._print(line)

    def tick(self) -> None:
        now = self._state.elapsed()
        if now - self._last_status >= PLAIN_EVERY_S:
            self._last_status = now
            self._status()

    def event(self, event: Event) -> None:
        mark = "!! " if event.alert else ""
        self._print(f"[{clock(event.at_s)}] {mark}{event.text}")

    def stop(self) -> None:
        self._status()

    def _status(self) -> None:
        (_, phase), *rows = status_rows(self._state)
        parts = [phase[0][0]]
        for label, segments in rows:
            parts.append(" ".join(f"{label} {''.join(text for text, _ in segments)}".split()))
        self._print(f"[{clock(self._state.elapsed())}] {' | '.join(parts)}")

    @staticmethod
    def _print(line: str) -> None:
        print(line, flush=True)


class LiveView:
    """A rich `Live` display: the status block above the timeline, refreshed 4 times a second."""

    STYLES: Final = {
        "good": "green",
        "bad": "bold red",
        "warn": "yellow",
        "dim": "dim",
        "bold": "bold",
        "": "",
    }
    TIMELINE_LINES: Final = 14

    def __init__(self, state: DemoState, console: Console) -> None:
        self._state = state
        self._console = console
        self._live = Live(
            console=console, get_renderable=self._render, refresh_per_second=4, transient=False
        )

    def start(self) -> None:
        self._live.start()

    def tick(self) -> None:
        """Nothing to do: `Live` refreshes itself."""

    def event(self, event: Event) -> None:
        """Nothing to do: the next refresh shows it."""

    def stop(self) -> None:
        self._live.refresh()
        self._live.stop()

    def _render(self) -> RenderableType:
        state = self._state
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", justify="right")
        grid.add_column()
        for label, segments in status_rows(state):
            grid.add_row(label, Text.assemble(*((s, self.STYLES[st]) for s, st in segments)))
        header = header_lines(state)
        panel = Panel(
            grid,
            title=header[0],
            subtitle="Ctrl-C stops the demo",
            border_style="red" if state.platform_up is False else "green",
        )
        urls = Text("\n".join(header[1:]), style="dim")
        timeline = Table.grid(padding=(0, 2))
        timeline.add_column(style="dim")
        timeline.add_column()
        for event in state.events[-self.TIMELINE_LINES :]:
            timeline.add_row(
                clock(event.at_s), Text(event.text, style="bold red" if event.alert else "")
            )
        return Group(urls, panel, Text("timeline", style="bold"), timeline)


def choose_view(state: DemoState) -> View:
    """The live view on a terminal, plain lines otherwise."""
    console = Console()
    if sys.stdout.isatty() and console.is_terminal and not console.is_dumb_terminal:
        return LiveView(state, console)
    return PlainView(state)
