"""Callback events: telling a tenant's own system that a submission it was answered `202` for
became final — delivered, issued (with its invoice number), failed with the platform's verdict,
dead, discarded, issued by hand, or failed to issue after acceptance (docs/callbacks.md).

The events are written by the store in the same transaction as the change they report (a
trigger on the submission table), so none is lost between a commit and a crash. This module
sends them: at least once, each signed with HMAC-SHA256 over `timestamp.body`, retried with
back-off from their own queue until the receiver answers 2xx or the event is `max_age` old
(then `dead`, which on-call can replay). Tenants without a callback URL have theirs marked
`skipped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

import aiohttp
import structlog

from gateway.clock import Clock, iso_utc, sleep_or_wake
from gateway.config import CallbacksConfig, TenantConfig
from gateway.errors import StoreError
from gateway.resilience.retry import Backoff

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CallbackEvent",
    "CallbackQueue",
    "CallbackSender",
    "CallbackState",
    "CallbackTarget",
    "event_document",
    "sign",
]

log = structlog.get_logger("gateway.callbacks")

TIMESTAMP_HEADER: Final = "X-Gateway-Timestamp"
SIGNATURE_HEADER: Final = "X-Gateway-Signature"
EVENT_HEADER: Final = "X-Gateway-Event"
DELIVERY_HEADER: Final = "X-Gateway-Delivery"
#: The signature's version prefix: a receiver can tell a future scheme from this one.
SIGNATURE_SCHEME: Final = "v1"
#: What a receiver's answer may say of itself in the queue's error column.
ERROR_EXCERPT: Final = 200


class CallbackState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"
    #: The tenant has no callback URL (or the submission was purged before it could be sent).
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One event in the queue."""

    seq: int
    submission_id: str
    tenant: str
    #: `submission.delivered`, `submission.issued`, `submission.failed`, … (docs/callbacks.md).
    type: str
    state: CallbackState
    attempts: int
    created_at: float
    next_attempt_at: float
    #: Incremented on every claim; a stale sender's write (wrong fence) is refused.
    fence: int
    last_error: str | None = None
    delivered_at: float | None = None

    @property
    def delivery_id(self) -> str:
        """Stable across retries: a receiver drops an event it has seen by this id."""
        return f"evt_{self.seq}"

    def view(self) -> dict[str, Any]:
        """As on-call sees it."""
        return {
            "id": self.delivery_id,
            "seq": self.seq,
            "submission_id": self.submission_id,
            "tenant": self.tenant,
            "type": self.type,
            "state": self.state.value,
            "attempts": self.attempts,
            "created_at": iso_utc(self.created_at),
            "next_attempt_at": iso_utc(self.next_attempt_at),
            "last_error": self.last_error,
            "delivered_at": iso_utc(self.delivered_at) if self.delivered_at else None,
        }


