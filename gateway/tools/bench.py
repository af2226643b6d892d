"""`invoice-gateway bench`: the project's own benchmark of the SPEC §9 targets (never a timed test).

    SCENARIOS         the registry: a name → an async function of `BenchOptions` → `Report`
    BodyTemplate      a `requestBillingNew` body split around its order number
    WrkGenerator      load from `wrk` with a generated Lua script (preferred)
    AiohttpGenerator  a closed-loop asyncio generator, when wrk is not installed
    LoadResult        what one load run measured: statuses, socket errors, latency
    running_platform  the simulator and a gateway as child processes (from `gateway.tools.demo`)
    Report            rows, ratios and problems; `format_table` for people, `to_json` for machines

A new scenario is one function decorated with `@scenario("name", "what it measures")`; it gets
`--scenario name` for free and reuses the children, the generators and the report.

Each gateway run gets a fresh temporary directory (config, SQLite store, child logs) on a
local disk (not tmpfs, where fsync costs nothing), removed at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as platform_module
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import aiohttp
import yaml

from gateway.quantities import number, whole_number
from gateway.tools.demo import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Child,
    ChildStartError,
    Credentials,
    DemoError,
    Endpoints,
    SimulatorControl,
    gateway_child,
    simulator_child,
    stop_children,
    wait_ready,
    write_gateway_config,
)
from gateway.tools.loadgen import (
    OUTCOME_HEADER,
    SERVICES_PATH,
    SUBMIT_OPERATION,
    InvoiceFactory,
    outcome_of,
    percentile,
)

DEFAULT_DURATION_S: Final = 10.0
DEFAULT_CONNECTIONS: Final = 64
#: Distinct invoice bodies the generators cycle through (each with a fresh order number).
BODY_VARIANTS: Final = 32
#: Submits that must be queued in a row, without reaching the platform, to call the circuit open.
OPEN_CIRCUIT_PROOF: Final = 5
WARMUP_LIMIT: Final = 40
REQUEST_TIMEOUT_S: Final = 10.0
#: wrk's `done()` prints its figures on one line after this marker.
WRK_MARKER: Final = "BENCH-RESULT "
#: Filesystems where fsync returns without touching a disk.
MEMORY_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs"})
INSTALL_WRK: Final = "apt-get install wrk"


class BenchError(Exception):
    """The benchmark cannot run or its result cannot be trusted; the message says why."""


# -- options and the scenario registry ----------------------------------------------------------

GroupCommitChoice = Literal["on", "off", "both"]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    scenario: str
    duration_s: float = DEFAULT_DURATION_S
    connections: int = DEFAULT_CONNECTIONS
    group_commit: GroupCommitChoice = "both"
    #: Parent of the per-run temporary directories; None picks a local disk.
    store_parent: Path | None = None
    keep: bool = False
    #: Use the asyncio generator even when wrk is installed.
    builtin_generator: bool = False


#: A scenario: runs what it measures, returns the report.
ScenarioRun = Callable[[BenchOptions], Coroutine[Any, Any, "Report"]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    run: ScenarioRun


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, summary: str) -> Callable[[ScenarioRun], ScenarioRun]:
    """Register a scenario under `name` (the value of `--scenario`)."""

    def register(run: ScenarioRun) -> ScenarioRun:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, summary, run)
        return run

    return register


# -- where the store lives ----------------------------------------------------------------------


_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def filesystem_type(path: Path, mountinfo: str) -> str:
    """The type of the filesystem holding `path`, from `/proc/self/mountinfo` text."""
    target = str(path.resolve())
    best, best_type = "", "unknown"
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        # Mount points escape space, tab, newline and backslash as octal (`\040`).
        mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fstype
    return best_type


def _filesystem_of(path: Path) -> str:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    return filesystem_type(path, mountinfo)


def choose_store_parent(explicit: Path | None) -> tuple[Path, str]:
    """Where the runs' directories go, and that filesystem's type.

    The system temporary directory unless it is in memory (tmpfs), then `/var/tmp`.
    """
    if explicit is not None:
        return explicit, _filesystem_of(explicit)
    default = Path(tempfile.gettempdir())
    fstype = _filesystem_of(default)
    if fstype in MEMORY_FILESYSTEMS:
        fallback = Path("/var/tmp")  # noqa: S108 — a local disk for a real fsync, by design
        if fallback.is_dir() and _filesystem_of(fallback) not in MEMORY_FILESYSTEMS:
            return fallback, _filesystem_of(fallback)
    return default, fstype


def machine_description() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count() or 0),
        "cpu": cpu or platform_module.processor() or "unknown",
        "system": f"{platform_module.system()} {platform_module.release()}",
        "python": platform_module.python_version(),
    }


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process `pid` so far (Linux `/proc`), None when unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        # Fields after the command name (which may hold spaces) start at field 3 (state).
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# -- what the generators send -------------------------------------------------------------------

_PLACEHOLDER: Final = "\x00order-number\x00"


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """A JSON body split where its order number goes: `head + order_no + tail`."""

    head: str
    tail: str

    def render(self, order_no: str) -> bytes:
        return f"{self.head}{order_no}{self.tail}".encode()


def body_templates(seller_tax_num: str, count: int = BODY_VARIANTS) -> list[BodyTemplate]:
    """`count` realistic `requestBillingNew` bodies from `InvoiceFactory`, order number left out."""
    factory = InvoiceFactory(seller_tax_num, seed=20_240_404)
    templates = []
    for _ in range(count):
        _, body = factory.submission()
        body["order"]["orderNo"] = _PLACEHOLDER
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        head, tail = text.split(json.dumps(_PLACEHOLDER)[1:-1])
        templates.append(BodyTemplate(head, tail))
    return templates


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """Where and what to send: every request a different order number."""

    base_url: str
    headers: Mapping[str, str]
    templates: Sequence[BodyTemplate]
    #: Order numbers are `{prefix}{worker}n{counter}`: unique per request, per run.
    order_prefix: str
    path: str = SERVICES_PATH

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path


def submit_headers(tenant_key: str) -> dict[str, str]:
    return {"method": SUBMIT_OPERATION, "X-Api-Key": tenant_key, "Content-Type": "application/json"}


# -- what came back -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load run as the client saw it."""

    generator: str
    elapsed_s: float
    #: HTTP status → answers.
    statuses: Mapping[int, int]
    #: Requests without an HTTP answer, by kind (connect, read, write, timeout).
    socket_errors: Mapping[str, int]
    #: `X-Gateway-Outcome` → answers.
    outcomes: Mapping[str, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    @property
    def answers(self) -> int:
        return sum(self.statuses.values())

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def rate(self, status: int) -> float:
        return self.count(status) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def errors(self, good_status: int) -> dict[str, int]:
        """Everything but `good_status`: other statuses by number, then socket errors."""
        errors = {str(s): n for s, n in sorted(self.statuses.items()) if s != good_status and n}
        errors.update({f"socket {kind}": n for kind, n in self.socket_errors.items() if n})
        return errors


class LoadGenerator(Protocol):
    name: str

    async def run(
        self, target: LoadTarget, *, duration_s: float, connections: int, workdir: Path
    ) -> LoadResult:
        """Keep `connections` requests in flight for `duration_s`, then say what came back.

        Files it needs (a script, its output) go into `workdir`."""
        ...


# -- wrk ----------------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    """`text` as a Lua long-bracket literal, with a level its contents cannot close."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    # A newline right after the opening bracket would be dropped by Lua; these bodies have none.
    return f"[{eq}[{text}]{eq}]"


_LUA_TEMPLATE: Final = """\
-- Generated by gateway/bench.py for one run; read back by it from the line after done().
-- Every request is a requestBillingNew body with an order number of its own:
-- prefix .. thread id .. "n" .. per-thread counter.
local bodies = {
%(bodies)s
}
local path = %(path)s
local request_headers = {
%(headers)s
}
local order_prefix = %(prefix)s
local marker = %(marker)s
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  counter = 0
  statuses = {}
  outcomes = {}
end

function request()
  counter = counter + 1
  local body = bodies[(counter %% #bodies) + 1]
  local order_no = order_prefix .. thread_id .. "n" .. counter
  return wrk.format("POST", path, request_headers, body[1] .. order_no .. body[2])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local outcome = headers["%(outcome)s"] or headers[string.lower("%(outcome)s")] or ""
  outcomes[outcome] = (outcomes[outcome] or 0) + 1
end

local function json_counts(counts)
  local parts = {}
  for key, n in pairs(counts) do
    local name = string.gsub(tostring(key), "[^%%w_.-]", "?")
    table.insert(parts, string.format('"%%s": %%d', name, n))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all_statuses, all_outcomes = {}, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      all_statuses[status] = (all_statuses[status] or 0) + n
    end
    for outcome, n in pairs(thread:get("outcomes")) do
      all_outcomes[outcome] = (all_outcomes[outcome] or 0) + n
    end
  end
  local errors = summary.errors
  io.write(marker, string.format(
    '{"duration_us": %%.0f, "requests": %%d, "errors": {"connect": %%d, "read": %%d, '
    .. '"write": %%d, "timeout": %%d}, "latency_us": {"p50": %%.0f, "p99": %%.0f}, '
    .. '"statuses": %%s, "outcomes": %%s}\\n',
    summary.duration, summary.requests, errors.connect, errors.read, errors.write,
    errors.timeout, latency:percentile(50), latency:percentile(99),
    json_counts(all_statuses), json_counts(all_outcomes)))
end
"""


def wrk_script(target: LoadTarget) -> str:
    """The Lua script that makes wrk send `target`'s bodies, each with a unique order number."""
    bodies = ",\n".join(
        f"  {{{lua_string(t.head)}, {lua_string(t.tail)}}}" for t in target.templates
    )
    headers = ",\n".join(
        f"  [ {lua_string(name)} ] = {lua_string(value)}" for name, value in target.headers.items()
    )
    return _LUA_TEMPLATE % {
        "bodies": bodies,
        "path": lua_string(target.path),
        "headers": headers,
        "prefix": lua_string(target.order_prefix),
        "marker": lua_string(WRK_MARKER),
        "outcome": OUTCOME_HEADER,
    }


def parse_wrk_output(stdout: str, generator: str = "wrk") -> LoadResult:
    """The figures our script's `done()` printed among wrk's own report."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARKER):
            try:
                document = json.loads(line[len(WRK_MARKER) :])
                latency = document["latency_us"]
                return LoadResult(
                    generator=generator,
                    elapsed_s=float(document["duration_us"]) / 1e6,
                    statuses={int(k): int(v) for k, v in document["statuses"].items()},
                    socket_errors={k: int(v) for k, v in document["errors"].items()},
                    outcomes={k: int(v) for k, v in document["outcomes"].items() if k},
                    latency_p50_ms=float(latency["p50"]) / 1000 if document["requests"] else None,
                    latency_p99_ms=float(latency["p99"]) / 1000 if document["requests"] else None,
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BenchError(f"cannot read wrk's result line {line!r}: {exc}") from None
    tail = "\n".join(stdout.strip().splitlines()[-10:]) or "(no output)"
    raise BenchError(f"wrk printed no result line; its output ends with:\n{tail}")


def wrk_threads(connections: int) -> int:
    """Half the CPUs for wrk (at least one): the other half is the gateway's."""
    return max(1, min(connections, (os.cpu_count() or 2) // 2))


class WrkGenerator:
    def __init__(self, executable: str) -> None:
        self._executable = executable
        self.name = f"wrk {_wrk_version(executable)}"

    async def run(
        self, target: LoadTarget, *, duration_s: float, connections: int, workdir: Path
    ) -> LoadResult:
        script = workdir / "bench.lua"
        script.write_text(wrk_script(target), encoding="utf-8")
        threads = wrk_threads(connections)
        argv = [
            self._executable,
            f"--threads={threads}",
            f"--connections={connections}",
            # wrk takes whole seconds.
            f"--duration={max(1, round(duration_s))}s",
            f"--timeout={REQUEST_TIMEOUT_S:g}s",
            f"--script={script}",
            target.url,
        ]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(), duration_s + REQUEST_TIMEOUT_S + 10
            )
        except TimeoutError:
            raise BenchError("wrk did not finish in time") from None
        finally:
            # Timed out, or we were interrupted: wrk must not outlive the run.
            if process.returncode is None:
                process.kill()
                await process.wait()
        (workdir / "wrk.stdout.log").write_bytes(stdout)
        (workdir / "wrk.stderr.log").write_bytes(stderr)
        if process.returncode != 0:
            raise BenchError(
                f"wrk exited with code {process.returncode}: "
                f"{stderr.decode(errors='replace').strip() or stdout.decode(errors='replace')}"
            )
        return parse_wrk_output(
            stdout.decode(errors="replace"), f"{self.name}, {threads} thread(s)"
        )


def _wrk_version(executable: str) -> str:
    # `wrk --version` prints "wrk debian/4.1.0-3+b2 [epoll] Copyright ..." and exits 1.
    try:
        done = subprocess.run(  # noqa: S603 — the wrk found on PATH, fixed arguments
            [executable, "--version"], capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown version"
    words = done.stdout.decode(errors="replace").split()
    return words[1] if len(words) >= 2 else "unknown version"


# -- the built-in generator ---------------------------------------------------------------------


class AiohttpGenerator:
    """Closed loop: `connections` workers, each sending its next request when the last answers.

    It shares the machine's CPUs with the gateway and is slower than wrk, so its figures are a
    floor; the report says which generator ran.
    """

    name = "built-in asyncio/aiohttp"

    async def run(
        self, target: LoadTarget, *, duration_s: float, connections: int, workdir: Path
    ) -> LoadResult:
        statuses: Counter[int] = Counter()
        outcomes: Counter[str] = Counter()
        socket_errors: Counter[str] = Counter()
        latencies: list[float] = []
        url = target.url
        headers = dict(target.headers)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

        async def worker(session: aiohttp.ClientSession, worker_id: int, until: float) -> None:
            counter = 0
            while time.monotonic() < until:
                counter += 1
                template = target.templates[counter % len(target.templates)]
                body = template.render(f"{target.order_prefix}{worker_id}n{counter}")
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                except aiohttp.ClientConnectorError:
                    socket_errors["connect"] += 1
                except TimeoutError:
                    socket_errors["timeout"] += 1
                except aiohttp.ClientError:
                    socket_errors["read"] += 1
                else:
                    latencies.append(time.perf_counter() - started)
                    statuses[response.status] += 1
                    outcome = response.headers.get(OUTCOME_HEADER)
                    if outcome:
                        outcomes[outcome_of(response.headers)] += 1

        connector = aiohttp.TCPConnector(limit=connections, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.monotonic()
            until = started + duration_s
            await asyncio.gather(*(worker(session, i + 1, until) for i in range(connections)))
            elapsed = time.monotonic() - started
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        return LoadResult(
            generator=self.name,
            elapsed_s=elapsed,
            statuses=dict(statuses),
            socket_errors=dict(socket_errors),
            outcomes=dict(outcomes),
            latency_p50_ms=None if p50 is None else p50 * 1000,
            latency_p99_ms=None if p99 is None else p99 * 1000,
        )


def choose_generator(*, builtin: bool = False) -> LoadGenerator:
    """wrk when it is on PATH (and not `builtin`), else the asyncio generator."""
    executable = None if builtin else shutil.which("wrk")
    if executable is None:
        if not builtin:
            _say(
                "wrk is not installed, so the built-in asyncio generator drives the load "
                f"(slower; it shares the CPUs with the gateway). For wrk: {INSTALL_WRK}"
            )
        return AiohttpGenerator()
    return WrkGenerator(executable)


# -- the children -------------------------------------------------------------------------------


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`outbox.group_commit`) in `config`, creating parents as needed.

    None is written as YAML null, which switches off an optional section (`resilience.probe`).
    """
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


@dataclass(frozen=True, slots=True)
class Platform:
    """A running simulator and gateway, and where the gateway keeps its store."""

    credentials: Credentials
    endpoints: Endpoints
    config: Mapping[str, Any]
    store_path: Path
    simulator: Child
    gateway: Child


@contextlib.asynccontextmanager
async def running_platform(
    workdir: Path, session: aiohttp.ClientSession, overrides: Mapping[str, Any]
) -> AsyncIterator[Platform]:
    """The simulator and a gateway (default profile + `overrides`), stopped on exit."""
    credentials = Credentials.generate()
    endpoints = Endpoints.allocate()
    config_path = write_gateway_config(workdir, endpoints)
    config = apply_overrides(yaml.safe_load(config_path.read_text(encoding="utf-8")), overrides)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), "utf-8")
    env = credentials.child_env()
    simulator = simulator_child(endpoints, env, workdir)
    gateway = gateway_child(config_path, env, workdir)
    children = [simulator, gateway]
    try:
        for child in children:
            child.start()
        await asyncio.gather(
            wait_ready(simulator, session, f"{endpoints.control_url}/_sim/health"),
            wait_ready(gateway, session, f"{endpoints.gateway_url}/healthz"),
        )
        store_path = Path(str(config["store_url"]).removeprefix("sqlite:///"))
        yield Platform(credentials, endpoints, config, store_path, simulator, gateway)
    finally:
        await asyncio.to_thread(stop_children, children)


async def fault_hits(session: aiohttp.ClientSession, control_url: str, fault_id: str) -> int:
    """How many calls the simulator's fault rule `fault_id` has answered."""
    try:
        async with session.get(
            f"{control_url}/_sim/faults", timeout=aiohttp.ClientTimeout(total=3)
        ) as response:
            document = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BenchError(f"cannot read the simulator's fault rules: {exc!r}") from None
    for rule in document.get("faults", []):
        if rule.get("id") == fault_id:
            return int(rule.get("hits", 0))
    raise BenchError(f"the simulator's fault rule {fault_id} disappeared")


@dataclass(frozen=True, slots=True)
class CircuitCheck:
    """How the circuit was opened and shown to be open."""

    warmup_submits: int
    #: 202s the warm-up got: rows the store must hold besides the measured run's.
    warmup_accepted: int
    #: Consecutive submits queued at once without a call reaching the platform.
    queued_without_upstream: int
    latency_ms: float


async def open_circuit(
    session: aiohttp.ClientSession, platform: Platform, target: LoadTarget
) -> CircuitCheck:
    """Fail every operation with 503 at the simulator, then submit until the gateway queues
    submissions at once without calling the platform: the circuit is open."""
    operations = [str(op["name"]) for op in platform.config.get("operations", [])]
    control = SimulatorControl(session, platform.endpoints.control_url)
    fault_id = await control.add_fault(
        {"kind": "http_error", "status": 503, "operations": operations}
    )
    accepted = in_a_row = 0
    latencies: list[float] = []
    for attempt in range(1, WARMUP_LIMIT + 1):
        hits = await fault_hits(session, platform.endpoints.control_url, fault_id)
        body = target.templates[0].render(f"{target.order_prefix}w{attempt}")
        started = time.perf_counter()
        try:
            async with session.post(
                target.url,
                data=body,
                headers=dict(target.headers),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                await response.read()
                status, outcome = response.status, outcome_of(response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BenchError(f"the gateway did not answer a warm-up submit: {exc!r}") from None
        latency = time.perf_counter() - started
        accepted += status == 202
        upstream_calls = await fault_hits(session, platform.endpoints.control_url, fault_id) - hits
        if status == 202 and outcome == "queued" and upstream_calls == 0:
            in_a_row += 1
            latencies.append(latency)
            if in_a_row >= OPEN_CIRCUIT_PROOF:
                return CircuitCheck(
                    attempt, accepted, in_a_row, (percentile(latencies, 50) or 0.0) * 1000
                )
        else:
            in_a_row, latencies = 0, []
    raise BenchError(
        f"the circuit did not open: after {WARMUP_LIMIT} submits against a platform answering 503 "
        "the gateway still calls it (or does not answer 202 queued)"
    )


# -- durability ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DurabilityCheck:
    """Rows in the stopped gateway's store against the 202s the clients got."""

    rows: int
    acknowledged: int

    @property
    def ok(self) -> bool:
        return self.rows >= self.acknowledged

    def describe(self) -> str:
        verdict = "ok" if self.ok else f"MISSING {self.acknowledged - self.rows}"
        return f"{self.rows} rows for {self.acknowledged} acknowledged: {verdict}"


def count_submissions(store_path: Path) -> int:
    """Rows in the `submission` table of a SQLite store nobody else has open."""
    if not store_path.exists():
        raise BenchError(f"the gateway left no store at {store_path}")
    try:
        with contextlib.closing(sqlite3.connect(store_path)) as db:
            (rows,) = db.execute("SELECT count(*) FROM submission").fetchone()
    except sqlite3.Error as exc:
        raise BenchError(f"cannot count the submissions in {store_path}: {exc}") from None
    return int(rows)


# -- the report ---------------------------------------------------------------------------------


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


@dataclass
class Report:
    scenario: str
    #: What the figures are per second of (e.g. "accepted submissions").
    measure: str
    environment: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
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
    lines.append("")
    if report.problems:
        lines += [f"  PROBLEM: {problem}" for problem in report.problems]
    else:
        lines.append("  ok")
    return "\n".join(lines)


def _say(text: str) -> None:
    print(f"invoice-gateway bench: {text}", file=sys.stderr, flush=True)


def bench_environment(
    options: BenchOptions, generator: LoadGenerator
) -> tuple[Path, dict[str, str]]:
    """Where the runs' directories go, and what a reader needs to compare figures across runs."""
    parent, fstype = choose_store_parent(options.store_parent)
    store = f"{parent} ({fstype})"
    if fstype in MEMORY_FILESYSTEMS:
        store += " - fsync costs nothing here, so durable figures are overstated; see --store-dir"
    _say(f"store under {store}; load from {generator.name}")
    load_1, load_5, load_15 = os.getloadavg()
    return parent, {
        "generator": generator.name,
        "connections": str(options.connections),
        "duration": f"{options.duration_s:g} s per run",
        "store": store,
        **machine_description(),
        "load average": f"{load_1:.2f} {load_5:.2f} {load_15:.2f} before the runs",
    }


# -- scenario: durable acceptance with the circuit open -----------------------------------------


def durable_accept_overrides(*, group_commit: bool) -> dict[str, Any]:
    """The default profile as measured: quiet logs, fsync on every commit, an open circuit that
    stays open (no half-open trial mid-run), and no background probe calling the platform."""
    return {
        "log.level": "warning",
        "outbox.synchronous": "FULL",
        "outbox.group_commit": group_commit,
        "resilience.breaker.reset_timeout": "1h",
        "resilience.probe": None,
    }


@dataclass
class _Workdirs:
    parent: Path
    keep: bool
    made: list[Path] = field(default_factory=list)

    def new(self, label: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"invoice-gateway-bench-{label}-", dir=self.parent))
        self.made.append(path)
        return path

    def finish(self) -> None:
        for path in self.made:
            if self.keep:
                _say(f"kept {path}")
            else:
                shutil.rmtree(path, ignore_errors=True)


async def _durable_accept_run(
    options: BenchOptions, workdir: Path, generator: LoadGenerator, *, group_commit: bool
) -> tuple[Row, list[str]]:
    label = f"group commit {'on' if group_commit else 'off'}"
    overrides = durable_accept_overrides(group_commit=group_commit)
    problems: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        running_platform(workdir, session, overrides) as platform,
    ):
        target = LoadTarget(
            base_url=platform.endpoints.gateway_url,
            headers=submit_headers(platform.credentials.tenant_key),
            templates=body_templates(platform.credentials.user_tax),
            order_prefix=f"B{secrets.token_hex(3)}",
        )
        circuit = await open_circuit(session, platform, target)
        _say(
            f"{label}: circuit open ({circuit.queued_without_upstream} submits queued at once "
            f"without calling the platform, {circuit.latency_ms:.1f} ms); "
            f"{options.connections} connections for {options.duration_s:g} s"
        )
        cpu_before = process_cpu_seconds(platform.gateway.pid)
        load = await generator.run(
            target,
            duration_s=options.duration_s,
            connections=options.connections,
            workdir=workdir,
        )
        cpu_after = process_cpu_seconds(platform.gateway.pid)
        if platform.gateway.exit_code() is not None:
            problems.append(
                f"{label}: the gateway exited during the run; its log ends with:\n"
                f"{platform.gateway.stderr_tail()}"
            )
    durability = DurabilityCheck(
        count_submissions(platform.store_path), load.count(202) + circuit.warmup_accepted
    )
    if not durability.ok:
        problems.append(f"{label}: durability check failed: {durability.describe()}")
    if load.count(202) == 0:
        problems.append(f"{label}: no submission was accepted (202)")
    notes = {
        "circuit": f"open; {circuit.queued_without_upstream} submits in a row queued without "
        f"calling the platform (after {circuit.warmup_submits} warm-up submits)",
        "durability": durability.describe(),
    }
    if cpu_before is not None and cpu_after is not None and load.elapsed_s > 0:
        # Near 100 % means the gateway's one event loop, not the disk, sets the pace.
        busy = (cpu_after - cpu_before) / load.elapsed_s
        notes["gateway CPU"] = f"{busy:.0%} of one core during the run"
    row = Row(
        label=label,
        settings={"group_commit": "on" if group_commit else "off", "synchronous": "FULL"},
        load=load,
        good_status=202,
        durability=durability,
        notes=notes,
    )
    _say(f"{label}: {row.good_per_s:.1f} accepted/s; {durability.describe()}")
    return row, problems


@scenario(
    "durable-accept",
    "outage-mode acceptance: the circuit open, every 202 fsynced (synchronous=FULL), "
    "with and without group commit",
)
async def durable_accept(options: BenchOptions) -> Report:
    generator = choose_generator(builtin=options.builtin_generator)
    parent, environment = bench_environment(options, generator)
    report = Report("durable-accept", "accepted", environment)
    choices = {"on": (True,), "off": (False,), "both": (True, False)}[options.group_commit]
    workdirs = _Workdirs(parent, options.keep)
    try:
        for group_commit in choices:
            workdir = workdirs.new("on" if group_commit else "off")
            row, problems = await _durable_accept_run(
                options, workdir, generator, group_commit=group_commit
            )
            report.rows.append(row)
            report.problems += problems
    finally:
        workdirs.finish()
    by_setting = {row.settings["group_commit"]: row for row in report.rows}
    if {"on", "off"} <= by_setting.keys() and by_setting["off"].good_per_s > 0:
        report.ratios["group commit on / off"] = (
            by_setting["on"].good_per_s / by_setting["off"].good_per_s
        )
    return report


# -- the command line ---------------------------------------------------------------------------


_positive_float = number(0, above=True)


_positive_int = whole_number(1)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its subcommand parser."""
    listing = "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values())
    parser.add_argument(
        "--scenario",
        required=True,
        choices=sorted(SCENARIOS),
        help=f"what to measure ({listing})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=DEFAULT_DURATION_S,
        metavar="SECONDS",
        help=f"length of each measured run (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--connections",
        type=_positive_int,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help=f"concurrent client connections (default {DEFAULT_CONNECTIONS})",
    )
    parser.add_argument(
        "--group-commit",
        choices=("on", "off", "both"),
        default="both",
        help="durable-accept: measure with group commit, without, or both and their ratio "
        "(default both)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--store-dir",
        type=Path,
        metavar="DIR",
        help="where the runs' stores go (default: the temporary directory, or /var/tmp when "
        "that is tmpfs)",
    )
    parser.add_argument(
        "--builtin-generator",
        action="store_true",
        help=f"use the built-in asyncio generator even when wrk is installed ({INSTALL_WRK})",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's directory (config, store, logs)"
    )


def run_bench(args: argparse.Namespace) -> int:
    """Run one scenario; 0 when it finished and every check held, 1 otherwise."""
    options = BenchOptions(
        scenario=args.scenario,
        duration_s=float(args.duration),
        connections=int(args.connections),
        group_commit=args.group_commit,
        store_parent=args.store_dir,
        keep=bool(args.keep),
        builtin_generator=bool(args.builtin_generator),
    )
    chosen = SCENARIOS.get(options.scenario)
    if chosen is None:
        _say(f"no scenario {options.scenario!r}; there are: {', '.join(sorted(SCENARIOS))}")
        return EXIT_USAGE
    if options.store_parent is not None and not options.store_parent.is_dir():
        _say(f"--store-dir {options.store_parent} is not a directory")
        return EXIT_USAGE
    try:
        report = asyncio.run(chosen.run(options))
    except ChildStartError as exc:
        _say(f"{exc}.\n--- last lines of its stderr ---\n{exc.stderr_tail or '(empty)'}\n---")
        return EXIT_FAILURE
    except (BenchError, DemoError) as exc:
        _say(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _say("interrupted; no figures")
        return EXIT_FAILURE
    print(json.dumps(report.to_json(), indent=2) if args.json else format_table(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.tools.bench`, the same as `invoice-gateway bench`."""
    parser = argparse.ArgumentParser(
        prog="invoice-gateway bench", description="Measure the gateway against SPEC §9."
    )
    configure_parser(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
