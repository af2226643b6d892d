"""On-call actions on the outbox: what an operator may do, and the audit trail of it.

Each action checks the submission's state, changes it under its fence (so it cannot race the
dispatcher), and records who did it and why in the same transaction. The admin API and the
`invoice-gateway outbox` CLI are thin layers over this module.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from gateway.clock import Clock, iso_utc
from gateway.errors import ActionNotAllowed, BadRequest, NotFound, StoreError
from gateway.jsonpointer import MISSING, JsonPointer
from gateway.outbox.manual import ManualExport
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import (
    MANUAL_ISSUANCE,
    MARKABLE_STATES,
    AuditEntry,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)

log = structlog.get_logger("gateway.outbox.oncall")

S = SubmissionState
_REPLAYABLE = frozenset({S.QUEUED, S.UNKNOWN, S.DEAD, S.FAILED})
_DISCARDABLE = frozenset({S.QUEUED, S.UNKNOWN, S.DEAD, S.FAILED})
_EDITABLE = frozenset({S.QUEUED, S.UNKNOWN, S.DEAD, S.FAILED})
MARKABLE = MARKABLE_STATES
#: What `export_manual` exports when no state is asked for: what is stuck and surely unsent.
MANUAL_EXPORT_DEFAULT = (S.QUEUED, S.DEAD)
#: Longest invoice number accepted (the portal's are 20 digits; older ones code + number).
MAX_INVOICE_NUMBER = 64
#: Rows changed per step of a bulk job; the job yields between steps.
JOB_STEP = 100


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks: the admin token's name and its role."""

    name: str
    role: str