class CallbackQueue(Protocol):
    """The store's queue of callback events (both stores; tests/contract)."""

    async def claim_callbacks(
        self, *, now: float, limit: int, owner: str, lease_seconds: float, tenants: Sequence[str]
    ) -> Sequence[CallbackEvent]:
        """Lease up to `limit` events of `tenants` that are due (`pending` with
        `next_attempt_at <= now`, or `sending` with an expired lease), oldest first, each with
        a new fence. In the same transaction, `pending` events of other tenants become
        `skipped`. Claims from several processes lease disjoint events."""
        ...

    async def settle_callback(
        self,
        seq: int,
        fence: int,
        *,
        state: CallbackState,
        now: float,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> bool:
        """Record a sending's result while the fence still matches: `delivered`, `dead`,
        `skipped`, or `pending` again at `next_attempt_at`; each counts one attempt. False
        when someone else holds the event now."""
        ...

    async def callback_events(
        self,
        *,
        states: Sequence[CallbackState] = (),
        tenant: str | None = None,
        submission_id: str | None = None,
        seq: int | None = None,
        limit: int = 100,
    ) -> Sequence[CallbackEvent]:
        """Events, newest first, filtered (`seq`: that one event)."""
        ...

    async def replay_callback(self, seq: int, *, now: float) -> CallbackEvent | None:
        """Send the event again (whatever its state but `sending`): `pending`, due now, its
        attempts kept. None when there is no such event or it is being sent."""
        ...

    async def purge_callbacks(self, *, settled_before: float) -> int:
        """Delete `delivered`, `skipped` and `dead` events created before `settled_before`
        (retention); how many."""
        ...


class SubmissionViews(Protocol):
    """Where the sender reads the submission an event is about."""

    async def get(self, submission_id: str) -> Any: ...


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Gateway-Signature`: `v1=` and the hex HMAC-SHA256 of `timestamp.body` under the
    tenant's callback secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def event_document(event: CallbackEvent, submission_view: Mapping[str, Any]) -> bytes:
    """The POSTed body: the event and the submission as its status API shows it now."""
    return json.dumps(
        {
            "id": event.delivery_id,
            "type": event.type,
            "occurred_at": iso_utc(event.created_at),
            "tenant": event.tenant,
            "submission": dict(submission_view),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    url: str
    secret: str
    timeout: float

    @classmethod
    def of_tenants(cls, tenants: Sequence[TenantConfig]) -> dict[str, CallbackTarget]:
        return {
            tenant.id: cls(
                tenant.callback.url, tenant.callback.secret.value(), tenant.callback.timeout
            )
            for tenant in tenants
            if tenant.callback is not None
        }


class CallbackSender:
    """Claims due events and POSTs them, `concurrency` at a time, until stopped."""

    def __init__(
        self,
        *,
        queue: CallbackQueue,
        submissions: SubmissionViews,
        session: aiohttp.ClientSession,
        targets: Mapping[str, CallbackTarget],
        config: CallbacksConfig,
        clock: Clock,
        owner: str,
        retention: float,
        sweep_interval: float,
        rng: random.Random | None = None,
    ) -> None:
        """Settled events are purged `retention` after they were written, looked for every
        `sweep_interval` (the outbox's own); with no tenant to send to, the queue is only
        looked at that often too (to mark what arrives `skipped`)."""
        self._queue = queue
        self._submissions = submissions
        self._session = session
        self._targets = dict(targets)
        self._config = config
        self._clock = clock
        self._owner = owner
        self._backoff = Backoff.from_config(config.backoff)
        self._rng = rng or random.Random()
        self._retention = retention
        self._sweep_interval = sweep_interval
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Events taken, attempts not taken, events given up (this process, since start).
        self.sent = 0
        self.failed = 0
        self.dead = 0

    def retarget(self, targets: Mapping[str, CallbackTarget]) -> None:
        """New receivers (a reload); the next claim uses them."""
        self._targets = dict(targets)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callbacks")

    def wake(self) -> None:
        self._wakeup.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        next_purge = self._clock.monotonic()
        while not self._stopping:
            sent = 0
            try:
                if self._clock.monotonic() >= next_purge:
                    next_purge = self._clock.monotonic() + self._sweep_interval
                    await self._queue.purge_callbacks(
                        settled_before=self._clock.wall() - self._retention
                    )
                sent = await self.send_due()
            except StoreError as exc:
                log.warning("callback events could not be read; trying again", error=str(exc))
            except Exception:
                log.exception("callback round failed; trying again shortly")
            if sent == 0 and not self._stopping:
                idle = self._config.poll_interval if self._targets else self._sweep_interval
                await sleep_or_wake(self._clock, idle, self._wakeup)

    async def send_due(self) -> int:
        """One round: claim what is due and send it; how many were claimed."""
        events = await self._queue.claim_callbacks(
            now=self._clock.wall(),
            limit=self._config.concurrency,
            owner=self._owner,
            lease_seconds=self._config.lease,
            tenants=sorted(self._targets),
        )
        await asyncio.gather(*(self._send(event) for event in events))
        return len(events)

    async def _send(self, event: CallbackEvent) -> None:
        target = self._targets.get(event.tenant)
        submission = await self._submissions.get(event.submission_id)
        if target is None or submission is None:
            why = "no callback URL" if target is None else "the submission was purged"
            await self._settle(event, CallbackState.SKIPPED, error=why)
            return
        body = event_document(event, submission.public_view())
        timestamp = str(int(self._clock.wall()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            EVENT_HEADER: event.type,
            DELIVERY_HEADER: event.delivery_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(target.secret, timestamp, body),
        }
        try:
            async with self._session.post(
                target.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=target.timeout),
                allow_redirects=False,
            ) as response:
                answer = (await response.content.read(ERROR_EXCERPT)).decode("utf-8", "replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._retry(event, f"{type(exc).__name__}: {exc}"[:ERROR_EXCERPT])
            return
        if 200 <= status < 300:
            self.sent += 1
            await self._settle(event, CallbackState.DELIVERED)
            log.info(
                "callback delivered",
                event=event.type,
                delivery=event.delivery_id,
                submission_id=event.submission_id,
                tenant=event.tenant,
            )
            return
        await self._retry(event, f"HTTP {status}: {answer}")

    async def _retry(self, event: CallbackEvent, error: str) -> None:
        self.failed += 1
        now = self._clock.wall()
        if now - event.created_at >= self._config.max_age:
            self.dead += 1
            await self._settle(event, CallbackState.DEAD, error=error)
            log.error(
                "callback given up: its receiver did not take it within max_age; on-call can "
                "replay it (invoice-gateway callbacks replay)",
                delivery=event.delivery_id,
                tenant=event.tenant,
                error=error,
            )
            return
        wait = self._backoff.delay(event.attempts + 1, self._rng)
        await self._settle(event, CallbackState.PENDING, next_attempt_at=now + wait, error=error)
        log.warning(
            "callback not taken; sent again later",
            delivery=event.delivery_id,
            tenant=event.tenant,
            next_attempt_in_s=round(wait, 3),
            error=error,
        )

    async def _settle(
        self,
        event: CallbackEvent,
        state: CallbackState,
        *,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> None:
        recorded = await self._queue.settle_callback(
            event.seq,
            event.fence,
            state=state,
            now=self._clock.wall(),
            next_attempt_at=next_attempt_at,
            error=error,
        )
        if not recorded:
            log.warning(
                "callback's lease was lost meanwhile; its result is not recorded",
                delivery=event.delivery_id,
            )
