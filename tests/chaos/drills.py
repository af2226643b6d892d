"""What the chaos tests share: the mode (default or long), one drill run with its counts line,
the "no blind resends" bound, and the faults the drill engine has no step for.

    ChaosRun          one drill: runs the engine, keeps its timeline in `drill.log`, prints and
                      collects the counts line, owns the helper processes and tasks of its steps
    blind_resend_bound  how many duplicate-code answers a run may cause without a blind resend
    steps             store lock / WAL checkpointer (separate processes), disk fill, clock jumps
                      (libfaketime's timestamp file), slow clients (raw sockets)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict

from gateway.tools.drill.integrator import Book, Order
from gateway.tools.drill.runner import DrillOptions, DrillResult, DrillStage, run_drill
from gateway.tools.drill.scenarios import DrillScenario, Step
from gateway.tools.loadgen import SERVICES_PATH, SUBMIT_OPERATION, InvoiceFactory, read_answer
from tests.support.disk import fill

#: The counts line of every drill of the session, printed by the terminal summary.
RUN_LINES: list[str] = []

#: The default profile's dispatcher concurrency (deliveries in flight at once).
DISPATCHER_CONCURRENCY: Final = 8
#: The problem (slug) of a submission whose answer the gateway itself lost.
OUTCOME_UNKNOWN: Final = "outcome-unknown"
#: Platform faults after which the platform may have acted though the caller saw no answer:
#: each can cost one duplicate-code answer when the submission is reconciled.
ANSWER_LOST_FAULTS: Final = ("answer_lost", "truncate", "hang", "refuse")
STORE_FILE: Final = "gateway.db"
#: How long a helper process may take to start or to finish after its planned end.
HELPER_TIMEOUT_S: Final = 20.0


@dataclass(frozen=True)
class ChaosMode:
    """How hard the drills push: traffic length and rate, how many kills."""

    name: str
    traffic_s: float
    rate: float
    kills: int
    settle_timeout_s: float

    @classmethod
    def default(cls) -> ChaosMode:
        return cls("default", traffic_s=22.0, rate=50.0, kills=4, settle_timeout_s=45.0)

    @classmethod
    def long(cls) -> ChaosMode:
        return cls("long", traffic_s=90.0, rate=100.0, kills=10, settle_timeout_s=120.0)

    @property
    def scale(self) -> float:
        """Times of a scenario written for 30 s of traffic, stretched to this mode's length."""
        return self.traffic_s / 30.0


def seed_for(base: int, run_index: int) -> int:
    """A fixed seed per test and run: a failing run can be repeated exactly."""
    return base * 1000 + run_index


def faults_hit(result: DrillResult) -> Mapping[str, int]:
    """Platform fault rules that fired, by kind."""
    return {str(kind): int(n) for kind, n in result.faults_hit.items()}


def uncertain_answers(book: Book) -> int:
    """Client sends whose fate the client could not know: no HTTP answer at all (the gateway
    died or the connection broke), or the gateway's own "outcome unknown" problem."""
    return book.statuses[0] + book.problems[OUTCOME_UNKNOWN]


def blind_resend_bound(
    result: DrillResult, *, concurrency: int = DISPATCHER_CONCURRENCY, store_faults: int = 0
) -> int:
    """The most duplicate-code (E9106) answers a run may show if nothing was resent blindly.

    The platform answers E9106 only to an order number it has seen, so each E9106 is a send
    after one whose answer never arrived. A correct gateway makes such a send only to
    reconcile (docs/design.md#exactly-once), i.e. at most once per send whose outcome it could
    not know:

    - a platform fault that acts and then loses the answer: `answer_lost`, `truncate`, `hang`
      (answered by a reset), and `refuse` (it resets connections already open, possibly after
      the platform acted);
    - a gateway killed (or exiting by itself) mid-delivery: at most `concurrency` deliveries
      were in flight, each reconciled after the restart;
    - a store that refused the write recording a delivery (disk full, database locked): at most
      `concurrency` deliveries per episode are left to reconcile;
    - a client send with no answer or an "outcome unknown" answer: the gateway may have
      forwarded it, and its record is reconciled when the client sends it again.

    More E9106 answers than that mean the gateway sent again what it should have looked up.
    """
    hits = faults_hit(result)
    lost_in_transit = sum(hits.get(kind, 0) for kind in ANSWER_LOST_FAULTS)
    restarts = result.crashes + len(result.unexpected_exits)
    return (
        lost_in_transit + (restarts + store_faults) * concurrency + uncertain_answers(result.book)
    )


