"""The scenario: client traffic through an outage and the recovery, told as it happens.

    traffic starts → outage injected → "platform down — circuit opened" → platform listening
    again → "queued N submissions during the outage" → "platform back — draining ~N/s"
    → traffic stops → settle: every accepted submission delivered (or failed), the platform
    done issuing → the ledger check: "all delivered: N accepted, N issued, 0 issued twice"

The circuit and the outbox are followed from the client's side (answers, and the status of each
queued submission); see `gateway.tools.demo.outbox`. `run_demo` puts it all together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import aiohttp

from gateway.tools.children import (
    Child,
    ChildStartError,
    Credentials,
    Endpoints,
    SimulatorControl,
    ToolError,
    gateway_child,
    platform_listening,
    scratch_dir,
    simulator_child,
    stop_children,
    wait_ready,
    write_gateway_config,
)
from gateway.tools.demo.outbox import OutboxTracker, StatusPoller, describe_counts
from gateway.tools.demo.plan import (
    DEMO_OVERRIDES,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ISSUE_DELAY_S,
    DemoError,
    Plan,
)
from gateway.tools.demo.view import (
    DemoState,
    Event,
    View,
    choose_view,
    clock,
    describe_drain,
    describe_ledger,
    describe_outage,
    is_alert,
)
from gateway.tools.loadgen import OUTCOMES, InvoiceFactory, TrafficGenerator, TrafficStats

#: At most this many "gateway answers ..." lines on the timeline.
MAX_ANSWER_EVENTS: Final = 8
#: How long the settle phase waits for the outbox to drain before it gives up and says so.
SETTLE_TIMEOUT_S: Final = 60.0
#: How often the settle phase reports its progress.
PROGRESS_EVERY_S: Final = 2.0
#: Deliveries are watched this long before the drain rate is announced.
DRAIN_SAMPLE_S: Final = 1.0
#: How long the platform may take to finish issuing once the outbox is empty.
ISSUE_WAIT_S: Final = ISSUE_DELAY_S + 5.0


class Scenario:
    """Runs the plan against running children, feeding `state` and the view."""

    def __init__(
        self,
        state: DemoState,
        view: View,
        control: SimulatorControl,
        traffic: TrafficGenerator,
        poller: StatusPoller,
        children: Sequence[Child],
        stop: asyncio.Event,
    ) -> None:
        self._state = state
        self._plan = state.plan
        self._view = view
        self._control = control
        self._traffic = traffic
        self._poller = poller
        self._children = children
        self._stop = stop
        self._outage_injected = False
        self._announced: set[tuple[str, int, str]] = set()
        #: Submissions by outcome when the platform went down (until the outage is told).
        self._outage_before: Counter[str] | None = None
        #: "Platform down" told, "platform back" not yet.
        self._in_outage = False
        #: The platform was seen back after an outage; 503 circuit-open answers counted then.
        self._recovered = False
        self._circuit_answers_seen = 0
        #: Submissions queued, forwarded, and queued ones delivered, before the circuit opened.
        self._queued_before = 0
        self._forwarded_before = 0
        self._drained_before = 0
        #: When deliveries from the outbox were first seen after the circuit opened.
        self._drain_seen_at: float | None = None
        #: Set when a child died during the run; the demo then fails.
        self.failure: Child | None = None

    def note(self, text: str, *, alert: bool = False) -> None:
        event = Event(self._state.elapsed(), text, alert)
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
            asyncio.create_task(self._poller.run()),
            asyncio.create_task(self._watch()),
        ]
        try:
            if plan.outage_for_s > 0 and await self._until(plan.outage_at_s):
                self._outage_before = Counter(state.stats.submissions)
                await self._control.add_fault({"kind": "refuse", "duration_s": plan.outage_for_s})
                self._outage_injected = True
                self.note(
                    f"outage injected: the platform refuses connections for {plan.outage_for_s:g} s"
                )
                if await self._until(plan.outage_end_s):
                    await self._platform_back(timeout_s=3.0)
                    self._outage_injected = False
            await self._until(plan.traffic_until_s)
            traffic_stop.set()
            await traffic
            self.note(
                f"traffic stopped after {state.stats.total} requests ({self._outcome_totals()})"
            )
            if not self._stop.is_set():
                await self.settle()
        finally:
            traffic_stop.set()
            for task in [traffic, *watchers]:
                task.cancel()
            await asyncio.gather(traffic, *watchers, return_exceptions=True)
        self.watch_outbox()  # the drain may have ended since the watcher last looked
        state.ledger = await self._control.ledger() or state.ledger
        if self._stop.is_set() and self.failure is None:
            self.note(f"interrupted at {clock(state.elapsed())}")
        if self._outage_before is not None:
            self.note(describe_outage(state.stats.submissions - self._outage_before))
        outbox = state.outbox
        verdict = describe_ledger(
            outbox.accepted,
            state.stats.uncertain,
            state.ledger,
            failed=outbox.statuses()["failed"],
            unfinished=outbox.unfinished(),
        )
        self.note(verdict, alert=is_alert(verdict))
        state.finished = True

    async def _until(self, at_s: float) -> bool:
        """Sleep until `at_s` into the scenario; False if the demo was stopped first."""
        delay = at_s - self._state.elapsed()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    async def _platform_back(self, timeout_s: float) -> None:
        """Wait a little for the platform to be seen listening again."""
        deadline = self._state.elapsed() + timeout_s
        while not self._state.platform_up and self._state.elapsed() < deadline:
            if not await self._until(self._state.elapsed() + 0.1):
                return

    async def settle(self) -> None:
        """Wait until every accepted submission is delivered or failed (or stuck, or the
        timeout), reporting progress; then until the platform has issued them all."""
        state, outbox = self._state, self._state.outbox
        deadline = state.elapsed() + SETTLE_TIMEOUT_S
        last_note, last_progress = -PROGRESS_EVERY_S, (-1, -1)
        waiting_told = False
        while not outbox.settled:
            now = state.elapsed()
            if now >= deadline:
                self.note(
                    f"NOT SETTLED after {SETTLE_TIMEOUT_S:g} s — still in the outbox: "
                    f"{describe_counts(outbox.unfinished())}",
                    alert=True,
                )
                return
            progress = (outbox.drained, outbox.queued_total)
            if self._in_outage:  # the drain, once seen, is told by `watch_outbox`
                if not waiting_told and self._drain_seen_at is None:
                    self.note(f"waiting for the platform: {outbox.queued_now} submissions queued")
                    waiting_told = True
            elif outbox.queued_total and now - last_note >= PROGRESS_EVERY_S:
                if progress != last_progress:
                    self.note(f"draining: {progress[0]} of {progress[1]} delivered")
                last_note, last_progress = now, progress
            if not await self._until(now + 0.25):
                return
        stuck = outbox.unfinished()
        if stuck:
            self.note(
                f"{describe_counts(stuck)} in the outbox will not be delivered without on-call",
                alert=True,
            )
        deadline = state.elapsed() + ISSUE_WAIT_S
        while state.elapsed() < deadline:
            ledger = await self._control.ledger()
            if ledger is not None:
                state.ledger = ledger
                if ledger.issuing == 0:
                    return
            if not await self._until(min(deadline, state.elapsed() + 0.25)):
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
                        self.note(
                            f"outage over: the platform accepts connections again "
                            f"(down for {down_for:.1f} s)"
                        )
                        if not state.circuit_open and self._outage_before is not None:
                            # Nothing was queued: tell what happened to the submissions now.
                            self.note(
                                describe_outage(state.stats.submissions - self._outage_before)
                            )
                            self._outage_before = None
                    elif not self._outage_injected:
                        self.note(
                            "the platform stopped accepting connections (not the demo's doing)"
                        )
                state.platform_up, state.platform_since_s = up, state.elapsed()
            await asyncio.sleep(0.25)

    async def _poll_ledger(self) -> None:
        while True:
            self._state.ledger = await self._control.ledger() or self._state.ledger
            await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        """Children alive? New kinds of answers? The circuit and the outbox? Then let the view
        tick."""
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
            self.watch_outbox()
            self._view.tick()
            await asyncio.sleep(0.25)

    def watch_outbox(self) -> None:
        """Tell when the circuit opens and when the outbox drains, as the client sees it
        (called by the watcher four times a second).

        There is no circuit-state source for clients yet (that comes with the admin API and
        `/status`): the first 503 `circuit-open` or 202 says it opened; a submission forwarded
        at once again says it closed; queued submissions being delivered say the drain began.
        """
        state, outbox = self._state, self._state.outbox
        now = state.elapsed()
        if not self._in_outage:
            opened = outbox.circuit_open_answers > self._circuit_answers_seen
            # After a recovery only a 503 circuit-open reopens it: a stray 202 (an answer lost
            # on the way back) is no sign of an outage.
            if opened or (not self._recovered and outbox.queued_total > 0):
                self._in_outage = True
                state.circuit_open, state.circuit_since_s = True, now
                self._forwarded_before = outbox.forwarded
                self._drained_before = outbox.drained
                if self._outage_before is None:  # not the demo's outage: count from here,
                    before = Counter(state.stats.submissions)  # the 202s just seen included
                    before["queued"] -= outbox.queued_total - self._queued_before
                    self._outage_before = before
                self.note("platform down — circuit opened")
            return
        if state.circuit_open and outbox.forwarded > self._forwarded_before:
            state.circuit_open, state.circuit_since_s = False, now
        if outbox.drained <= self._drained_before:
            return
        if self._drain_seen_at is None:
            self._drain_seen_at = now
        if now - self._drain_seen_at < DRAIN_SAMPLE_S and outbox.queued_now:
            return
        if state.circuit_open:
            state.circuit_open, state.circuit_since_s = False, now
        self._in_outage, self._drain_seen_at = False, None
        self._recovered, self._circuit_answers_seen = True, outbox.circuit_open_answers
        self._queued_before = outbox.queued_total
        if self._outage_before is not None:
            self.note(describe_outage(state.stats.submissions - self._outage_before))
            self._outage_before = None
        self.note(describe_drain(outbox.overall_drain_rate()))


# -- putting it together ------------------------------------------------------------------------


def build_children(workdir: Path, endpoints: Endpoints, credentials: Credentials) -> list[Child]:
    """The simulator and the gateway (default profile with the demo's timings), not started."""
    env = credentials.child_env()
    config = write_gateway_config(workdir, endpoints, DEMO_OVERRIDES)
    simulator = simulator_child(endpoints, env, workdir, "--issue-delay", str(ISSUE_DELAY_S))
    return [simulator, gateway_child(config, env, workdir)]


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
        outbox = OutboxTracker()
        state = DemoState(
            plan,
            endpoints,
            stats,
            workdir,
            keep=bool(args.keep),
            outbox=outbox,
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
            on_result=outbox.observe,
        )
        poller = StatusPoller(session, endpoints.gateway_url, credentials.tenant_key, outbox)
        view = choose_view(state)
        control = SimulatorControl(session, endpoints.control_url)
        scenario = Scenario(state, view, control, traffic, poller, children, stop)
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
    """Run the demo; 0 when it finished or was interrupted (whatever the ledger check said),
    1 when a child failed, 2 on usage."""
    try:
        plan = Plan.from_args(args)
    except DemoError as exc:
        print(f"invoice-gateway demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    children: list[Child] = []
    with scratch_dir("demo", "invoice-gateway-demo-", keep=args.keep) as workdir:
        try:
            return asyncio.run(_demo(plan, args, workdir, children))
        except KeyboardInterrupt:
            return EXIT_OK
        except ChildStartError as exc:
            print(exc.explain("demo"), file=sys.stderr)
            return EXIT_FAILURE
        except ToolError as exc:
            print(f"invoice-gateway demo: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            stop_children(children)
