"""Submissions: what the outbox keeps for every `submit` request (docs/design.md#lifecycle).

    queued ──claim──▶ delivering ──▶ delivered | failed            (final)
       ▲                  │               │
       │                  │               └─ issuance ends failed ─▶ issue_failed (final)
       └── back-off ◀─────┤          unknown  (answer lost: reconcile before any resend)
                          └────────▶ dead     (attempts or age exhausted: on-call)
    any unresolved state ──on-call──▶ discarded (with a reason)
    queued | unknown | dead | failed ──on-call──▶ issued_manually (final: issued by hand in the
                                                  tax bureau's portal; docs/manual-issuance.md)

A submission is written durably *before* the platform is called, so a crash at any point
leaves a row that says what may have happened.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.clock import iso_utc
from gateway.headers import end_to_end
from gateway.upstream.models import UpstreamResponse


class SubmissionState(StrEnum):
    QUEUED = "queued"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNKNOWN = "unknown"
    DEAD = "dead"
    DISCARDED = "discarded"
    #: Accepted by the platform, whose issuance then failed (docs/design.md#issuance-lifecycle).
    ISSUE_FAILED = "issue_failed"
    #: Issued by hand in the tax bureau's portal during a long outage; never sent again
    #: (docs/manual-issuance.md). The invoice number is in `result["manual_issuance"]`.
    ISSUED_MANUALLY = "issued_manually"

    @property
    def final(self) -> bool:
        """No further delivery will happen."""
        return self in _FINAL

    @property
    def unresolved(self) -> bool:
        """Still holds back later submissions with the same ordering key."""
        return not self.final


_FINAL = frozenset(
    {
        SubmissionState.DELIVERED,
        SubmissionState.FAILED,
        SubmissionState.DISCARDED,
        SubmissionState.ISSUE_FAILED,
        SubmissionState.ISSUED_MANUALLY,
    }
)
UNRESOLVED_STATES = tuple(s for s in SubmissionState if not s.final)
FINAL_STATES = tuple(s for s in SubmissionState if s.final)
#: What on-call may mark issued by hand (docs/manual-issuance.md): what the platform has not
#: issued as far as the gateway knows — waiting (queued), out of attempts (dead), answer lost
#: (unknown: reconciliation would look it up; the operator checks the platform first) or refused
#: (failed: perhaps corrected, then issued by hand). Never a row being sent (delivering; the
#: fence refuses one that starts being sent mid-action too), one the platform accepted
#: (delivered, issue_failed: that invoice is the platform's), or one already decided on.
MARKABLE_STATES = (
    SubmissionState.QUEUED,
    SubmissionState.DEAD,
    SubmissionState.UNKNOWN,
    SubmissionState.FAILED,
)
#: Where `Submission.result` keeps what on-call recorded of an invoice issued by hand.
MANUAL_ISSUANCE = "manual_issuance"


def new_submission_id(now: float | None = None) -> str:
    """A sortable id: milliseconds since the epoch (hex) then 10 random bytes."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"sub_{millis:012x}{secrets.token_hex(10)}"


def fingerprint(body: bytes) -> str:
    """SHA-256 of the canonical JSON body (sorted keys, no whitespace); raw bytes if not JSON."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (UnicodeDecodeError, json.JSONDecodeError):
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """An upstream answer, kept to be replayed to a client retrying with the same key."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": [list(h) for h in self.headers],
            "body_b64": base64.b64encode(self.body).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredResponse:
        return cls(
            status=int(data["status"]),
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            body=base64.b64decode(data["body_b64"]),
        )


def stored_response(response: UpstreamResponse | None) -> StoredResponse | None:
    """The platform's answer as kept for replaying: its end-to-end headers only."""
    if response is None:
        return None
    return StoredResponse(
        status=response.status,
        headers=tuple(end_to_end(response.headers).items()),
        body=response.body,
    )


