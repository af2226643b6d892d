"""`invoice-gateway demo`: simulator, gateway and client traffic through an outage (SPEC §8).

    Plan              the timeline: healthy → outage → recovery → settle → ledger check
    Child             one child process (simulator or gateway): start, readiness, stop
    SimulatorControl  the simulator's `/_sim/` API: fault rules and the ledger
    Scenario          runs the plan, watches the platform and the children, writes the timeline
    LiveView          a refreshing terminal view (rich), when stdout is a terminal
    PlainView         periodic plain text lines otherwise (CI, pipes)

Everything lives in a temporary directory (gateway config, SQLite store, child logs) that is
removed at the end unless `--keep` is given. Children are always stopped, also on errors and
Ctrl-C: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
import yaml
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gateway.loadgen import (
    NO_ANSWER,
    OUTCOMES,
    InvoiceFactory,
    TrafficGenerator,
    TrafficStats,
)
from gateway.simulator.tax_numbers import make_tax_number

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent
PROFILE: Final = PACKAGE_ROOT / "config" / "gateway.yaml"

READY_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0
#: Time the simulator takes from accepting an invoice to issuing it.
ISSUE_DELAY_S: Final = 1.0
#: How often the plain view prints a status line.
PLAIN_EVERY_S: Final = 2.0
#: At most this many "gateway answers ..." lines on the timeline.
MAX_ANSWER_EVENTS: Final = 8


class DemoError(Exception):
    """The demo cannot run as asked; the message says what to do."""


class ChildStartError(DemoError):
    """A child process did not start; carries the tail of its stderr."""

    def __init__(self, message: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


# -- the command line ---------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _positive(text)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its subcommand parser."""
    parser.add_argument(
        "--duration",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="length of the whole scenario (default 60)",
    )
    parser.add_argument(
        "--rate",
        type=_positive,
        default=20.0,
        metavar="N",
        help="client requests per second, ~80%% submissions and 20%% result queries (default 20)",
    )
    parser.add_argument(
        "--outage-at",
        type=_non_negative,
        metavar="SECONDS",
        help="when the platform goes down (default: a quarter into the scenario)",
    )
    parser.add_argument(
        "--outage-for",
        type=_non_negative,
        metavar="SECONDS",
        help="how long it stays down; 0 for no outage (default: a third of the scenario)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the working directory (gateway config, store, logs) and print its path",
    )
    parser.add_argument("--seed", type=int, help="seed for the generated invoices and traffic mix")


@dataclass(frozen=True, slots=True)
class Plan:
    """The scenario's timeline, in seconds since the traffic started."""

    duration_s: float
    rate: float
    outage_at_s: float
    outage_for_s: float
    settle_s: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        duration = float(args.duration)
        if duration < 5:
            raise DemoError("--duration must be at least 5 seconds")
        settle = min(5.0, max(1.5, duration * 0.1))
        outage_at = round(duration / 4, 1) if args.outage_at is None else float(args.outage_at)
        outage_for = round(duration / 3, 1) if args.outage_for is None else float(args.outage_for)
        plan = cls(duration, float(args.rate), outage_at, outage_for, settle)
        if outage_for > 0 and plan.outage_end_s > plan.traffic_until_s:
            raise DemoError(
                f"the outage (at {outage_at:g} s for {outage_for:g} s) must end before traffic "
                f"stops at {plan.traffic_until_s:g} s; shorten --outage-at or --outage-for, or "
                "lengthen --duration"
            )
        return plan

    @property
    def outage_end_s(self) -> float:
        return self.outage_at_s + self.outage_for_s

    @property
    def traffic_until_s(self) -> float:
        return self.duration_s - self.settle_s

    def phase(self, elapsed_s: float) -> str:
        if self.outage_for_s > 0 and self.outage_at_s <= elapsed_s < self.outage_end_s:
            return "outage"
        if elapsed_s >= self.traffic_until_s:
            return "settle"
        if self.outage_for_s > 0 and elapsed_s >= self.outage_end_s:
            return "recovery"
        return "healthy"


