"""The load: what is sent (`BodyTemplate`, `LoadTarget`), what came back (`LoadResult`), and the
two generators behind the `LoadGenerator` protocol.

    WrkGenerator      `wrk` with a generated Lua script (preferred)
    AiohttpGenerator  a closed-loop asyncio generator, when wrk is not installed

Every request carries an order number of its own (`{prefix}{worker}n{counter}`), so the gateway
never answers from its idempotency cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import aiohttp

from gateway.tools.bench.options import BenchError, say
from gateway.tools.loadgen import (
    OUTCOME_HEADER,
    SERVICES_PATH,
    SUBMIT_OPERATION,
    InvoiceFactory,
    outcome_of,
    percentile,
)

#: Distinct invoice bodies the generators cycle through (each with a fresh order number).
BODY_VARIANTS: Final = 32
REQUEST_TIMEOUT_S: Final = 10.0
#: wrk's `done()` prints its figures on one line after this marker.
WRK_MARKER: Final = "BENCH-RESULT "
INSTALL_WRK: Final = "apt-get install wrk"


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
    #: Each connection waits this long on average (uniformly 0 to twice as long) between an
    #: answer and its next request (0: none), so `connections` connections offer about
    #: `connections / (pace + latency)` requests a second.
    pace_ms: int = 0

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
-- Generated by gateway/tools/bench/generators.py for one run; read back by it from the line
-- after done().
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

%(pace)s
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
        # Uniform in [0, 2 × pace]: the mean pace, with connections out of step (all waiting
        # the same would send them in bursts, and measure the bursts' queueing).
        "pace": f"function delay()\n  return math.random(0, {2 * target.pace_ms})\nend\n"
        if target.pace_ms
        else "",
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
                if target.pace_ms:
                    await asyncio.sleep(random.uniform(0, 2 * target.pace_ms) / 1000)

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
            say(
                "wrk is not installed, so the built-in asyncio generator drives the load "
                f"(slower; it shares the CPUs with the gateway). For wrk: {INSTALL_WRK}"
            )
        return AiohttpGenerator()
    return WrkGenerator(executable)
