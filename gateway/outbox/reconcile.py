"""Reconciliation lookups: what the platform holds for a submission's business key.

When an attempt may have reached the platform without the gateway learning the result, the
dispatcher resends it with the same business key; the platform's duplicate code (`E9106`)
proves the earlier attempt succeeded. The `Reconciler` then asks the operation's configured
lookup (e.g. `queryInvoiceResult` by `orderNo`) what that attempt produced, and the
dispatcher records the answer as the delivery. The lookup reports what it finds; it does not
wait for the platform to finish issuing (status 20 "issuing" already proves it exists).
docs/design.md#exactly-once says why, and what is planned (a lookup before any resend).

A lookup may be answered by the backup endpoint (`upstream.backup_url`). Its "found" is as
good as the primary's; its "not found" is no proof of absence (the backup may not list yet
what the primary processed), so it counts as a failed lookup and nothing is resent on its
word — unless the submission's operation is configured `failover: submissions`, which says
the backup shares the primary's ledger.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from multidict import CIMultiDict

from gateway.config import OperationConfig, ReconcileConfig
from gateway.errors import ConfigError
from gateway.headers import REQUEST_ID
from gateway.jsonpointer import MISSING, JsonPointer
from gateway.operations import Operation, OperationRule
from gateway.outbox.submissions import StoredResponse, Submission
from gateway.resilience.failover import Endpoint
from gateway.resilience.failures import FailureClass
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.upstream.models import UpstreamRequest

#: The placeholder a lookup body template uses for the submission's business key.
BUSINESS_KEY_PLACEHOLDER = "{business_key}"
#: `{lookup:/pointer}` in a reconciled answer: a value of the entry the lookup found.
LOOKUP_PLACEHOLDER = "{lookup:"
#: Marks an answer the gateway made from a reconciliation, not one the platform sent.
RECONCILED_HEADER = "X-Gateway-Reconciled"


class LookupStatus(StrEnum):
    #: The platform has an entry for the business key.
    FOUND = "found"
    #: The platform answered, and has nothing for the business key.
    NOT_FOUND = "not_found"
    #: No usable answer (transport failure, error code, unreadable body): ask again later.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What one lookup learned. `entry` is set when found; `failure` when the lookup failed."""

    status: LookupStatus
    entry: dict[str, Any] | None = None
    failure: FailureClass | None = None
    #: The platform's business code, when it answered with one.
    code: str | None = None
    #: In plain words, for the submission's `last_error` and the logs (never a body).
    detail: str = ""