def counts_line(test: str, seed: int, result: DrillResult) -> str:
    """The check's summary, kills, faults hit and client answers by status, on one line (and
    each failing count of the check, with its first order numbers)."""
    hits = faults_hit(result)
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(hits.items()) if n) or "none"
    statuses = ", ".join(
        f"{status or 'no answer'}: {n}" for status, n in sorted(result.book.statuses.items())
    )
    return (
        f"{test} (seed {seed}, {result.duration_s:.0f} s): {result.check.summary()}; "
        f"kills {result.crashes}, unexpected exits {len(result.unexpected_exits)}, "
        f"E9106 {result.check.duplicates_rejected}; faults hit: {faults}; "
        f"client answers by status: {statuses}"
        + "".join(f"; {problem}" for problem in result.check.problems())
    )


def gateway_log_excerpt(workdir: Path, lines: int = 12) -> str:
    """The last warnings and errors of every gateway process of the drill (stderr files)."""
    parts = []
    for path in sorted(workdir.glob("gateway*.stderr.log")):
        text = path.read_text(errors="replace").splitlines()
        worth = [
            line
            for line in text
            if '"level": "error"' in line
            or '"level": "warning"' in line
            or '"level": "critical"' in line
            or "Traceback" in line
            or "Error" in line
        ]
        if worth:
            parts.append(f"--- {path.name} ---\n" + "\n".join(worth[-lines:]))
    return "\n".join(parts) or "(no warnings or errors in the gateway's stderr)"