class JobState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(slots=True)
class Job:
    """A bulk replay in progress; its counters are what progress bars show."""

    id: str
    kind: str
    total: int
    actor: Actor
    reason: str
    query: dict[str, Any]
    done: int = 0
    skipped: int = 0
    state: JobState = JobState.RUNNING
    error: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    _cancel: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def view(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "error": self.error,
            "actor": self.actor.name,
            "reason": self.reason,
            "filter": self.query,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class OnCall:
    def __init__(
        self,
        *,
        store: OutboxStore,
        clock: Clock,
        wake_dispatcher: Callable[[], None],
        protected_pointers: dict[str, tuple[JsonPointer, ...]],
    ) -> None:
        """`protected_pointers`: per operation, the body fields on-call may not edit (the
        business and ordering keys: changing them would break idempotency and ordering)."""
        self._store = store
        self._clock = clock
        self._wake = wake_dispatcher
        self._protected = protected_pointers
        self.jobs: dict[str, Job] = {}

    # -- one submission ---------------------------------------------------------------------

    async def get(self, submission_id: str) -> Submission:
        submission = await self._store.get(submission_id)
        if submission is None:
            raise NotFound(f"no submission {submission_id!r}")
        return submission

    async def replay(self, submission_id: str, actor: Actor, reason: str | None) -> Submission:
        """Make a queued, unknown, dead or failed submission due now."""
        submission = await self.get(submission_id)
        return await self._replay(submission, actor, reason, action="replay")

    async def requeue(self, submission_id: str, actor: Actor, reason: str | None) -> Submission:
        """Give a dead submission a fresh start: attempts and age count from now."""
        submission = await self.get(submission_id)
        if submission.state is not S.DEAD:
            raise ActionNotAllowed(
                f"submission {submission_id} is {submission.state.value}; only dead submissions "
                "are requeued (use replay for the others)"
            )
        return await self._replay(submission, actor, reason, action="requeue")

    async def discard(self, submission_id: str, actor: Actor, reason: str | None) -> Submission:
        """Decide not to send it. A reason is mandatory."""
        reason = _required(reason, "discarding")
        submission = await self.get(submission_id)
        self._allowed(submission, _DISCARDABLE, "discarded")
        return await self._apply(
            submission,
            Transition(
                S.DISCARDED, error_class="discarded", error=f"discarded by {actor.name}: {reason}"
            ),
            actor,
            "discard",
            reason,
        )

    async def force_resend(
        self, submission_id: str, actor: Actor, reason: str | None, *, confirm: bool
    ) -> Submission:
        """Send a delivered submission again. It may create a second invoice: needs `confirm`."""
        reason = _required(reason, "a forced resend")
        submission = await self.get(submission_id)
        if submission.state is not S.DELIVERED:
            raise ActionNotAllowed(
                f"submission {submission_id} is {submission.state.value}; force-resend is only for "
                "delivered submissions (use replay)"
            )
        if not confirm:
            raise BadRequest(
                "force-resend sends an already delivered submission again and may issue a second "
                'invoice; repeat with confirmation (CLI: --yes, API: {"confirm": true})'
            )
        change = Transition(
            S.QUEUED,
            maybe_sent=False,
            acknowledged=True,
            reset_attempts=True,
            restart_age=True,
            next_attempt_at=self._clock.wall(),
            error_class="force_resend",
            error=f"resent on purpose by {actor.name}: {reason}",
        )
        updated = await self._apply(submission, change, actor, "force-resend", reason)
        self._wake()
        return updated

    async def edit_payload(
        self, submission_id: str, actor: Actor, pointer: str, value: Any, reason: str | None
    ) -> Submission:
        """Change one field of the body before a replay; before and after go to the audit log."""
        reason = _required(reason, "an edit")
        submission = await self.get(submission_id)
        self._allowed(submission, _EDITABLE, "edited")
        try:
            target = JsonPointer(pointer)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not target.text:
            raise BadRequest("give the pointer of one field, e.g. /order/buyerTaxNum")
        for protected in self._protected.get(submission.operation, ()):
            if target.text == protected.text or protected.text.startswith(target.text + "/"):
                raise ActionNotAllowed(
                    f"{pointer} is this operation's business or ordering key; it cannot be edited "
                    "(submit a new invoice with a new order number instead)"
                )
        try:
            document = json.loads(submission.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ActionNotAllowed(
                "this submission's body is not JSON; it cannot be edited"
            ) from None
        before = target.resolve(document)
        _set(document, pointer, value)
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        change = Transition(submission.state, body=body, next_attempt_at=submission.next_attempt_at)
        details = {
            "pointer": pointer,
            "before": None if before is MISSING else before,
            "after": value,
        }
        return await self._apply(submission, change, actor, "edit", reason, details=details)

    async def mark_issued(
        self, submission_id: str, actor: Actor, invoice_number: str | None, reason: str | None
    ) -> Submission:
        """Record that the invoice was issued by hand in the tax bureau's portal: the row
        becomes `issued_manually` (final: never sent again, no longer holding back its
        ordering key), with `invoice_number` in its result. A reason is mandatory."""
        reason = _required(reason, "marking an invoice issued by hand")
        number = _invoice_number(invoice_number)
        submission = await self.get(submission_id)
        self._allowed(submission, frozenset(MARKABLE), "marked issued")
        marked = {"invoice_number": number, "marked_at": iso_utc(self._clock.wall())}
        change = Transition(
            S.ISSUED_MANUALLY,
            result={**(submission.result or {}), MANUAL_ISSUANCE: marked},
            error_class="issued_manually",
            error=f"issued by hand in the tax bureau's portal as invoice {number}",
        )
        details = {"invoice_number": number, "maybe_sent": submission.maybe_sent}
        return await self._apply(submission, change, actor, "mark-issued", reason, details=details)

    # -- many submissions -------------------------------------------------------------------

    async def export_manual(
        self, query: SubmissionQuery, filters: dict[str, Any], actor: Actor, reason: str | None
    ) -> ManualExport:
        """Every submission matching `query` laid out for the tax bureau portal's batch import,
        personal data whole; audited (`export-manual`: who, filter, count) before it is handed
        out. `query.states` must be markable ones (default: queued and dead)."""
        reason = _required(reason, "a manual-issuance export (it holds personal data whole)")
        refused = [s.value for s in query.states if s not in MARKABLE]
        if refused:
            raise BadRequest(
                f"{', '.join(refused)} cannot be exported for manual issuance; only "
                f"{', '.join(s.value for s in MARKABLE)} submissions can be issued by hand"
            )
        export = ManualExport()
        async for submission in self._store.stream(query):
            export.add(submission)
        totals = export.totals()
        await self._store.record_audit(
            AuditEntry(
                actor=actor.name,
                role=actor.role,
                action="export-manual",
                submission_ids=tuple(export.submission_ids),
                reason=reason,
                details={"filter": filters, **totals},
            )
        )
        log.info("manual-issuance export", actor=actor.name, **totals)
        return export

    async def count(self, query: SubmissionQuery) -> int:
        return await self._store.count(query)

    async def start_replay_job(
        self, query: SubmissionQuery, filters: dict[str, Any], actor: Actor, reason: str | None
    ) -> Job:
        """Replay every replayable submission matching `query`, in steps, as a cancellable job.

        It only makes rows due; the dispatcher sends them at its own rate and concurrency, so a
        bulk replay cannot push more at the platform than normal draining does.
        """
        reason = _required(reason, "a bulk replay")
        total = await self._store.count(query)
        job = Job(
            id=f"job_{secrets.token_hex(6)}",
            kind="replay",
            total=total,
            actor=actor,
            reason=reason,
            query=filters,
            started_at=self._clock.wall(),
        )
        self.jobs[job.id] = job
        await self._store.record_audit(
            AuditEntry(
                actor=actor.name,
                role=actor.role,
                action="bulk-replay-started",
                reason=reason,
                details={"job_id": job.id, "filter": filters, "matching": total},
            )
        )
        job._task = asyncio.create_task(self._run_job(job, query), name=job.id)
        return job

    async def _run_job(self, job: Job, query: SubmissionQuery) -> None:
        final = JobState.FAILED
        try:
            ids = [s.id async for s in self._store.stream(query)]
            job.total = len(ids)
            for start in range(0, len(ids), JOB_STEP):
                if job._cancel.is_set():
                    final = JobState.CANCELLED
                    break
                step = ids[start : start + JOB_STEP]
                results = await asyncio.gather(
                    *(self._replay_quietly(i, job) for i in step), return_exceptions=True
                )
                for result in results:
                    if result is True:
                        job.done += 1
                    else:
                        job.skipped += 1
                await asyncio.sleep(0)  # let live requests and the dispatcher in between steps
            else:
                final = JobState.DONE
        except (StoreError, asyncio.CancelledError) as exc:
            job.error = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            try:
                await self._store.record_audit(
                    AuditEntry(
                        actor=job.actor.name,
                        role=job.actor.role,
                        action=f"bulk-replay-{final.value}",
                        reason=job.reason,
                        details={"job_id": job.id, "replayed": job.done, "skipped": job.skipped},
                    )
                )
            except StoreError as exc:
                log.error("cannot record the end of a bulk job", job=job.id, error=str(exc))
            # Told only now: whoever sees the job finished finds its closing audit entry.
            job.finished_at = self._clock.wall()
            job.state = final
            self._wake()

    async def _replay_quietly(self, submission_id: str, job: Job) -> bool:
        submission = await self._store.get(submission_id)
        if submission is None or submission.state not in _REPLAYABLE:
            return False
        change = self._replay_change(submission)
        audit = AuditEntry(
            actor=job.actor.name,
            role=job.actor.role,
            action="replay",
            submission_ids=(submission.id,),
            reason=job.reason,
            details={"job_id": job.id, "tenant": submission.tenant},
        )
        updated = await self._store.transition(
            submission.id, submission.fence, change, now=self._clock.wall(), audit=audit
        )
        return updated is not None

    def cancel_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        job.cancel()
        return job

    async def export(
        self,
        query: SubmissionQuery,
        view: Callable[[Submission], dict[str, Any]] = Submission.to_record,
    ) -> AsyncIterator[bytes]:
        """JSON Lines, one submission per line as `view` shows it; by default every field (a
        backup a business can keep)."""
        async for submission in self._store.stream(query):
            yield json.dumps(view(submission), ensure_ascii=False).encode() + b"\n"

    async def import_lines(self, lines: list[bytes], actor: Actor) -> int:
        """Load an export into an empty store. Every line must be a valid record."""
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if isinstance(record, dict) and record.get("masked") is True:
                    raise BadRequest(
                        f"line {number} is from a masked export, which cannot be restored: "
                        "export with unmasked=1 and a reason (CLI: --unmasked --reason)"
                    )
                rows.append(Submission.from_record(record))
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"line {number} is not a submission record: {exc}") from None
        audit = AuditEntry(
            actor=actor.name,
            role=actor.role,
            action="import",
            details={"rows": len(rows)},
        )
        try:
            count = await self._store.import_rows(rows, audit=audit)
        except StoreError as exc:
            if "already holds submissions" in str(exc):
                raise ActionNotAllowed(str(exc)) from None
            raise
        self._wake()
        return count

    async def record(self, actor: Actor, action: str, reason: str | None, **details: Any) -> None:
        """Audit an action that is not about submissions (pause, circuit control)."""
        await self._store.record_audit(
            AuditEntry(
                actor=actor.name, role=actor.role, action=action, reason=reason, details=details
            )
        )

    # -- internals --------------------------------------------------------------------------

    async def _replay(
        self, submission: Submission, actor: Actor, reason: str | None, *, action: str
    ) -> Submission:
        self._allowed(submission, _REPLAYABLE, "replayed")
        change = self._replay_change(submission)
        updated = await self._apply(submission, change, actor, action, reason)
        self._wake()
        return updated

    def _replay_change(self, submission: Submission) -> Transition:
        # An unknown submission stays unknown: it is reconciled, never resent blindly.
        state = S.UNKNOWN if submission.state is S.UNKNOWN or submission.maybe_sent else S.QUEUED
        # Dead (out of attempts or age) and failed (refused, perhaps since edited) start afresh.
        fresh = submission.state in (S.DEAD, S.FAILED)
        return Transition(
            state,
            acknowledged=True,
            reset_attempts=fresh,
            restart_age=fresh,
            next_attempt_at=self._clock.wall(),
        )

    @staticmethod
    def _allowed(submission: Submission, states: frozenset[SubmissionState], verb: str) -> None:
        if submission.state not in states:
            hint = {
                S.DELIVERING: "it is being sent right now; try again in a moment",
                S.DELIVERED: "it was delivered (force-resend sends it again, on purpose)",
                S.DISCARDED: "it was discarded",
                S.ISSUED_MANUALLY: "it was issued by hand, as invoice "
                f"{submission.manual_invoice_number}",
            }.get(submission.state, "")
            raise ActionNotAllowed(
                f"submission {submission.id} is {submission.state.value} and cannot be {verb}"
                + (f": {hint}" if hint else "")
            )

    async def _apply(
        self,
        submission: Submission,
        change: Transition,
        actor: Actor,
        action: str,
        reason: str | None,
        *,
        details: dict[str, Any] | None = None,
    ) -> Submission:
        audit = AuditEntry(
            actor=actor.name,
            role=actor.role,
            action=action,
            submission_ids=(submission.id,),
            reason=reason,
            details={
                "tenant": submission.tenant,
                "from": submission.state.value,
                "to": change.state.value,
                **(details or {}),
            },
        )
        updated = await self._store.transition(
            submission.id, submission.fence, change, now=self._clock.wall(), audit=audit
        )
        if updated is None:
            raise ActionNotAllowed(
                f"submission {submission.id} changed while you acted on it; look again and retry"
            )
        log.info(
            "on-call action",
            action=action,
            submission=submission.id,
            tenant=submission.tenant,
            actor=actor.name,
        )
        return updated


def _required(reason: str | None, what: str) -> str:
    if reason is None or not reason.strip():
        raise BadRequest(f"a reason is required for {what}; say why, for the audit log")
    return reason.strip()


def _invoice_number(value: str | None) -> str:
    number = (value or "").strip()
    if not number:
        raise BadRequest("the invoice number is required: the number the portal gave the invoice")
    if len(number) > MAX_INVOICE_NUMBER or not number.isprintable():
        raise BadRequest(
            f"not an invoice number: at most {MAX_INVOICE_NUMBER} printable characters, "
            f"got {number[:80]!r}"
        )
    return number


def _set(document: Any, pointer: str, value: Any) -> None:
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise BadRequest(f"{pointer}: the body has nothing at {token!r}")
    last = tokens[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    else:
        raise BadRequest(f"{pointer}: cannot set a field there")
