"""What must hold for the figures to count: the circuit shown to be open before the measured run
(`open_circuit`), and every acknowledged submission in the stopped gateway's store
(`DurabilityCheck`, `count_submissions`)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from gateway.tools.bench.generators import LoadTarget
from gateway.tools.bench.options import BenchError
from gateway.tools.bench.platform import Platform
from gateway.tools.children import SimulatorControl
from gateway.tools.loadgen import outcome_of, percentile

#: Submits that must be queued in a row, without reaching the platform, to call the circuit open.
OPEN_CIRCUIT_PROOF: Final = 5
WARMUP_LIMIT: Final = 40


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


def count_submissions(store_path: Path | None) -> int:
    """Rows in the `submission` table of a SQLite store nobody else has open."""
    if store_path is None:
        raise BenchError("the gateway's store is not a SQLite file")
    if not store_path.exists():
        raise BenchError(f"the gateway left no store at {store_path}")
    try:
        with contextlib.closing(sqlite3.connect(store_path)) as db:
            (rows,) = db.execute("SELECT count(*) FROM submission").fetchone()
    except sqlite3.Error as exc:
        raise BenchError(f"cannot count the submissions in {store_path}: {exc}") from None
    return int(rows)
