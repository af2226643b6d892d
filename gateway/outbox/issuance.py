"""Following accepted invoices to the end of their issuance (docs/design.md#issuance-lifecycle).

The platform's success answer to an issue only means "accepted, issuing"; the invoice is issued
(or not) later. For every submit operation with an `issuance` rule, the follower looks the
delivered submissions up until the platform reports a final status:

    every tick (the shortest `issuance.interval`, at most POLL_CAP):
        due delivered submissions of the followed operations     (store.issuance_due)
        per tenant and operation, up to `issuance.batch` numbers per lookup, each lookup taking
        a token from the operation's own bucket (`rate_share` of the dispatcher's rate) and one
        from the dispatcher's bucket, so lookups and deliveries together keep its rate
        per submission, by the status in its entry:
            done | cancelled                → recorded, stays delivered
            failed | signing_failed         → recorded, issue_failed (on-call)
            anything else, or not listed    → recorded (issuing), looked up `interval` later
            still not final `give_up_after`
            after delivery                  → given_up, no longer looked up
        a lookup that fails (busy, down)    → nothing recorded, asked again next time
        no number in the answer             → given_up at once (nothing to look up by)
    the store does not answer               → asked again next tick; logged when that starts
                                              and when it ends (`StoreOutage`), not each tick

Lookups are reads, retried by the pipeline within the read policy; the follower never sends a
submission again.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from multidict import CIMultiDict

from gateway.clock import Clock, Periodic
from gateway.config import GatewayConfig, IssuanceConfig, OperationConfig
from gateway.errors import ConfigError, StoreError
from gateway.headers import REQUEST_ID
from gateway.jsonpointer import MISSING, JsonPointer
from gateway.operations import Operation, OperationKind, OperationRule
from gateway.outbox.outage import StoreOutage
from gateway.outbox.store import OutboxStore
from gateway.outbox.submissions import (
    Issuance,
    IssuanceCheck,
    IssuanceOutcome,
    Submission,
)
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.ratelimit import TokenBucket
from gateway.upstream.models import UpstreamRequest

log = structlog.get_logger("gateway.outbox.issuance")

#: The follower looks for due invoices at least this often, whatever the intervals.
POLL_CAP = 5.0
#: Due submissions read per round and operation (several lookups' worth).
ROUND_LIMIT = 500


@dataclass(slots=True)
class IssuanceStats:
    """Counters since start, for metrics."""

    #: Issuances that reached a final outcome, by (operation, outcome).
    final: Counter[tuple[str, IssuanceOutcome]] = field(default_factory=Counter)
    lookups: int = 0
    lookup_failures: int = 0


@dataclass(frozen=True, slots=True)
class IssuanceRoute:
    """One followed operation: its rule, and how to send its lookup."""

    operation: str
    rule: IssuanceConfig
    lookup: Operation
    method: str
    path: str
    headers: Mapping[str, str]
    bucket: TokenBucket

    @classmethod
    def build(
        cls, operation: OperationConfig, lookup: OperationConfig, *, rate: float, clock: Clock
    ) -> IssuanceRoute:
        rule = operation.issuance
        if rule is None:
            raise ValueError(f"operation {operation.name!r} has no issuance rule")
        path = lookup.match.path
        if path is None or path.endswith("*"):
            raise ConfigError(
                [
                    f"operations: {lookup.name!r} is used as an issuance lookup, so its "
                    f"match.path must be an exact path (got {path!r})"
                ]
            )
        return cls(
            operation=operation.name,
            rule=rule,
            lookup=OperationRule.from_config(lookup).operation,
            method=lookup.match.method or "POST",
            path=path,
            headers=dict(lookup.match.headers),
            bucket=TokenBucket(rate * rule.rate_share, 1, clock),
        )

    def number_of(self, submission: Submission) -> str | None:
        """What `submission`'s invoice is looked up by: the number in its answer at
        `serial_pointer`, else (no pointer) its business key; None when there is none."""
        pointer = self.rule.serial_pointer
        if pointer is None:
            return submission.business_key
        if submission.response is None:
            return None
        try:
            document = json.loads(submission.response.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        found = pointer.resolve(document)
        if found is MISSING or found is None or found == "":
            return None
        return str(found)

    def request_for(
        self, numbers: Sequence[str], *, tenant: str, request_id: str
    ) -> UpstreamRequest:
        """The lookup of `numbers`, all of `tenant`'s invoices (signed with its identity)."""
        body = {**self.rule.body, self.rule.by: list(numbers)}
        headers = CIMultiDict(self.headers)
        headers["Content-Type"] = "application/json"
        headers[REQUEST_ID] = request_id
        return UpstreamRequest(
            method=self.method,
            path=self.path,
            query=(),
            headers=headers,
            body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
            operation=self.lookup.name,
            tenant=tenant,
        )

    def issuance_from(self, entry: Mapping[str, Any], serial: str, now: float) -> Issuance:
        """The entry the lookup found for `serial`, in the gateway's words."""
        rule = self.rule
        status = _text(entry, rule.status_pointer)
        return Issuance(
            outcome=self.outcome_of(status),
            status=status,
            serial=serial,
            invoice_number=_text(entry, rule.invoice_number_pointer),
            invoice_code=_text(entry, rule.invoice_code_pointer),
            pdf_url=_text(entry, rule.pdf_url_pointer),
            fail_cause=_text(entry, rule.fail_cause_pointer),
            checked_at=now,
        )

    def outcome_of(self, status: str | None) -> IssuanceOutcome:
        statuses = self.rule.statuses
        for outcome, values in (
            (IssuanceOutcome.DONE, statuses.done),
            (IssuanceOutcome.FAILED, statuses.failed),
            (IssuanceOutcome.SIGNING_FAILED, statuses.signing_failed),
            (IssuanceOutcome.CANCELLED, statuses.cancelled),
        ):
            if status in values:
                return outcome
        return IssuanceOutcome.ISSUING