class Reconciler:
    """Looks up, by business key, what the platform holds for submissions of one operation."""

    def __init__(
        self,
        rule: ReconcileConfig,
        lookup: OperationConfig,
        *,
        pipeline: ResiliencePipeline,
        backup_proves_absence: bool = False,
    ) -> None:
        """`lookup` is the read operation `rule.lookup` names; `backup_proves_absence` whether
        a "not found" from the backup endpoint counts (the submissions themselves may go there:
        `failover: submissions`).

        Its `match` must name a concrete method and path (a path prefix ending in `*` cannot
        be sent); its header matches become the lookup's headers. Body matches are not
        applied: the body is `rule.body`, which must satisfy them itself.
        """
        if lookup.name != rule.lookup:
            raise ValueError(f"the lookup operation is {rule.lookup!r}, not {lookup.name!r}")
        path = lookup.match.path
        if path is None or path.endswith("*"):
            raise ConfigError(
                [
                    f"operations: {lookup.name!r} is used as a reconcile lookup, so its "
                    f"match.path must be an exact path (got {path!r})"
                ]
            )
        self.rule = rule
        self.operation: Operation = OperationRule.from_config(lookup).operation
        self._method = lookup.match.method or "POST"
        self._path = path
        self._headers = dict(lookup.match.headers)
        self._pointer: JsonPointer = rule.result_pointer
        self._pipeline = pipeline
        self.backup_proves_absence = backup_proves_absence

    @classmethod
    def for_operation(
        cls,
        operation: OperationConfig,
        operations: Mapping[str, OperationConfig],
        *,
        pipeline: ResiliencePipeline,
    ) -> Reconciler | None:
        """The reconciler of `operation`, or None when it has no rule (no lookup, no key)."""
        rule = operation.reconcile
        if rule is None or operation.business_key is None:
            return None
        lookup = operations.get(rule.lookup)
        if lookup is None:
            raise ConfigError(
                [
                    f"operations: {operation.name!r} reconciles with {rule.lookup!r}, which is "
                    "not a configured operation"
                ]
            )
        return cls(
            rule,
            lookup,
            pipeline=pipeline,
            backup_proves_absence=operation.failover == "submissions",
        )

    def request_for(self, submission: Submission) -> UpstreamRequest:
        """The lookup request for `submission` (unsigned: the auth scheme signs at send time)."""
        if submission.business_key is None:
            raise ValueError(f"submission {submission.id} has no business key to look up")
        body = _fill(self.rule.body, _key_only(submission.business_key))
        headers = CIMultiDict(self._headers)
        headers["Content-Type"] = "application/json"
        headers[REQUEST_ID] = submission.request_id
        return UpstreamRequest(
            method=self._method,
            path=self._path,
            query=(),
            headers=headers,
            body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
            operation=self.operation.name,
            tenant=submission.tenant,
        )

    def answer_for(self, submission: Submission, entry: Mapping[str, Any]) -> StoredResponse:
        """What a client retrying `submission` gets once reconciliation found `entry`: the
        configured answer filled from the entry, else the submission's status, marked as made
        by the gateway (`X-Gateway-Reconciled: true`) — never the platform's duplicate code,
        which would tell the client its own invoice was refused."""
        key = submission.business_key or ""
        if self.rule.answer is not None:
            document = _fill(self.rule.answer, _key_and_lookup(key, entry))
        else:
            document = {
                "submission_id": submission.id,
                "status": "delivered",
                "reconciled": True,
                "lookup": dict(entry),
            }
        return StoredResponse(
            status=200,
            headers=(
                ("Content-Type", "application/json; charset=utf-8"),
                (RECONCILED_HEADER, "true"),
            ),
            body=json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(),
        )

    async def lookup(self, submission: Submission) -> LookupResult:
        """Ask the platform what it holds for `submission`'s business key (a read, retried)."""
        if submission.business_key is None:
            return LookupResult(
                LookupStatus.FAILED, detail="the submission has no business key to look up by"
            )
        outcome = await self._pipeline.execute(
            self.request_for(submission), self.operation, live=False
        )
        verdict = outcome.verdict
        if not verdict.ok:
            failure = verdict.failure
            return LookupResult(
                LookupStatus.FAILED,
                failure=failure,
                code=verdict.code,
                detail=(
                    f"the lookup {self.operation.name} failed "
                    f"({failure.value if failure else 'unknown'}"
                    f"{f', code {verdict.code}' if verdict.code else ''})"
                ),
            )
        assert verdict.response is not None  # a success always carries the answer
        try:
            document = json.loads(verdict.response.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return LookupResult(
                LookupStatus.FAILED,
                failure=FailureClass.UNPARSABLE,
                detail=f"the lookup {self.operation.name} answered with a body that is not JSON",
            )
        found = self._pointer.resolve(document)
        if found is MISSING or found is None or found == {}:
            if outcome.endpoint is Endpoint.BACKUP and not self.backup_proves_absence:
                return LookupResult(
                    LookupStatus.FAILED,
                    code=verdict.code,
                    detail=(
                        f"the lookup {self.operation.name} was answered by the backup endpoint, "
                        "whose 'not found' is no proof of absence (it may not list yet what the "
                        "primary processed)"
                    ),
                )
            return LookupResult(
                LookupStatus.NOT_FOUND,
                code=verdict.code,
                detail=(
                    f"the lookup {self.operation.name} found nothing at "
                    f"{self._pointer.text or '(the whole answer)'}"
                ),
            )
        entry = found if isinstance(found, dict) else {"value": found}
        return LookupResult(
            LookupStatus.FOUND,
            entry=entry,
            code=verdict.code,
            detail=f"the lookup {self.operation.name} found the entry",
        )


def _fill(template: Any, value_of: Callable[[str], Any]) -> Any:
    """`template` with every string that is a placeholder replaced by `value_of(placeholder)`
    (strings `value_of` does not know, by returning MISSING, stay as they are)."""
    if isinstance(template, str):
        value = value_of(template)
        return template if value is MISSING else value
    if isinstance(template, dict):
        return {key: _fill(value, value_of) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill(item, value_of) for item in template]
    return template


def _key_only(business_key: str) -> Callable[[str], Any]:
    return lambda text: business_key if text == BUSINESS_KEY_PLACEHOLDER else MISSING


def _key_and_lookup(business_key: str, entry: Mapping[str, Any]) -> Callable[[str], Any]:
    def value_of(text: str) -> Any:
        if text == BUSINESS_KEY_PLACEHOLDER:
            return business_key
        if text.startswith(LOOKUP_PLACEHOLDER) and text.endswith("}"):
            found = JsonPointer(text[len(LOOKUP_PLACEHOLDER) : -1]).resolve(dict(entry))
            return None if found is MISSING else found
        return MISSING

    return value_of