# -- the children -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """Fresh, fake platform credentials and tenant key for one run."""

    app_key: str
    app_secret: str
    user_tax: str
    tenant_key: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            app_key=f"demo{secrets.token_hex(4)}",
            app_secret=secrets.token_hex(16),
            user_tax=make_tax_number(secrets.randbelow(10**9)),
            tenant_key=f"demo-{secrets.token_urlsafe(18)}",
        )

    def child_env(self) -> dict[str, str]:
        """Our environment without gateway settings, plus these credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NUONUO_"))}
        path = env.get("PYTHONPATH")
        env.update(
            NUONUO_APP_KEY=self.app_key,
            NUONUO_APP_SECRET=self.app_secret,
            NUONUO_USER_TAX=self.user_tax,
            GATEWAY_DEMO_API_KEY=self.tenant_key,
            PYTHONPATH=f"{PACKAGE_ROOT}{os.pathsep}{path}" if path else str(PACKAGE_ROOT),
            PYTHONUNBUFFERED="1",
        )
        return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where everything listens, on free ports of 127.0.0.1."""

    simulator_port: int
    control_port: int
    gateway_port: int
    admin_port: int

    @classmethod
    def allocate(cls) -> Endpoints:
        return cls(free_port(), free_port(), free_port(), free_port())

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


class Child:
    """A child process in its own session, with stdout and stderr in files of `workdir`."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path):
        self.name = name
        self._argv = list(argv)
        self._env = dict(env)
        self._workdir = workdir
        self.stderr_path = workdir / f"{name}.stderr.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (
            (self._workdir / f"{self.name}.stdout.log").open("wb") as out,
            self.stderr_path.open("wb") as err,
        ):
            # Own session: a Ctrl-C in the terminal reaches only the demo, which stops us.
            self._process = subprocess.Popen(  # noqa: S603 — our own interpreter and module
                self._argv,
                env=self._env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def exit_code(self) -> int | None:
        """None while it runs (or never started)."""
        return self._process.poll() if self._process is not None else None

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout_s: float) -> bool:
        """Wait for it to exit; False on timeout."""
        if self._process is None:
            return True
        try:
            self._process.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signum)


def stop_children(children: Sequence[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to all, then SIGKILL to whatever has not exited after `timeout_s`."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        if not child.wait(deadline - time.monotonic()):
            child.kill()
            child.wait(STOP_TIMEOUT_S)


def write_gateway_config(workdir: Path, endpoints: Endpoints) -> Path:
    """The default profile, pointed at the simulator, with everything else in `workdir`."""
    try:
        config: dict[str, Any] = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DemoError(
            f"cannot read the default profile {PROFILE}: {exc.strerror}; run the demo from a "
            "source checkout (make demo)"
        ) from None
    config["listen"] = f"127.0.0.1:{endpoints.gateway_port}"
    config.setdefault("admin", {})["listen"] = f"127.0.0.1:{endpoints.admin_port}"
    config["store_url"] = f"sqlite:///{workdir / 'gateway.db'}"
    config["upstream"]["url"] = endpoints.simulator_url
    config["log"] = {"format": "json", "level": "info"}
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def build_children(workdir: Path, endpoints: Endpoints, credentials: Credentials) -> list[Child]:
    env = credentials.child_env()
    command = [sys.executable, "-m", "gateway"]
    config = write_gateway_config(workdir, endpoints)
    simulator = Child(
        "simulator",
        [
            *command,
            "simulate",
            "--listen",
            f"127.0.0.1:{endpoints.simulator_port}",
            "--control-listen",
            f"127.0.0.1:{endpoints.control_port}",
            "--issue-delay",
            str(ISSUE_DELAY_S),
        ],
        env,
        workdir,
    )
    gateway = Child("gateway", [*command, "run", "--config", str(config)], env, workdir)
    return [simulator, gateway]


async def wait_ready(
    child: Child, session: aiohttp.ClientSession, url: str, stop: asyncio.Event | None = None
) -> None:
    """Poll `url` until it answers 200 (or `stop` is set); raise `ChildStartError` if the child
    exits or stalls."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        code = child.exit_code()
        if code is not None:
            raise ChildStartError(
                f"the {child.name} exited with code {code} while starting", child.stderr_tail()
            )
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    if stop and stop.is_set():
        return
    raise ChildStartError(
        f"the {child.name} did not answer {url} within {READY_TIMEOUT_S:g} s", child.stderr_tail()
    )


# -- the simulator's control API ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """What the simulated platform says it issued (`GET /_sim/ledger`, `totals`)."""

    accepted: int
    issued: int
    issuing: int
    failed: int
    doubles: int

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LedgerTotals:
        totals = document.get("totals", {})
        return cls(
            **{name: int(totals.get(name, 0)) for name in cls.__dataclass_fields__},
        )


