"""The outbox as the demo's client sees it: what was accepted, and what became of it.

    OutboxTracker  every submission the gateway accepted (200 with the platform's success code,
                   or 202 with a submission id), keyed by order number, with its last known
                   status; the drain rate from the delivery times the gateway reports
    StatusPoller   asks `GET /gateway/v1/submissions/{id}` about the ones not yet settled,
                   oldest first, a batch at a time, with limited concurrency

Everything here is derived from what the client sees. A real source of circuit state and outbox
depth comes later with the admin API and `/status`; the demo should read those then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import aiohttp

from gateway.tools.loadgen import CIRCUIT_OPEN_PROBLEM, Result

#: `gateway.edge.intake.STATUS_PATH`, repeated so the client side does not import the server side.
STATUS_PATH: Final = "/gateway/v1/submissions/{id}"

DELIVERED: Final = "delivered"
FAILED: Final = "failed"
#: Statuses the client can count on: delivered, or refused by the platform for good.
FINAL: Final = frozenset({DELIVERED, FAILED})
#: Statuses that change no more without on-call (attempts or age exhausted; discarded).
STUCK: Final = frozenset({"dead", "discarded", "issue_failed"})
#: Nothing more will happen on its own: waiting longer changes nothing.
SETTLED: Final = FINAL | STUCK

#: The order in which pending statuses are listed.
STATUS_ORDER: Final = (
    "queued",
    "delivering",
    "unknown",
    "dead",
    "discarded",
    "failed",
    "issue_failed",
)


@dataclass(slots=True)
class Tracked:
    """One accepted submission."""

    #: The order number (or, without one, the submission id).
    key: str
    #: The outbox's id, from the 202; None for a submission forwarded at once.
    submission_id: str | None
    status: str
    #: It went through the outbox (the client got a 202).
    queued: bool
    #: When the gateway recorded its delivery (Unix seconds), if it was queued and delivered.
    delivered_at: float | None = None


def parse_time(text: object) -> float | None:
    """Unix seconds from the status endpoint's `2024-05-01T08:00:00.123Z`; None if absent."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC).timestamp()


def describe_counts(counts: Counter[str]) -> str:
    """`12 queued, 1 unknown` in a stable order."""
    order = [*STATUS_ORDER, *sorted(set(counts) - set(STATUS_ORDER))]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