class ChaosRun:
    """One drill of a chaos test, and everything its steps start (processes, tasks): all of it
    is stopped when the run ends, whatever happened."""

    def __init__(self, test: str, seed: int, mode: ChaosMode, workdir: Path) -> None:
        self.test = test
        self.seed = seed
        self.mode = mode
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.lines: list[str] = []
        self.dedup = False
        self._processes: list[asyncio.subprocess.Process] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def at(self, seconds: float) -> float:
        """A scenario time written for 30 s of traffic, in this mode."""
        return round(seconds * self.mode.scale, 2)

    def out(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    async def drill(
        self,
        scenario: DrillScenario,
        *,
        extra_steps: Sequence[Step] = (),
        gateway_env: Mapping[str, str] | None = None,
        store_dir: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        dedup: bool = False,
    ) -> DrillResult:
        """Run the drill, then print and keep its counts line. The simulator does not refuse a
        repeated order number unless `dedup`: what is proven is the gateway's own logic."""
        self.dedup = dedup
        options = DrillOptions(
            scenario,
            rate=self.mode.rate,
            seed=self.seed,
            extra_steps=tuple(extra_steps),
            gateway_env=dict(gateway_env or {}),
            store_dir=store_dir,
            overrides=dict(overrides or {}),
            settle_timeout_s=self.mode.settle_timeout_s,
            dedup=dedup,
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = await run_drill(options, self.out, self.workdir)
        finally:
            await self.close()
            (self.workdir / "drill.log").write_text("\n".join(self.lines) + "\n")
        line = counts_line(self.test, self.seed, result)
        RUN_LINES.append(line)
        self.out(line)
        return result

    def background(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run `work` alongside the timeline; cancelled when the run ends if still going."""

        async def wrapped() -> None:
            await work

        task = asyncio.create_task(wrapped())
        self._tasks.add(task)
        return task

    async def spawn(self, script: str, *args: str) -> asyncio.subprocess.Process:
        """A helper process (`python -c script args…`), killed when the run ends if still alive."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._processes.append(process)
        return process

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for process in self._processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), HELPER_TIMEOUT_S)
        self._processes.clear()


def assert_passed(
    run: ChaosRun,
    result: DrillResult,
    *,
    concurrency: int = DISPATCHER_CONCURRENCY,
    store_faults: int = 0,
) -> None:
    """The ledger check passed, the gateway never exited by itself, nothing was resent blindly.

    Against a simulator that does not deduplicate, "blindly" is counted directly: the platform
    processed a request to issue each order number at most once (sends per order number). With
    deduplication on, by the duplicate-code answers a run may cause (`blind_resend_bound`).
    """
    assert result.passed, (
        f"{result.check.summary()}\nproblems: {result.check.problems()}\n"
        f"unexpected exits: {result.unexpected_exits}\n"
        f"gateway log ({run.workdir}):\n{gateway_log_excerpt(run.workdir)}"
    )
    if not run.dedup:
        assert result.check.issued_once > 0, "nothing was issued: the run proves nothing"
        assert [] == result.check.resent, "order numbers the platform processed more than once"
        return
    bound = blind_resend_bound(result, concurrency=concurrency, store_faults=store_faults)
    assert result.check.duplicates_rejected <= bound, (
        f"{result.check.duplicates_rejected} duplicate-code answers, at most {bound} expected "
        f"without a blind resend (faults hit {faults_hit(result)}, kills {result.crashes}, "
        f"uncertain client answers {uncertain_answers(result.book)})"
    )


# -- steps the engine has no helper for -------------------------------------------------------


def step(at_s: float, what: str, act: Callable[[DrillStage], Awaitable[None]]) -> Step:
    return Step(at_s, what, act)


def random_kills(
    rng: random.Random, windows: Sequence[tuple[float, float, str]], count: int
) -> list[Step]:
    """`count` kill -9 steps at random times, dealt to `windows` (start, end, while what) in
    turn; each window's kills at random points of equal slots of it, so restarts never pile up."""
    per_window = [len(range(w, count, len(windows))) for w in range(len(windows))]
    steps = []
    for i in range(count):
        start, end, during = windows[i % len(windows)]
        slot = (end - start) / per_window[i % len(windows)]
        first = start + (i // len(windows)) * slot
        at = round(rng.uniform(first, first + max(slot - 0.5, 0.0)), 2)
        steps.append(Step(at, f"the gateway is killed (kill -9) {during}, then restarted", _crash))
    return steps


async def _crash(stage: DrillStage) -> None:
    await stage.crash_gateway()


def hold_lock(run: ChaosRun, at_s: float, store: Path, hold_s: float) -> Step:
    """Another process takes the database's write lock (`BEGIN EXCLUSIVE`) for `hold_s`."""
    script = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], timeout=15.0, isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "db.execute('COMMIT')\n"
        "print('released', flush=True)\n"
    )

    async def act(stage: DrillStage) -> None:
        process = await run.spawn(script, str(store), str(hold_s))
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), HELPER_TIMEOUT_S)
        stage.note(f"another process (pid {process.pid}) holds the store: {line.decode().strip()}")

        async def released() -> None:
            await asyncio.wait_for(process.wait(), hold_s + HELPER_TIMEOUT_S)
            stage.note(f"the other process released the store (exit code {process.returncode})")

        run.background(released())

    return Step(at_s, f"another process locks the store (BEGIN EXCLUSIVE) for {hold_s:g} s", act)