class IssuanceFollower:
    """Looks delivered submissions up until their invoices are final; see the module docstring."""

    def __init__(
        self,
        *,
        store: OutboxStore,
        pipeline: ResiliencePipeline,
        operations: Iterable[OperationConfig],
        bucket: TokenBucket,
        clock: Clock,
    ) -> None:
        """`operations` is every configured operation (lookups are found among them);
        `bucket` is the dispatcher's token bucket, whose rate the lookups share."""
        self._store = store
        self._pipeline = pipeline
        self._bucket = bucket
        self._clock = clock
        by_name = {op.name: op for op in operations}
        self.routes: dict[str, IssuanceRoute] = {}
        for op in by_name.values():
            if op.issuance is None or op.kind != OperationKind.SUBMIT.value:
                continue
            lookup = by_name.get(op.issuance.lookup)
            if lookup is None:
                raise ConfigError(
                    [
                        f"operations: {op.name!r} follows issuance with {op.issuance.lookup!r}, "
                        "which is not a configured operation"
                    ]
                )
            self.routes[op.name] = IssuanceRoute.build(op, lookup, rate=bucket.rate, clock=clock)
        interval = min((r.rule.interval for r in self.routes.values()), default=POLL_CAP)
        self._outage = StoreOutage(
            log, clock, task="issuance-follower", stops="no issuance is followed"
        )
        self._periodic = Periodic(
            "issuance-follower",
            self._tick,
            interval=min(interval, POLL_CAP),
            clock=clock,
            failure="cannot follow the issuance of accepted invoices",
        )
        self.stats = IssuanceStats()

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        store: OutboxStore,
        pipeline: ResiliencePipeline,
        bucket: TokenBucket,
        clock: Clock,
    ) -> IssuanceFollower:
        return cls(
            store=store,
            pipeline=pipeline,
            operations=config.operations,
            bucket=bucket,
            clock=clock,
        )

    @property
    def running(self) -> bool:
        return self._periodic.running

    def start(self) -> None:
        """Start in the background (a no-op when no operation is followed)."""
        if self.routes:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _tick(self) -> None:
        """One round in the background: `follow_once`, the store's outages logged by
        `StoreOutage` (other failures are `Periodic`'s to log)."""
        try:
            await self.follow_once()
        except StoreError as exc:
            self._outage.failed(exc)
        else:
            self._outage.answered()

    async def follow_once(self) -> int:
        """Look up every due invoice once (within the pacing) and record what was learned;
        returns how many lookups were sent."""
        sent = 0
        for route in self.routes.values():
            due = await self._store.issuance_due(
                operations=[route.operation], now=self._clock.wall(), limit=ROUND_LIMIT
            )
            if not due:
                continue
            by_tenant: dict[str, list[Submission]] = defaultdict(list)
            for submission in due:
                by_tenant[submission.tenant].append(submission)
            for submissions in by_tenant.values():
                sent += await self._follow(route, submissions)
        return sent

    async def _follow(self, route: IssuanceRoute, submissions: list[Submission]) -> int:
        now = self._clock.wall()
        checks: list[IssuanceCheck] = []
        numbered: list[tuple[Submission, str]] = []
        for submission in submissions:
            number = route.number_of(submission)
            if number is None:
                checks.append(self._given_up(submission, None, now, "no number to look up by"))
            elif self._too_old(route, submission, now):
                checks.append(self._given_up(submission, number, now, "still not final"))
            else:
                numbered.append((submission, number))
        sent = 0
        batch = route.rule.batch
        for start in range(0, len(numbered), batch):
            chunk = numbered[start : start + batch]
            entries = await self._lookup(route, [number for _, number in chunk], chunk[0][0])
            sent += 1
            if entries is None:
                continue  # asked again next round; nothing learned
            now = self._clock.wall()
            for submission, number in chunk:
                checks.append(self._check(route, submission, number, entries.get(number), now))
        if checks:
            await self._record(route, checks)
        return sent

    async def _lookup(
        self, route: IssuanceRoute, numbers: list[str], first: Submission
    ) -> dict[str, dict[str, Any]] | None:
        """The entries the lookup listed, by number; None when the lookup failed."""
        await route.bucket.acquire()
        await self._bucket.acquire()
        request = route.request_for(numbers, tenant=first.tenant, request_id=first.request_id)
        outcome = await self._pipeline.execute(request, route.lookup, live=False)
        self.stats.lookups += 1
        verdict = outcome.verdict
        document: Any = MISSING
        if verdict.ok and verdict.response is not None:
            try:
                document = json.loads(verdict.response.body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                document = MISSING
        entries = route.rule.entries_pointer.resolve(document)
        if not isinstance(entries, list):
            self.stats.lookup_failures += 1
            log.warning(
                "issuance lookup failed; asked again later",
                operation=route.operation,
                lookup=route.lookup.name,
                numbers=len(numbers),
                failure=verdict.failure.value if verdict.failure else "no entry list",
                code=verdict.code,
            )
            return None
        found: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if isinstance(entry, dict):
                number = _text(entry, route.rule.entry_serial_pointer)
                if number is not None:
                    found[number] = entry
        return found

    def _check(
        self,
        route: IssuanceRoute,
        submission: Submission,
        number: str,
        entry: dict[str, Any] | None,
        now: float,
    ) -> IssuanceCheck:
        if entry is None:
            # Not listed (yet): the platform's lookup may lag its acceptance.
            issuance = Issuance(IssuanceOutcome.ISSUING, serial=number, checked_at=now)
            if submission.issuance is not None:
                issuance = replace(submission.issuance, checked_at=now)
        else:
            issuance = route.issuance_from(entry, number, now)
        final = issuance.outcome.final
        return IssuanceCheck(
            submission_id=submission.id,
            fence=submission.fence,
            issuance=issuance,
            next_check_at=None if final else now + route.rule.interval,
        )

    def _given_up(
        self, submission: Submission, number: str | None, now: float, why: str
    ) -> IssuanceCheck:
        last = submission.issuance
        issuance = Issuance(
            IssuanceOutcome.GIVEN_UP,
            status=last.status if last else None,
            serial=number,
            invoice_number=last.invoice_number if last else None,
            invoice_code=last.invoice_code if last else None,
            pdf_url=last.pdf_url if last else None,
            fail_cause=why,
            checked_at=last.checked_at if last else None,
        )
        return IssuanceCheck(submission.id, submission.fence, issuance, next_check_at=None)

    @staticmethod
    def _too_old(route: IssuanceRoute, submission: Submission, now: float) -> bool:
        delivered = submission.delivered_at or submission.updated_at
        return now - delivered >= route.rule.give_up_after

    async def _record(self, route: IssuanceRoute, checks: list[IssuanceCheck]) -> None:
        recorded = await self._store.record_issuance(checks, now=self._clock.wall())
        for row in recorded:
            issuance = row.issuance
            if issuance is None or not issuance.outcome.final:
                continue
            self.stats.final[(route.operation, issuance.outcome)] += 1
            fields = {
                "submission_id": row.id,
                "tenant": row.tenant,
                "operation": route.operation,
                "outcome": issuance.outcome.value,
                "status": issuance.status,
                "request_id": row.request_id,
            }
            if issuance.outcome.failed:
                log.error(
                    "the platform accepted the submission, then its issuance failed: on-call "
                    "must act (docs/runbook.md)",
                    fail_cause=issuance.fail_cause,
                    **fields,
                )
            elif issuance.outcome is IssuanceOutcome.GIVEN_UP:
                log.warning("issuance not final in time; no longer looked up", **fields)
            else:
                log.info("issuance final", **fields)


def _text(entry: Mapping[str, Any], pointer: JsonPointer | None) -> str | None:
    """The value at `pointer` in `entry` as text; None when absent or empty."""
    if pointer is None:
        return None
    found = pointer.resolve(dict(entry))
    if found is MISSING or found is None or found == "":
        return None
    return str(found)
