"""Submission intake: the `submit` path, where no invoice may be lost or issued twice.

    idempotency key (Idempotency-Key header, else the business key) + body fingerprint
    → admit durably (one group-committed write; an existing key answers instead)
        existing: different body → 422 · final → replay its answer · acknowledged → same 202
                  · still being forwarded → 409
        queued (circuit open, or an earlier submission with the same ordering key is
                unresolved) → 202
        delivering → forward through the resilience pipeline now, then record what happened:
            answer → delivered / failed, relayed as-is
            answer lost → unknown (reconciled before any resend) → 202
            not delivered → queued with back-off → 202

A 202 is sent only for a row that is on disk; when the store cannot write, the client gets
503 and nothing is acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from collections.abc import Callable, Mapping

import structlog
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.clock import Clock
from gateway.edge.outcomes import Exchange, problem_for, relays
from gateway.errors import (
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    RequestInFlight,
    StoreError,
)
from gateway.headers import end_to_end
from gateway.operations import Operation, RequestBody
from gateway.outbox.settlement import (
    Settlement,
    may_have_acted,
    own_duplicate,
    settle,
    waiting_state,
)
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import (
    NewSubmission,
    Submission,
    SubmissionState,
    Transition,
    fingerprint,
    stored_response,
)
from gateway.resilience.breaker import BreakerRegistry, CircuitState
from gateway.resilience.pipeline import Outcome, ResiliencePipeline
from gateway.resilience.retry import Backoff
from gateway.upstream.models import UpstreamRequest

log = structlog.get_logger("gateway.edge.intake")

IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
STATUS_PATH = "/gateway/v1/submissions/{id}"
#: The longest `Idempotency-Key` accepted.
MAX_KEY_LENGTH = 128
_KEY_OK = re.compile(r"[\x21-\x7e]+")
_OPEN = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN})


class Intake:
    def __init__(
        self,
        *,
        store: OutboxStore,
        pipeline: ResiliencePipeline,
        breakers: BreakerRegistry,
        clock: Clock,
        owner: str,
        lease_seconds: float,
        backoff: Backoff,
        wake_dispatcher: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._breakers = breakers
        self._clock = clock
        self._owner = owner
        self._lease = lease_seconds
        self._backoff = backoff
        self.wake_dispatcher = wake_dispatcher
        self._rng = rng or random.Random()
        #: Results of live forwards not recorded: the lease ran out while sending and a sweep
        #: took the submission over (it is reconciled instead).
        self.fence_lost = 0

    async def submit(
        self,
        request: web.Request,
        outgoing: UpstreamRequest,
        operation: Operation,
        body: RequestBody,
        exchange: Exchange,
    ) -> web.Response:
        assert exchange.tenant is not None
        new = self._new_submission(request, outgoing, operation, body, exchange)
        breaker = self._breakers.for_operation(operation.name)
        admission = await self._store.admit(
            new,
            queue=breaker.state in _OPEN,
            owner=self._owner,
            lease_seconds=self._lease,
            now=self._clock.wall(),
        )
        submission = admission.submission
        if not admission.created:
            return self._answer_existing(submission, new, exchange)
        if submission.state is SubmissionState.QUEUED:
            self.wake_dispatcher()
            return accepted(submission, exchange)
        # Forward now. Shielded: the call and the recording of its result finish even if the
        # client disconnects (docs/design.md#edge-cases); the client's retry finds the result.
        return await asyncio.shield(self._forward(submission, outgoing, operation, exchange))

    async def _forward(
        self,
        submission: Submission,
        outgoing: UpstreamRequest,
        operation: Operation,
        exchange: Exchange,
    ) -> web.Response:
        outcome = await self._pipeline.execute(outgoing, operation)
        verdict = outcome.verdict
        exchange.attempts = outcome.attempts
        exchange.error_class = verdict.failure.value if verdict.failure else None
        if verdict.response is not None:
            exchange.upstream_status = verdict.response.status
        change = self._record_for(outcome)
        try:
            stored = await self._store.transition(
                submission.id, submission.fence, change, now=self._clock.wall()
            )
            if stored is None:
                self.fence_lost += 1
                # Its lease ran out mid-send and a sweep (this replica's or another's) took it
                # over: it is `unknown` now and will be reconciled, whatever we answer here.
                log.warning(
                    "lost the lease while forwarding; the result is not recorded and the "
                    "submission will be reconciled",
                    submission=submission.id,
                )
        except StoreError as exc:
            # The row is on disk as `delivering`; when its lease runs out it becomes `unknown`
            # and is reconciled, so the answer below stays true (and is never a false 503).
            log.error(
                "cannot record a forwarded submission", submission=submission.id, error=str(exc)
            )
        if change.state in (SubmissionState.QUEUED, SubmissionState.UNKNOWN):
            self.wake_dispatcher()
            return accepted(submission, exchange)
        if relays(outcome, operation):
            assert verdict.response is not None
            exchange.outcome = "forwarded"
            return web.Response(
                status=verdict.response.status,
                body=verdict.response.body,
                headers=end_to_end(verdict.response.headers),
            )
        return problem_for(outcome, operation, exchange)

    def _record_for(self, outcome: Outcome) -> Transition:
        """The state a forwarded submission moves to: the settlement table's, as for the
        dispatcher."""
        verdict = outcome.verdict
        failure = verdict.failure
        response = stored_response(verdict.response)
        now = self._clock.wall()
        settled = settle(outcome)
        if failure is None:
            return Transition(
                SubmissionState.DELIVERED,
                attempts_delta=outcome.attempts,
                response=response,
                clear_error=True,
            )
        error = f"{failure.value} after {outcome.attempts} attempt(s)"
        if settled is Settlement.FAILED:
            return Transition(
                SubmissionState.FAILED,
                attempts_delta=outcome.attempts,
                response=response,
                error_class=failure.value,
                error=f"the platform refused it ({verdict.code or failure.value})",
            )
        maybe_sent = settled is Settlement.RECONCILE or may_have_acted(outcome)
        if failure.answer_lost or own_duplicate(outcome):
            # Reconcile at once: the client may be waiting to hear whether it was issued.
            wait = 0.0
            error += ": the platform may have issued it; reconciling before any resend"
        else:
            wait = self._backoff.delay(max(1, outcome.attempts), self._rng)
            if verdict.retry_after is not None:
                wait = max(wait, verdict.retry_after)
            error += "; queued for delivery"
        return Transition(
            waiting_state(maybe_sent=maybe_sent),
            attempts_delta=outcome.attempts,
            maybe_sent=maybe_sent or None,
            acknowledged=True,
            error_class=failure.value,
            error=error,
            next_attempt_at=now + wait,
        )

    def _answer_existing(
        self, submission: Submission, new: NewSubmission, exchange: Exchange
    ) -> web.Response:
        if submission.fingerprint != new.fingerprint:
            raise IdempotencyKeyReused(
                f"idempotency key {new.idempotency_key!r} was first used with a different body "
                f"(submission {submission.id}); use a new key for a different request"
            )
        if submission.state.final and submission.response is not None:
            exchange.outcome = "replayed"
            stored = submission.response
            response = web.Response(
                status=stored.status, body=stored.body, headers=list(stored.headers)
            )
            response.headers[REPLAYED] = "true"
            # Where the full record is, e.g. what reconciliation found when the answer was lost.
            response.headers["Location"] = STATUS_PATH.format(id=submission.id)
            return response
        if submission.acknowledged or submission.state is not SubmissionState.DELIVERING:
            return accepted(submission, exchange, replayed=True)
        raise RequestInFlight(
            f"submission {submission.id} with this idempotency key is being sent to the platform "
            "right now; retry in a few seconds to get its result"
        )

    @staticmethod
    def _new_submission(
        request: web.Request,
        outgoing: UpstreamRequest,
        operation: Operation,
        body: RequestBody,
        exchange: Exchange,
    ) -> NewSubmission:
        document = body.json()
        business_key = (
            _key_text(operation.business_key.resolve(document)) if operation.business_key else None
        )
        ordering_key = (
            _key_text(operation.ordering_key.resolve(document)) if operation.ordering_key else None
        )
        header_key = check_idempotency_key(request.headers)
        assert exchange.tenant is not None
        return NewSubmission(
            tenant=exchange.tenant,
            operation=operation.name,
            idempotency_key=header_key or business_key,
            fingerprint=fingerprint(body.raw),
            business_key=business_key,
            ordering_key=ordering_key,
            method=outgoing.method,
            path=outgoing.path,
            query=outgoing.query,
            headers=tuple(outgoing.headers.items()),
            body=outgoing.body,
            request_id=exchange.request_id,
        )


def check_idempotency_key(headers: Mapping[str, str]) -> str | None:
    """The request's `Idempotency-Key`, if it sent one; raises `InvalidIdempotencyKey` unless it
    is 1 to 128 printable ASCII characters without spaces (and sent once)."""
    keys = headers.getall(IDEMPOTENCY_KEY, []) if isinstance(headers, CIMultiDictProxy) else None
    if keys is not None and len(keys) > 1:
        raise InvalidIdempotencyKey(
            f"send the {IDEMPOTENCY_KEY} header once, not {len(keys)} times; nothing was sent"
        )
    key = headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"the {IDEMPOTENCY_KEY} header is {len(key)} characters; at most {MAX_KEY_LENGTH} "
            "are accepted; nothing was sent"
        )
    if not _KEY_OK.fullmatch(key):
        raise InvalidIdempotencyKey(
            f"the {IDEMPOTENCY_KEY} header must be printable ASCII without spaces "
            "(characters ! to ~); nothing was sent"
        )
    return key


def accepted(submission: Submission, exchange: Exchange, *, replayed: bool = False) -> web.Response:
    """The 202 for a submission that is durably in the outbox (docs/design.md#outcomes)."""
    exchange.outcome = "replayed" if replayed else "queued"
    exchange.submission_id = submission.id
    status_url = STATUS_PATH.format(id=submission.id)
    response = web.json_response(
        {"submission_id": submission.id, "status": "queued", "status_url": status_url},
        status=202,
        headers={"Location": status_url},
    )
    if replayed:
        response.headers[REPLAYED] = "true"
    return response


def _key_text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        return str(value) or None
    if isinstance(value, float) and math.isfinite(value):
        return json.dumps(value)
    return None