def checkpoint_loop(run: ChaosRun, at_s: float, store: Path, for_s: float) -> Step:
    """Another process runs `PRAGMA wal_checkpoint(TRUNCATE)` every 100 ms for `for_s`."""
    script = (
        "import json, sqlite3, sys, time\n"
        "until = time.monotonic() + float(sys.argv[2])\n"
        "db = sqlite3.connect(sys.argv[1], timeout=5.0, isolation_level=None)\n"
        "done = busy = errors = 0\n"
        "while time.monotonic() < until:\n"
        "    try:\n"
        "        busy += db.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0]\n"
        "        done += 1\n"
        "    except sqlite3.Error:\n"
        "        errors += 1\n"
        "    time.sleep(0.1)\n"
        "print(json.dumps({'checkpoints': done, 'busy': busy, 'errors': errors}), flush=True)\n"
    )

    async def act(stage: DrillStage) -> None:
        process = await run.spawn(script, str(store), str(for_s))

        async def finished() -> None:
            assert process.stdout is not None
            out = await asyncio.wait_for(process.stdout.read(), for_s + HELPER_TIMEOUT_S)
            await process.wait()
            stage.note(f"the checkpointing process ended: {out.decode().strip() or 'no output'}")

        run.background(finished())

    return Step(
        at_s, f"another process checkpoints the WAL (TRUNCATE) every 100 ms for {for_s:g} s", act
    )


def fill_disk(run: ChaosRun, at_s: float, disk: Path, hold_s: float, during: str) -> Step:
    """The store's filesystem fills up (a file grows until ENOSPC) and is freed `hold_s` later."""

    async def act(stage: DrillStage) -> None:
        filler = disk / f"filler-{at_s:g}"
        written = await asyncio.to_thread(fill, filler)
        stage.note(f"the store's disk is full ({written // 2**20} MiB of filler)")

        async def free() -> None:
            await asyncio.sleep(hold_s)  # the fault's duration
            filler.unlink()
            stage.note("the store's disk has room again")

        run.background(free())

    return Step(at_s, f"the store's disk fills up {during} for {hold_s:g} s", act)


def jump_clock(at_s: float, timestamp_file: Path, offset: str, during: str) -> Step:
    async def act(stage: DrillStage) -> None:
        await asyncio.to_thread(timestamp_file.write_text, f"{offset}\n")

    return Step(at_s, f"the gateway's wall clock steps to {offset} s {during}", act)


def store_rows(store: Path, order_nos: Sequence[str]) -> dict[str, str]:
    """The outbox state of each of `order_nos` that has a row (read straight from the file)."""
    if not order_nos:
        return {}
    marks = ",".join("?" * len(order_nos))
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        rows = db.execute(
            f"SELECT business_key, state FROM submission WHERE business_key IN ({marks})",  # noqa: S608 — placeholders only
            list(order_nos),
        ).fetchall()
    return {str(key): str(state) for key, state in rows}


# -- slow clients -----------------------------------------------------------------------------