class IssuanceOutcome(StrEnum):
    """Where an accepted invoice's issuance stands, in the gateway's words (the platform's own
    status values are mapped by the operation's `issuance.statuses`)."""

    ISSUING = "issuing"
    DONE = "done"
    FAILED = "failed"
    SIGNING_FAILED = "signing_failed"
    CANCELLED = "cancelled"
    #: Not final after `issuance.give_up_after`: no longer looked up.
    GIVEN_UP = "given_up"

    @property
    def final(self) -> bool:
        """No further lookup will happen."""
        return self is not IssuanceOutcome.ISSUING

    @property
    def failed(self) -> bool:
        """The platform accepted the submission but did not issue the invoice."""
        return self in (IssuanceOutcome.FAILED, IssuanceOutcome.SIGNING_FAILED)


@dataclass(frozen=True, slots=True)
class Issuance:
    """What the platform last said about an accepted submission's invoice."""

    outcome: IssuanceOutcome
    #: The platform's own status value (e.g. `22`), None before it listed the invoice.
    status: str | None = None
    #: The number the invoice is looked up by (the platform's serial number).
    serial: str | None = None
    invoice_number: str | None = None
    invoice_code: str | None = None
    pdf_url: str | None = None
    fail_cause: str | None = None
    #: When it was last looked up (None: not yet).
    checked_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "status": self.status,
            "serial": self.serial,
            "invoice_number": self.invoice_number,
            "invoice_code": self.invoice_code,
            "pdf_url": self.pdf_url,
            "fail_cause": self.fail_cause,
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Issuance:
        return cls(
            outcome=IssuanceOutcome(data["outcome"]),
            status=data.get("status"),
            serial=data.get("serial"),
            invoice_number=data.get("invoice_number"),
            invoice_code=data.get("invoice_code"),
            pdf_url=data.get("pdf_url"),
            fail_cause=data.get("fail_cause"),
            checked_at=data.get("checked_at"),
        )

    def public_view(self) -> dict[str, Any]:
        """As the client's status API and on-call show it."""
        return {
            "status": self.outcome.value,
            "platform_status": self.status,
            "serial": self.serial,
            "invoice_number": self.invoice_number,
            "invoice_code": self.invoice_code,
            "pdf_url": self.pdf_url,
            "fail_cause": self.fail_cause,
            "checked_at": iso_utc(self.checked_at) if self.checked_at else None,
        }


@dataclass(frozen=True, slots=True)
class NewSubmission:
    """A submission as accepted from a client, before the store gives it an id."""

    tenant: str
    operation: str
    idempotency_key: str | None
    fingerprint: str
    business_key: str | None
    ordering_key: str | None
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    request_id: str