class OutboxTracker:
    """What the client knows of the submissions the gateway accepted; fed by `observe`."""

    def __init__(self, *, window_s: float = 3.0, wall: Callable[[], float] = time.time) -> None:
        self._window_s = window_s
        self._wall = wall
        #: By order number, in acceptance order.
        self._entries: dict[str, Tracked] = {}
        self._by_id: dict[str, Tracked] = {}
        #: Delivery times (Unix seconds) of queued submissions, as the gateway recorded them.
        self._deliveries: list[float] = []
        #: Answers to an already-known submission (`Idempotent-Replayed`, or the same order
        #: number answered twice).
        self.replays = 0
        #: Requests refused at once because the circuit was open (503 `circuit-open`).
        self.circuit_open_answers = 0

    # -- what came back ------------------------------------------------------------------------

    def observe(self, result: Result) -> None:
        """Take note of one answer (the traffic generator's `on_result`)."""
        if result.problem == CIRCUIT_OPEN_PROBLEM:
            self.circuit_open_answers += 1
        if result.kind != "submit" or not result.accepted:
            return
        key = result.order_no or result.submission_id
        if key is None:
            return
        entry = self._entries.get(key)
        if entry is not None or result.replayed:
            self.replays += 1
        if result.submission_id is not None:  # a 202: in the outbox
            if entry is None:
                entry = Tracked(key, result.submission_id, "queued", queued=True)
                self._entries[key] = entry
            if entry.submission_id is None:
                entry.submission_id = result.submission_id
            self._by_id[result.submission_id] = entry
        elif entry is None:  # the platform's success code, forwarded at once
            self._entries[key] = Tracked(key, None, DELIVERED, queued=False)
        elif entry.status != DELIVERED:  # a replay of the final answer of a queued one
            entry.status = DELIVERED

    def update(self, submission_id: str, status: str, delivered_at: float | None = None) -> bool:
        """Record what the status endpoint said; True when the status changed."""
        entry = self._by_id.get(submission_id)
        if entry is None or entry.status == status:
            return False
        entry.status = status
        if status == DELIVERED and delivered_at is not None and entry.delivered_at is None:
            entry.delivered_at = delivered_at
            self._deliveries.append(delivered_at)
            self._deliveries.sort()
        return True

    # -- counts --------------------------------------------------------------------------------

    @property
    def accepted(self) -> int:
        """Distinct submissions (order numbers) the gateway accepted."""
        return len(self._entries)

    @property
    def queued_total(self) -> int:
        """Of those, the ones that went through the outbox (202)."""
        return sum(entry.queued for entry in self._entries.values())

    @property
    def forwarded(self) -> int:
        return self.accepted - self.queued_total

    def statuses(self) -> Counter[str]:
        """Accepted submissions by their last known status."""
        return Counter(entry.status for entry in self._entries.values())

    @property
    def delivered(self) -> int:
        return sum(entry.status == DELIVERED for entry in self._entries.values())

    @property
    def drained(self) -> int:
        """Queued submissions since delivered: the outbox's work."""
        return sum(e.queued and e.status == DELIVERED for e in self._entries.values())

    @property
    def final(self) -> int:
        return sum(entry.status in FINAL for entry in self._entries.values())

    @property
    def queued_now(self) -> int:
        """Accepted but not (yet) delivered or failed: the outbox depth as the client sees it."""
        return self.accepted - self.final

    @property
    def settled(self) -> bool:
        """Nothing more will happen on its own."""
        return all(entry.status in SETTLED for entry in self._entries.values())

    def unfinished(self) -> Counter[str]:
        """Accepted submissions neither delivered nor failed, by status."""
        return Counter(e.status for e in self._entries.values() if e.status not in FINAL)

    def pending(self, limit: int | None = None) -> list[str]:
        """Ids of queued submissions that are not settled, oldest first."""
        ids: list[str] = []
        for entry in self._entries.values():
            if entry.submission_id is not None and entry.status not in SETTLED:
                ids.append(entry.submission_id)
                if limit is not None and len(ids) >= limit:
                    break
        return ids

    # -- the drain -----------------------------------------------------------------------------

    def drain_rate(self, now: float | None = None) -> float:
        """Outbox deliveries per second over the last `window_s` (by the gateway's clock)."""
        now = self._wall() if now is None else now
        recent = [at for at in self._deliveries if now - self._window_s < at <= now]
        if not recent:
            return 0.0
        span = min(self._window_s, max(1.0, now - recent[0]))
        return len(recent) / span

    def overall_drain_rate(self) -> float | None:
        """Outbox deliveries per second from the first seen to the last; None with too few."""
        times = self._deliveries
        if len(times) < 2 or times[-1] - times[0] < 0.2:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


class StatusPoller:
    """Keeps `tracker` up to date from the gateway's status endpoint, cheaply.

    Each round asks about the `batch` oldest unsettled submissions, `concurrency` at a time. The
    outbox drains roughly oldest first, so while the oldest are still queued there is no point
    asking about newer ones; when a whole batch turned out settled, the next batch is asked
    at once rather than after `interval_s`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        api_key: str,
        tracker: OutboxTracker,
        *,
        concurrency: int = 8,
        batch: int = 40,
        interval_s: float = 0.5,
        timeout_s: float = 3.0,
    ) -> None:
        self._session = session
        self._base = gateway_url.rstrip("/")
        self._headers = {"X-Api-Key": api_key}
        self._tracker = tracker
        self._slots = asyncio.Semaphore(concurrency)
        self._batch = batch
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        #: Status requests sent, for the curious.
        self.requests = 0

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            asked, settled = await self.poll_once()
            if not (asked and settled == asked and self._tracker.pending(1)):
                await asyncio.sleep(self._interval_s)

    async def poll_once(self) -> tuple[int, int]:
        """Ask about one batch; (how many were asked, how many of them are now settled)."""
        ids = self._tracker.pending(self._batch)
        if not ids:
            return 0, 0
        answers = await asyncio.gather(*(self._ask(sid) for sid in ids))
        settled = 0
        for submission_id, answer in zip(ids, answers, strict=True):
            if answer is None:
                continue
            status, delivered_at = answer
            self._tracker.update(submission_id, status, delivered_at)
            settled += status in SETTLED
        return len(ids), settled

    async def _ask(self, submission_id: str) -> tuple[str, float | None] | None:
        """The submission's status and delivery time; None when the gateway did not say."""
        url = self._base + STATUS_PATH.format(id=submission_id)
        async with self._slots:
            self.requests += 1
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with self._session.get(
                    url, headers=self._headers, timeout=self._timeout
                ) as response:
                    if response.status != 200:
                        return None
                    document = await response.json()
                    status = document.get("status") if isinstance(document, dict) else None
                    if isinstance(status, str):
                        return status, parse_time(document.get("delivered_at"))
        return None