@dataclass
class SlowClients:
    """Raw-socket clients that trickle a submission in a few bytes at a time, and clients that
    send one and never read the answer (they hang up later and send it again, as a client that
    lost an answer would, with the same idempotency key).

    Completed submissions join the integrator's book, so the ledger check covers them; one the
    gateway cut off must leave nothing behind (`cut_off`, checked against the store after)."""

    run: ChaosRun
    tricklers: int
    non_readers: int
    trickle_s: float
    hold_s: float
    cut_off: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _book: Book = field(default_factory=Book)

    def start(self, at_s: float) -> Step:
        async def act(stage: DrillStage) -> None:
            self._task = self.run.background(self._all(stage))

        return Step(
            at_s,
            f"{self.tricklers} clients trickle a submission in over {self.trickle_s:g} s, "
            f"{self.non_readers} send one and do not read the answer for {self.hold_s:g} s",
            act,
        )

    def finish(self, at_s: float) -> Step:
        async def act(stage: DrillStage) -> None:
            assert self._task is not None
            await asyncio.wait_for(asyncio.shield(self._task), HELPER_TIMEOUT_S)
            stage.note(
                f"slow clients done: {len(self.finished)} answered, {len(self.cut_off)} cut off"
            )

        return Step(at_s, "the slow clients are done", act)

    async def _all(self, stage: DrillStage) -> None:
        assert stage.credentials is not None  # the traffic (and so the run) has started
        self._book = stage.book
        api_key, user_tax = stage.credentials.tenant_key, stage.credentials.user_tax
        factory = InvoiceFactory(user_tax, seed=self.run.seed, prefix=f"SLOW{self.run.seed:08d}")
        port = stage.endpoints.gateway_port
        async with aiohttp.ClientSession() as session:
            clients = [
                self._trickle(stage, port, api_key, *factory.submission())
                for _ in range(self.tricklers)
            ] + [
                self._no_read(stage, session, port, api_key, *factory.submission())
                for _ in range(self.non_readers)
            ]
            await asyncio.gather(*clients)

    def _register(self, order_no: str, body: dict[str, Any]) -> Order:
        order = Order(order_no, body)
        self._book.orders[order_no] = order
        return order

    async def _trickle(
        self, stage: DrillStage, port: int, api_key: str, order_no: str, body: dict[str, Any]
    ) -> None:
        raw = _request(port, api_key, order_no, body)
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            pieces = max(1, int(self.trickle_s / 0.1))
            size = max(1, -(-len(raw) // pieces))
            try:
                for offset in range(0, len(raw), size):
                    writer.write(raw[offset : offset + size])
                    await writer.drain()
                    await asyncio.sleep(self.trickle_s / pieces)  # the client's pace
                answer = await asyncio.wait_for(reader.read(), HELPER_TIMEOUT_S)
            except (ConnectionError, TimeoutError):
                answer = b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        status, headers, payload = _parse(answer)
        if status == 0 or status == 408:
            self.cut_off.append(order_no)
            stage.note(f"a trickling client was cut off (order {order_no})")
            return
        order = self._register(order_no, body)
        order.sends += 1
        result = read_answer(
            "submit",
            status,
            headers,
            payload,
            time.perf_counter() - started,
            order_no=order_no,
        )
        if not self._book.record(order, result):
            raise AssertionError(f"a trickled submission got no settling answer: {status}")
        self.finished.append(order_no)

    async def _no_read(
        self,
        stage: DrillStage,
        session: aiohttp.ClientSession,
        port: int,
        api_key: str,
        order_no: str,
        body: dict[str, Any],
    ) -> None:
        order = self._register(order_no, body)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            order.sends += 1
            writer.write(_request(port, api_key, order_no, body))
            await writer.drain()
            await asyncio.sleep(self.hold_s)  # the client does not read meanwhile
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        del reader
        # The answer is lost to this client: it sends the same submission again until settled.
        url = f"http://127.0.0.1:{port}{SERVICES_PATH}"
        headers = {
            "method": SUBMIT_OPERATION,
            "X-Api-Key": api_key,
            "Idempotency-Key": order_no,
            "Content-Type": "application/json; charset=utf-8",
        }
        deadline = time.monotonic() + HELPER_TIMEOUT_S
        while time.monotonic() < deadline:
            order.sends += 1
            started = time.perf_counter()
            try:
                async with session.post(
                    url,
                    data=json.dumps(body, ensure_ascii=False).encode(),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    payload = await response.read()
                    result = read_answer(
                        "submit",
                        response.status,
                        response.headers,
                        payload,
                        time.perf_counter() - started,
                        order_no=order_no,
                    )
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)  # the client's back-off
                continue
            if self._book.record(order, result):
                self.finished.append(order_no)
                return
            await asyncio.sleep(0.5)  # the client's back-off


def _request(port: int, api_key: str, order_no: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, ensure_ascii=False).encode()
    head = (
        f"POST {SERVICES_PATH} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"method: {SUBMIT_OPERATION}\r\n"
        f"X-Api-Key: {api_key}\r\n"
        f"Idempotency-Key: {order_no}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + data


def _parse(answer: bytes) -> tuple[int, CIMultiDict[str], bytes]:
    """Status, headers and body of a whole HTTP/1.1 answer (status 0: none, or cut short)."""
    head, separator, payload = answer.partition(b"\r\n\r\n")
    if not separator:
        return 0, CIMultiDict(), b""
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, CIMultiDict(), b""
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    elif "Content-Length" in headers and len(payload) < int(headers["Content-Length"]):
        return 0, CIMultiDict(), b""
    return status, headers, payload


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)