@dataclass(frozen=True, slots=True)
class Submission(NewSubmission):
    """A submission as stored: what the client sent, plus where it is in its life."""

    id: str
    state: SubmissionState
    #: A 202 was sent: a client retrying with the same key gets this id back.
    acknowledged: bool
    attempts: int
    #: An attempt may have reached the platform without a definite answer; a duplicate code
    #: from the platform then proves that attempt succeeded.
    maybe_sent: bool
    last_error_class: str | None
    last_error: str | None
    #: The platform's final answer (or what reconciliation found).
    response: StoredResponse | None
    #: Extra facts recorded with the final state (e.g. the reconciliation lookup).
    result: dict[str, Any] | None
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    lease_owner: str | None
    lease_expires_at: float | None
    #: Incremented on every claim; a stale holder's write (wrong fence) is refused.
    fence: int
    delivered_at: float | None = None
    #: Where `max_age` counts from: acceptance, or the last time on-call requeued it.
    age_from: float | None = None
    #: What the platform last said about the invoice once it accepted the submission.
    issuance: Issuance | None = None

    @classmethod
    def of(cls, new: NewSubmission, **lifecycle: Any) -> Submission:
        """`new` as stored, with its lifecycle fields (id, state, …) given by keyword."""
        sent = {f.name: getattr(new, f.name) for f in dataclasses.fields(NewSubmission)}
        return cls(**sent, **lifecycle)

    def to_record(self) -> dict[str, Any]:
        """Every field, JSON-safe (the body in base64): the export/import format, lossless."""
        record: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "body":
                value = base64.b64encode(value).decode()
            elif name == "state":
                value = value.value
            elif name in ("response", "issuance"):
                value = value.to_json() if value is not None else None
            elif name in ("query", "headers"):
                value = [list(pair) for pair in value]
            record[name] = value
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Submission:
        """The inverse of `to_record`; raises ValueError on a malformed record."""
        try:
            data = dict(record)
            data["body"] = base64.b64decode(data["body"], validate=True)
            data["state"] = SubmissionState(data["state"])
            data["response"] = (
                StoredResponse.from_json(data["response"]) if data.get("response") else None
            )
            data["issuance"] = (
                Issuance.from_json(data["issuance"]) if data.get("issuance") else None
            )
            data["query"] = tuple((str(k), str(v)) for k, v in data["query"])
            data["headers"] = tuple((str(k), str(v)) for k, v in data["headers"])
            return cls(**data)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"not a submission record: {exc}") from exc

    @property
    def manual_invoice_number(self) -> str | None:
        """The number of the invoice issued by hand for it (`issued_manually` only)."""
        if self.state is not SubmissionState.ISSUED_MANUALLY or not self.result:
            return None
        manual = self.result.get(MANUAL_ISSUANCE)
        number = manual.get("invoice_number") if isinstance(manual, dict) else None
        return str(number) if number is not None else None

    def public_view(self) -> dict[str, Any]:
        """What `GET /gateway/v1/submissions/{id}` shows its tenant."""
        view: dict[str, Any] = {
            "submission_id": self.id,
            "operation": self.operation,
            "status": self.state.value,
            "attempts": self.attempts,
            "last_error_class": self.last_error_class,
            "last_error": self.last_error,
            "business_key": self.business_key,
            "accepted_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
            "next_attempt_at": iso_utc(self.next_attempt_at) if self.next_attempt_at else None,
            "delivered_at": iso_utc(self.delivered_at) if self.delivered_at else None,
        }
        if self.state.final and self.response is not None:
            try:
                answer: Any = json.loads(self.response.body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                answer = self.response.body.decode("utf-8", "replace")
            view["response"] = {"status": self.response.status, "body": answer}
        if self.result:
            view["result"] = self.result
        if self.state is SubmissionState.ISSUED_MANUALLY:
            view["invoice_number"] = self.manual_invoice_number
        if self.issuance is not None:
            view["issuance"] = self.issuance.public_view()
        return view


@dataclass(frozen=True, slots=True)
class Transition:
    """A change to one submission, applied only while its fence still matches."""

    state: SubmissionState
    attempts_delta: int = 0
    maybe_sent: bool | None = None
    acknowledged: bool | None = None
    error_class: str | None = None
    error: str | None = None
    response: StoredResponse | None = None
    result: dict[str, Any] | None = None
    next_attempt_at: float | None = None
    clear_error: bool = False
    #: On-call actions: start counting attempts and age afresh, replace the payload.
    reset_attempts: bool = False
    restart_age: bool = False
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class IssuanceCheck:
    """What one lookup learned about a delivered submission's invoice, to be recorded only
    while the row is still `delivered` under the fence the lookup read."""

    submission_id: str
    fence: int
    issuance: Issuance
    #: When to look again; None once the issuance is final (or given up).
    next_check_at: float | None


@dataclass(frozen=True, slots=True)
class SubmissionQuery:
    """A filter over submissions, as on-call asks for them (every field optional)."""

    states: tuple[SubmissionState, ...] = ()
    tenant: str | None = None
    operation: str | None = None
    error_class: str | None = None
    accepted_after: float | None = None
    accepted_before: float | None = None
    #: Substring of the business key (e.g. part of an order number).
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[Submission, ...]
    #: Pass back to get the next page; None on the last one.
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what to which submissions, and why: one entry of the audit log."""

    actor: str
    role: str
    action: str
    submission_ids: tuple[str, ...] = ()
    reason: str | None = None
    details: dict[str, Any] | None = None
    at: float = 0.0
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": iso_utc(self.at),
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "submission_ids": list(self.submission_ids),
            "reason": self.reason,
            "details": self.details or {},
        }