class SimulatorControl:
    def __init__(self, session: aiohttp.ClientSession, control_url: str) -> None:
        self._session = session
        self._url = control_url.rstrip("/") + "/_sim"
        self._timeout = aiohttp.ClientTimeout(total=3)

    async def add_fault(self, rule: Mapping[str, Any]) -> str:
        """Install a fault rule; its id. Raises `DemoError` when the simulator refuses it."""
        try:
            async with self._session.post(
                f"{self._url}/faults", json=dict(rule), timeout=self._timeout
            ) as response:
                document = await response.json()
                if response.status >= 300:
                    raise DemoError(f"the simulator refused the fault rule {rule}: {document}")
                return str(document["id"])
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DemoError(f"cannot reach the simulator's control API: {exc!r}") from exc

    async def ledger(self) -> LedgerTotals | None:
        """The ledger's totals, or None when the simulator does not answer."""
        try:
            async with self._session.get(
                f"{self._url}/ledger", params={"invoices": "0"}, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    return None
                return LedgerTotals.from_json(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None


async def platform_listening(port: int) -> bool:
    """Whether the simulated platform accepts TCP connections (a `refuse` outage closes it)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# -- what the view shows ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    text: str


def clock(seconds: float) -> str:
    """`mm:ss` of a time since the start."""
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


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


def describe_ledger(accepted: int, uncertain: int, ledger: LedgerTotals | None) -> str:
    """The final check: what the gateway acknowledged against what the platform issued.

    `uncertain` submissions lost their answer on the way back, so each may or may not have been
    issued; everything adds up when `accepted <= issued <= accepted + uncertain`.
    """
    if ledger is None:
        return f"{accepted} accepted; the simulator's ledger could not be read"
    line = f"{accepted} accepted, {ledger.issued} issued, {ledger.doubles} issued twice"
    extras = []
    if ledger.issuing:
        extras.append(f"{ledger.issuing} still issuing")
    if ledger.failed:
        extras.append(f"{ledger.failed} failed")
    if uncertain:
        extras.append(f"{uncertain} whose answer was lost, so maybe issued")
    if extras:
        line += f" ({'; '.join(extras)})"
    if ledger.doubles:
        return f"DOUBLES: {line}"
    if ledger.issuing:
        return f"not settled yet: {line}"
    if accepted <= ledger.issued <= accepted + uncertain:
        return f"all delivered: {line}"
    if ledger.issued < accepted:
        return f"MISSING: {line}"
    return f"check: {line}"


@dataclass
class DemoState:
    """Everything the views show; written by the scenario, read by the views."""

    plan: Plan
    endpoints: Endpoints
    stats: TrafficStats
    workdir: Path
    keep: bool
    pids: dict[str, int | None] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    platform_up: bool | None = None
    platform_since_s: float = 0.0
    ledger: LedgerTotals | None = None
    finished: bool = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def phase(self) -> str:
        return "finished" if self.finished else self.plan.phase(self.elapsed())


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
    if state.platform_up is None:
        platform: list[Segment] = [("checking", "dim")]
    else:
        since = f" since {clock(state.platform_since_s)}"
        if state.platform_up:
            platform = [("up", "good"), (since, "dim")]
        else:
            platform = [("DOWN", "bad"), (f"{since} ({now - state.platform_since_s:.0f} s)", "")]
    rows.append(("platform", platform))

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

    stats = state.stats
    accepted: list[Segment] = [
        (f"{stats.accepted} submissions", "bold"),
        (" by the gateway", "dim"),
    ]
    if stats.uncertain:
        accepted.append((f", {stats.uncertain} with a lost answer", "warn"))
    rows.append(("accepted", accepted))

    ledger = state.ledger
    if ledger is None:
        issued: list[Segment] = [("waiting for the simulator's ledger", "dim")]
    else:
        issued = [
            (f"{ledger.issued} issued", "bold"),
            (f", {ledger.issuing} issuing, ", ""),
            (f"{ledger.doubles} issued twice", "bad" if ledger.doubles else "good"),
            ("  (simulator's ledger)", "dim"),
        ]
    rows.append(("invoices", issued))
    return rows


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
        f"  files      {state.workdir}  ({kept})",
    ]


class View(Protocol):
    def start(self) -> None: ...
    def tick(self) -> None: ...
    def event(self, event: Event) -> None: ...
    def stop(self) -> None: ...


class PlainView:
    """Text lines without ANSI codes: events as they happen, a status line every few seconds."""

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
        self._print(f"[{clock(event.at_s)}] {event.text}")

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
            timeline.add_row(clock(event.at_s), event.text)
        return Group(urls, panel, Text("timeline", style="bold"), timeline)


# -- the scenario -------------------------------------------------------------------------------


class Scenario:
    """Runs the plan against running children, feeding `state` and the view."""

    def __init__(
        self,
        state: DemoState,
        view: View,
        control: SimulatorControl,
        traffic: TrafficGenerator,
        children: Sequence[Child],
        stop: asyncio.Event,
    ) -> None:
        self._state = state
        self._plan = state.plan
        self._view = view
        self._control = control
        self._traffic = traffic
        self._children = children
        self._stop = stop
        self._outage_injected = False
        self._announced: set[tuple[str, int, str]] = set()
        #: Set when a child died during the run; the demo then fails.
        self.failure: Child | None = None

    def note(self, text: str) -> None:
        event = Event(self._state.elapsed(), text)
        self._state.events.append(event)
        self._view.event(event)

    async def run(self) -> None:
        plan, state = self._plan, self._state
        self.note(
            f"simulator and gateway up; sending ~{plan.rate:g} requests/s "
            "(invoice submissions and result queries)"
        )
        traffic_stop = asyncio.Event()
        traffic = asyncio.create_task(self._traffic.run(traffic_stop, drain_s=5.0))
        watchers = [
            asyncio.create_task(self._watch_platform()),
            asyncio.create_task(self._poll_ledger()),
            asyncio.create_task(self._watch()),
        ]
        try:
            if plan.outage_for_s > 0 and await self._until(plan.outage_at_s):
                before = Counter(state.stats.submissions)
                await self._control.add_fault({"kind": "refuse", "duration_s": plan.outage_for_s})
                self._outage_injected = True
                self.note(
                    f"platform down — outage injected (connections refused for "
                    f"{plan.outage_for_s:g} s)"
                )
                if await self._until(plan.outage_end_s):
                    await self._platform_back(timeout_s=3.0)
                    self._outage_injected = False
                    self.note(describe_outage(state.stats.submissions - before))
            await self._until(plan.traffic_until_s)
            traffic_stop.set()
            await traffic
            self.note(
                f"traffic stopped after {state.stats.total} requests ({self._outcome_totals()})"
            )
            if not self._stop.is_set():
                self.note("waiting for the platform to finish issuing")
                await self._settle()
        finally:
            traffic_stop.set()
            for task in [traffic, *watchers]:
                task.cancel()
            await asyncio.gather(traffic, *watchers, return_exceptions=True)
        state.ledger = await self._control.ledger() or state.ledger
        if self._stop.is_set() and self.failure is None:
            self.note(f"interrupted at {clock(state.elapsed())}")
        self.note(describe_ledger(state.stats.accepted, state.stats.uncertain, state.ledger))
        state.finished = True

    async def _until(self, at_s: float) -> bool:
        """Sleep until `at_s` into the scenario; False if the demo was stopped first."""
        delay = at_s - self._state.elapsed()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    async def _platform_back(self, timeout_s: float) -> None:
        """Wait a little for the probe to see the platform listening again."""
        deadline = self._state.elapsed() + timeout_s
        while not self._state.platform_up and self._state.elapsed() < deadline:
            if not await self._until(self._state.elapsed() + 0.1):
                return

    async def _settle(self) -> None:
        """Wait for the platform to finish issuing: until the end of the plan, or a little
        longer when traffic stopped late (a slow machine), so the ledger check is fair."""
        deadline = max(self._plan.duration_s, self._state.elapsed() + ISSUE_DELAY_S + 2.0)
        while self._state.elapsed() < deadline:
            ledger = await self._control.ledger()
            if ledger is not None:
                self._state.ledger = ledger
                if ledger.issuing == 0:
                    return
            if not await self._until(min(deadline, self._state.elapsed() + 0.25)):
                return

    def _outcome_totals(self) -> str:
        counts = self._state.stats.outcomes
        order = [*OUTCOMES, *sorted(set(counts) - set(OUTCOMES))]
        return ", ".join(f"{counts[o]} {o}" for o in order if counts[o]) or "none answered"

    async def _watch_platform(self) -> None:
        state = self._state
        port = state.endpoints.simulator_port
        while True:
            up = await platform_listening(port)
            if up != state.platform_up:
                if state.platform_up is not None:
                    if up:
                        down_for = state.elapsed() - state.platform_since_s
                        self.note(f"platform back (down for {down_for:.1f} s)")
                    elif not self._outage_injected:
                        self.note("platform down (not injected by the demo)")
                state.platform_up, state.platform_since_s = up, state.elapsed()
            await asyncio.sleep(0.25)

    async def _poll_ledger(self) -> None:
        while True:
            self._state.ledger = await self._control.ledger() or self._state.ledger
            await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        """Children alive? New kinds of answers? Then let the view tick."""
        while True:
            for child in self._children:
                code = child.exit_code()
                if code is not None and self.failure is None:
                    self.failure = child
                    self.note(f"the {child.name} exited unexpectedly (exit code {code})")
                    self._stop.set()
            for key in self._state.stats.answers:
                if key not in self._announced and len(self._announced) < MAX_ANSWER_EVENTS:
                    self._announced.add(key)
                    outcome, status, detail = key
                    what = f"no answer ({detail})" if status == 0 else f"{status}: {detail}"
                    self.note(f"gateway answers {what} — {outcome}")
            self._view.tick()
            await asyncio.sleep(0.25)


# -- putting it together ------------------------------------------------------------------------


def _choose_view(state: DemoState) -> View:
    console = Console()
    if sys.stdout.isatty() and console.is_terminal and not console.is_dumb_terminal:
        return LiveView(state, console)
    return PlainView(state)


async def _demo(plan: Plan, args: argparse.Namespace, workdir: Path, children: list[Child]) -> int:
    # Ctrl-C and SIGTERM end the demo gracefully from the first moment, startup included.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await _run(plan, args, workdir, children, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _run(
    plan: Plan, args: argparse.Namespace, workdir: Path, children: list[Child], stop: asyncio.Event
) -> int:
    credentials = Credentials.generate()
    endpoints = Endpoints.allocate()
    children.extend(build_children(workdir, endpoints, credentials))
    for child in children:
        child.start()
    simulator, gateway = children
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=80)) as session:
        await asyncio.gather(
            wait_ready(simulator, session, f"{endpoints.control_url}/_sim/health", stop),
            wait_ready(gateway, session, f"{endpoints.gateway_url}/healthz", stop),
        )
        if stop.is_set():
            return EXIT_OK
        stats = TrafficStats()
        state = DemoState(
            plan,
            endpoints,
            stats,
            workdir,
            keep=bool(args.keep),
            pids={child.name: child.pid for child in children},
        )
        traffic = TrafficGenerator(
            session,
            endpoints.gateway_url,
            credentials.tenant_key,
            InvoiceFactory(credentials.user_tax, seed=args.seed),
            stats,
            rate=plan.rate,
            seed=args.seed,
        )
        view = _choose_view(state)
        control = SimulatorControl(session, endpoints.control_url)
        scenario = Scenario(state, view, control, traffic, children, stop)
        view.start()
        try:
            await scenario.run()
        finally:
            view.stop()
    if scenario.failure is not None:
        print(
            f"invoice-gateway demo: the {scenario.failure.name} stopped during the demo; the last "
            f"lines of its log:\n{scenario.failure.stderr_tail()}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it finished or was interrupted, 1 when a child failed, 2 on usage."""
    try:
        plan = Plan.from_args(args)
    except DemoError as exc:
        print(f"invoice-gateway demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    workdir = Path(tempfile.mkdtemp(prefix="invoice-gateway-demo-"))
    children: list[Child] = []
    try:
        return asyncio.run(_demo(plan, args, workdir, children))
    except KeyboardInterrupt:
        return EXIT_OK
    except ChildStartError as exc:
        print(
            f"invoice-gateway demo: {exc}.\n--- last lines of its stderr ---\n"
            f"{exc.stderr_tail or '(empty)'}\n---\n"
            "What to do: read the error above; `invoice-gateway check-config config/gateway.yaml` "
            "checks the profile, and `--keep` keeps the config and full logs for a look.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except DemoError as exc:
        print(f"invoice-gateway demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        stop_children(children)
        if args.keep:
            print(f"invoice-gateway demo: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
