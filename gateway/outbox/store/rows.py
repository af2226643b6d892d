"""Rows as the SQL stores keep them: a `Submission` or `AuditEntry` to column values and back.

Pure mapping, shared by every SQL store so that a row reads back the same whichever database
holds it: JSON as text (`ensure_ascii=False`), times as unix seconds, flags as booleans, the
body as bytes. Also the opaque cursors (`s<seq>`) their listings hand out.

The columns that carry invoice data (`body`, `response`, `result`, `issuance`) go through the
store's `Sealer` here, and only here (docs/encryption.md): sealed on the way in, opened on the
way out, bound to the row's id and column. Every other column stays as it is: the outbox
queries by it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.outbox.store.sealing import Sealer
from gateway.outbox.submissions import (
    AuditEntry,
    Issuance,
    NewSubmission,
    StoredResponse,
    Submission,
    SubmissionState,
    new_submission_id,
)

__all__ = [
    "AUDIT_COLUMNS",
    "COLUMNS",
    "SEALED_COLUMNS",
    "admitted",
    "audit_entry",
    "audit_values",
    "cursor_of",
    "issuance_due_at",
    "issuance_error",
    "parse_cursor",
    "resealed",
    "seal_body",
    "seal_json",
    "submission",
    "submission_values",
]

#: The columns a `Sealer` seals.
SEALED_COLUMNS = ("body", "response", "result", "issuance")

#: The submission columns, in the order `submission_values` gives and `submission` reads them.
COLUMNS = (
    "id, tenant, operation, idempotency_key, fingerprint, business_key, ordering_key, method, "
    "path, query, headers, body, request_id, state, acknowledged, attempts, maybe_sent, "
    "last_error_class, last_error, response, result, created_at, updated_at, next_attempt_at, "
    "lease_owner, lease_expires_at, fence, delivered_at, age_from, issuance, issuance_outcome, "
    "issuance_due_at"
)
#: The audit columns after `seq` and `at`, in the order `audit_values` gives them.
AUDIT_COLUMNS = "actor, role, action, submission_ids, reason, details"


def seal_body(sealer: Sealer, submission_id: str, body: bytes) -> bytes:
    """The body as stored for the submission `submission_id`."""
    return sealer.seal(body, f"{submission_id}/body")


def seal_json(sealer: Sealer, submission_id: str, column: str, value: Any) -> str:
    """`value` as JSON text as stored in `column` of the submission `submission_id`."""
    return sealer.seal_text(json.dumps(value, ensure_ascii=False), f"{submission_id}/{column}")


def _open_json(sealer: Sealer, submission_id: str, column: str, stored: str | None) -> Any:
    if not stored:
        return None
    return json.loads(sealer.open_text(stored, f"{submission_id}/{column}"))


def resealed(sealer: Sealer, row: Sequence[Any]) -> tuple[Any, ...] | None:
    """The sealed columns of a row of `id, SEALED_COLUMNS` re-sealed under the current key,
    in that order; None when every one is under it already."""
    sid, body, *texts = row
    body = bytes(body)
    if sealer.is_current(body) and all(sealer.is_current(text) for text in texts):
        return None
    new_body = sealer.seal(sealer.open(body, f"{sid}/body"), f"{sid}/body")
    new_texts = [
        None
        if text is None
        else sealer.seal_text(sealer.open_text(text, f"{sid}/{column}"), f"{sid}/{column}")
        for column, text in zip(SEALED_COLUMNS[1:], texts, strict=True)
    ]
    return (new_body, *new_texts)


def submission_values(s: Submission, sealer: Sealer) -> tuple[Any, ...]:
    """`s` as the values of `COLUMNS`, sealed by `sealer`."""
    return (
        s.id,
        s.tenant,
        s.operation,
        s.idempotency_key,
        s.fingerprint,
        s.business_key,
        s.ordering_key,
        s.method,
        s.path,
        json.dumps(s.query),
        json.dumps(s.headers, ensure_ascii=False),
        seal_body(sealer, s.id, s.body),
        s.request_id,
        s.state.value,
        s.acknowledged,
        s.attempts,
        s.maybe_sent,
        s.last_error_class,
        s.last_error,
        seal_json(sealer, s.id, "response", s.response.to_json()) if s.response else None,
        seal_json(sealer, s.id, "result", s.result) if s.result is not None else None,
        s.created_at,
        s.updated_at,
        s.next_attempt_at,
        s.lease_owner,
        s.lease_expires_at,
        s.fence,
        s.delivered_at,
        s.age_from,
        seal_json(sealer, s.id, "issuance", s.issuance.to_json()) if s.issuance else None,
        s.issuance.outcome.value if s.issuance else None,
        issuance_due_at(s),
    )


def submission(row: Sequence[Any], sealer: Sealer) -> Submission:
    """The submission a row of `COLUMNS` holds, opened by `sealer` (`SealingError` when a
    value is sealed under a key it lacks)."""
    sid = row[0]
    response = _open_json(sealer, sid, "response", row[19])
    issuance = _open_json(sealer, sid, "issuance", row[29])
    return Submission(
        id=row[0],
        tenant=row[1],
        operation=row[2],
        idempotency_key=row[3],
        fingerprint=row[4],
        business_key=row[5],
        ordering_key=row[6],
        method=row[7],
        path=row[8],
        query=tuple((str(k), str(v)) for k, v in json.loads(row[9])),
        headers=tuple((str(k), str(v)) for k, v in json.loads(row[10])),
        body=sealer.open(bytes(row[11]), f"{sid}/body"),
        request_id=row[12],
        state=SubmissionState(row[13]),
        acknowledged=bool(row[14]),
        attempts=int(row[15]),
        maybe_sent=bool(row[16]),
        last_error_class=row[17],
        last_error=row[18],
        response=StoredResponse.from_json(response) if response is not None else None,
        result=_open_json(sealer, sid, "result", row[20]),
        created_at=row[21],
        updated_at=row[22],
        next_attempt_at=row[23],
        lease_owner=row[24],
        lease_expires_at=row[25],
        fence=int(row[26]),
        delivered_at=row[27],
        age_from=row[28],
        issuance=Issuance.from_json(issuance) if issuance is not None else None,
    )


def issuance_due_at(s: Submission) -> float | None:
    """Whether (and from when) a row as given is followed: delivered, issuance not final."""
    if s.state is not SubmissionState.DELIVERED:
        return None
    if s.issuance is not None and s.issuance.outcome.final:
        return None
    return s.delivered_at or s.updated_at


def issuance_error(issuance: Issuance) -> str:
    """The last error of a row whose issuance failed."""
    what = "signing" if issuance.outcome.value == "signing_failed" else "issuance"
    return (
        f"the platform accepted it, then its {what} failed (status {issuance.status}): "
        f"{issuance.fail_cause or 'no cause given'}"
    )


def audit_values(entry: AuditEntry) -> tuple[Any, ...]:
    """`entry` as the values of `AUDIT_COLUMNS`."""
    return (
        entry.actor,
        entry.role,
        entry.action,
        json.dumps(list(entry.submission_ids)),
        entry.reason,
        json.dumps(entry.details or {}, ensure_ascii=False),
    )


def audit_entry(row: Sequence[Any]) -> AuditEntry:
    """The entry a row of `seq, at, AUDIT_COLUMNS` holds."""
    return AuditEntry(
        seq=int(row[0]),
        at=float(row[1]),
        actor=row[2],
        role=row[3],
        action=row[4],
        submission_ids=tuple(json.loads(row[5])),
        reason=row[6],
        details=json.loads(row[7]) if row[7] else None,
    )


def cursor_of(seq: int) -> str:
    """The cursor continuing a listing after the row numbered `seq`."""
    return f"s{seq}"


def parse_cursor(cursor: str | None) -> int | None:
    """The sequence number a cursor of `cursor_of` names; `ValueError` for any other."""
    if cursor is None:
        return None
    if not cursor.startswith("s") or not cursor[1:].isdigit():
        raise ValueError(f"not a cursor from this API: {cursor!r}")
    return int(cursor[1:])


def admitted(
    new: NewSubmission,
    *,
    queue: bool,
    blocked: bool,
    owner: str,
    lease_seconds: float,
    now: float,
) -> Submission:
    """The row `OutboxStore.admit` stores for `new`: `queued` when asked to queue or `blocked`
    behind an unresolved submission with its ordering key, else `delivering`, leased to
    `owner`; the id still to be given is made here."""
    queued = queue or blocked
    held = blocked and not queue
    return Submission.of(
        new,
        id=new_submission_id(now),
        state=SubmissionState.QUEUED if queued else SubmissionState.DELIVERING,
        acknowledged=queued,
        attempts=0,
        maybe_sent=False,
        last_error_class="ordering" if held else None,
        last_error="waiting behind an earlier submission with the same ordering key"
        if held
        else None,
        response=None,
        result=None,
        created_at=now,
        updated_at=now,
        next_attempt_at=now if queued else None,
        lease_owner=None if queued else owner,
        lease_expires_at=None if queued else now + lease_seconds,
        fence=0,
    )
