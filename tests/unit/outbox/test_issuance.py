"""The issuance follower on the real SQLite store, a fake platform and a fake clock: batching,
pacing, giving up, and what a final status makes of the submission."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import (
    BreakerConfig,
    BusinessCodesConfig,
    OperationConfig,
    RetryBudgetConfig,
    RetryPolicyConfig,
)
from gateway.operations import OperationKind
from gateway.outbox.issuance import POLL_CAP, IssuanceFollower
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.submissions import (
    Issuance,
    IssuanceOutcome,
    StoredResponse,
    Submission,
    SubmissionState,
    Transition,
)
from gateway.resilience.breaker import BreakerRegistry
from gateway.resilience.failures import FailureClassifier
from gateway.resilience.pipeline import ResiliencePipeline
from gateway.resilience.ratelimit import TokenBucket
from gateway.resilience.retry import RetryBudget, RetryPolicy
from tests.support.fakes import FakeClock, HandlerUpstream, ManualClock, platform_answer
from tests.support.submissions import admit, new_submission
from tests.unit.outbox.test_dispatcher import StoreDown, until

SERVICES = "/open/v1/services"
INTERVAL = 5.0
GIVE_UP = 3600.0
QUERY = OperationConfig.model_validate(
    {
        "name": "query",
        "kind": "read",
        "match": {"method": "POST", "path": SERVICES, "headers": {"method": "query"}},
    }
)


def issue_operation(**rule: Any) -> OperationConfig:
    """The issue operation, followed by serial number as the default profile does."""
    return OperationConfig.model_validate(
        {
            "name": "issue",
            "kind": "submit",
            "match": {"method": "POST", "path": SERVICES, "headers": {"method": "issue"}},
            "business_key": "/order/orderNo",
            "issuance": {
                "lookup": "query",
                "by": "serialNos",
                "serial_pointer": "/result/invoiceSerialNum",
                "invoice_number_pointer": "/invoiceNo",
                "pdf_url_pointer": "/pdfUrl",
                "fail_cause_pointer": "/failCause",
                "interval": INTERVAL,
                "batch": 50,
                "rate_share": 0.5,
                "give_up_after": GIVE_UP,
                **rule,
            },
        }
    )


@dataclass
class Platform:
    """Answers lookups from `entries` (serial → entry); `busy` answers 040102 instead."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    busy: bool = False

    def __call__(self, request: Any) -> Any:
        if self.busy:
            return platform_answer({"code": "040102", "describe": "busy"})
        serials = json.loads(request.body)["serialNos"]
        found = [self.entries[s] for s in serials if s in self.entries]
        return platform_answer({"code": "E0000", "result": found})

    def set(self, serial: str, status: str, **facts: str) -> None:
        self.entries[serial] = {"serialNo": serial, "status": status, **facts}


@dataclass
class Rig:
    store: SqliteStore
    clock: FakeClock
    platform: Platform
    upstream: HandlerUpstream
    bucket: CountingBucket
    follower: IssuanceFollower

    async def delivered(
        self, order: str, serial: str | None = None, *, tenant: str = "demo"
    ) -> Submission:
        """A submission the platform accepted now, its answer carrying `serial`."""
        now = self.clock.wall()
        new = new_submission(order, tenant=tenant)
        admitted = (await admit(self.store, new, now=now)).submission
        result = {"invoiceSerialNum": serial} if serial is not None else {}
        answer = StoredResponse(200, (), json.dumps({"code": "E0000", "result": result}).encode())
        row = await self.store.transition(
            admitted.id, 0, Transition(SubmissionState.DELIVERED, response=answer), now=now
        )
        assert row is not None
        return row

    async def get(self, row: Submission) -> Submission:
        stored = await self.store.get(row.id)
        assert stored is not None
        return stored

    def lookups(self) -> list[list[str]]:
        """The serial numbers of each lookup sent, in order."""
        return [json.loads(r.body)["serialNos"] for r in self.upstream.sent("query")]


class CountingBucket(TokenBucket):
    """The dispatcher's bucket, counting the tokens taken from it."""

    taken = 0

    async def acquire(self) -> None:
        await super().acquire()
        self.taken += 1


Build = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Build]:
    """Builds rigs on a fresh SQLite file each; closes them afterwards."""
    built: list[Rig] = []

    async def build(*, rate: float = 1000.0, clock: FakeClock | None = None, **rule: Any) -> Rig:
        clock = clock or FakeClock()
        store = await SqliteStore.open(tmp_path / f"outbox-{len(built)}.db", synchronous="NORMAL")
        platform = Platform()
        upstream = HandlerUpstream(clock, platform)
        read = RetryPolicy.resolve(
            RetryPolicyConfig.model_validate(
                {
                    "deadline": 10.0,
                    "attempts": 1,
                    "backoff": {"base": 0.1, "cap": 0.5},
                    "retry_on": [],
                    "retry_after_cap": 1.0,
                }
            ),
            RetryPolicyConfig(),
        )
        breakers = BreakerRegistry(BreakerConfig(failure_threshold=1000, min_calls=10**6), clock)
        pipeline = ResiliencePipeline(
            upstream=upstream,
            classifier=FailureClassifier(BusinessCodesConfig(), clock),
            breakers=breakers,
            budget=RetryBudget(RetryBudgetConfig(ratio=1.0, min_retries=10**6), clock),
            policies={},
            kind_policies={kind: read for kind in OperationKind},
            attempt_timeout=3.0,
            clock=clock,
            rng=random.Random(1),
        )
        bucket = CountingBucket(rate, 100, clock)
        follower = IssuanceFollower(
            store=store,
            pipeline=pipeline,
            operations=[issue_operation(**rule), QUERY],
            bucket=bucket,
            clock=clock,
        )
        rig = Rig(store, clock, platform, upstream, bucket, follower)
        built.append(rig)
        return rig

    yield build
    for rig in built:
        await rig.follower.stop()
        await rig.store.close()


async def test_a_store_outage_is_logged_when_it_starts_and_when_it_ends(
    make: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the background, the store refusing every round for ten rounds: one warning naming the
    error when it starts, one note with how long it was down once it answers; no traceback, no
    error per round. Then the invoice is followed as before."""
    clock = ManualClock()
    rig = await make(clock=clock)
    row = await rig.delivered("ORD-1", "S-1")
    rig.platform.set("S-1", "2", invoiceNo="1")
    store = StoreDown(rig.store, ["issuance_due"], monkeypatch)
    with capture_logs() as logs:
        rig.follower.start()
        for rounds in range(1, 11):
            await until(lambda rounds=rounds: store.refused >= rounds)
            clock.advance(POLL_CAP)
        store.down = False

        async def done() -> bool:
            issuance = (await rig.get(row)).issuance
            return issuance is not None and issuance.outcome is IssuanceOutcome.DONE

        await until(done)
    down, back = [entry for entry in logs if "outbox store" in entry["event"]]
    assert ("warning", "issuance-follower", "cannot issuance_due: connection refused") == (
        down["log_level"],
        down["task"],
        down["error"],
    )
    assert ("info", "issuance-follower", 10 * POLL_CAP) == (
        back["log_level"],
        back["task"],
        back["down_s"],
    )
    assert [] == [e for e in logs if e["log_level"] == "error" or "exc_info" in e]


async def test_due_invoices_are_looked_up_in_batches(make: Build) -> None:
    """120 accepted invoices, batch 50: three lookups of 50, 50 and 20 serial numbers."""
    rig = await make()
    for n in range(120):
        await rig.delivered(f"ORD-{n}", f"S-{n}")
    assert 3 == await rig.follower.follow_once()
    assert [50, 50, 20] == [len(serials) for serials in rig.lookups()]
    assert [f"S-{n}" for n in range(120)] == [s for batch in rig.lookups() for s in batch]


async def test_each_lookup_is_one_tenants_and_signed_for_it(make: Build) -> None:
    """Invoices of two tenants: one lookup each, sent for that tenant (its own identity)."""
    rig = await make()
    await rig.delivered("ORD-1", "S-1", tenant="demo")
    await rig.delivered("ORD-2", "S-2", tenant="acme")
    await rig.delivered("ORD-3", "S-3", tenant="demo")
    assert 2 == await rig.follower.follow_once()
    sent = {r.tenant: json.loads(r.body)["serialNos"] for r in rig.upstream.sent("query")}
    assert {"demo": ["S-1", "S-3"], "acme": ["S-2"]} == sent


async def test_lookups_are_paced_by_their_share_of_the_dispatchers_rate(make: Build) -> None:
    """rate 2/s, share 0.5: one lookup a second; each also takes a token of the dispatcher's."""
    rig = await make(rate=2.0, batch=1)
    for n in range(4):
        await rig.delivered(f"ORD-{n}", f"S-{n}")
    assert 4 == await rig.follower.follow_once()
    gaps = [b - a for a, b in zip(rig.upstream.sent_at, rig.upstream.sent_at[1:], strict=False)]
    assert [1.0, 1.0, 1.0] == [round(gap, 6) for gap in gaps]
    assert 4 == rig.bucket.taken


async def test_issuing_is_looked_up_again_only_after_the_interval(make: Build) -> None:
    """Still issuing (20): recorded, and not asked about again before `interval` has passed."""
    rig = await make()
    row = await rig.delivered("ORD-1", "S-1")
    rig.platform.set("S-1", "20")
    assert 1 == await rig.follower.follow_once()
    assert 0 == await rig.follower.follow_once()
    rig.clock.advance(INTERVAL)
    assert 1 == await rig.follower.follow_once()
    stored = await rig.get(row)
    assert stored.issuance is not None
    assert (SubmissionState.DELIVERED, IssuanceOutcome.ISSUING, "20") == (
        stored.state,
        stored.issuance.outcome,
        stored.issuance.status,
    )


async def test_failed_issuance_turns_the_submission_issue_failed(make: Build) -> None:
    """Status 22 after acceptance: issue_failed with the platform's cause, counted as failed."""
    rig = await make()
    row = await rig.delivered("ORD-1", "S-1")
    rig.platform.set("S-1", "22", failCause="购方税号校验失败")
    await rig.follower.follow_once()
    stored = await rig.get(row)
    expected = Issuance(
        IssuanceOutcome.FAILED,
        status="22",
        serial="S-1",
        fail_cause="购方税号校验失败",
        checked_at=rig.clock.wall(),
    )
    assert (SubmissionState.ISSUE_FAILED, expected) == (stored.state, stored.issuance)
    assert "issuance_failed" == stored.last_error_class
    assert 1 == rig.follower.stats.final[("issue", IssuanceOutcome.FAILED)]
    rig.clock.advance(INTERVAL)
    assert 0 == await rig.follower.follow_once()


async def test_signing_failed_turns_the_submission_issue_failed(make: Build) -> None:
    """Status 24 (issued, signing failed) is a failure after acceptance too."""
    rig = await make()
    row = await rig.delivered("ORD-1", "S-1")
    rig.platform.set("S-1", "24", failCause="签章失败")
    await rig.follower.follow_once()
    stored = await rig.get(row)
    assert (SubmissionState.ISSUE_FAILED, "issuance_signing_failed") == (
        stored.state,
        stored.last_error_class,
    )


async def test_done_records_the_invoice_number_and_stays_delivered(make: Build) -> None:
    """Status 2: delivered, with its invoice number and PDF; never looked up again."""
    rig = await make()
    row = await rig.delivered("ORD-1", "S-1")
    rig.platform.set("S-1", "2", invoiceNo="24310000000000000001", pdfUrl="https://x/1.pdf")
    await rig.follower.follow_once()
    stored = await rig.get(row)
    assert stored.issuance is not None
    assert (
        SubmissionState.DELIVERED,
        IssuanceOutcome.DONE,
        "24310000000000000001",
        "https://x/1.pdf",
    ) == (
        stored.state,
        stored.issuance.outcome,
        stored.issuance.invoice_number,
        stored.issuance.pdf_url,
    )
    assert "24310000000000000001" == stored.public_view()["issuance"]["invoice_number"]
    rig.clock.advance(INTERVAL)
    assert 0 == await rig.follower.follow_once()


async def test_not_listed_yet_is_still_issuing(make: Build) -> None:
    """An invoice the lookup does not list yet (lag) is issuing, and looked up again later."""
    rig = await make()
    row = await rig.delivered("ORD-1", "S-1")
    await rig.follower.follow_once()
    stored = await rig.get(row)
    assert stored.issuance is not None
    assert (IssuanceOutcome.ISSUING, None) == (stored.issuance.outcome, stored.issuance.status)
    rig.clock.advance(INTERVAL)
    rig.platform.set("S-1", "2", invoiceNo="1")
    await rig.follower.follow_once()
    assert IssuanceOutcome.DONE == (await rig.get(row)).issuance.outcome  # type: ignore[union-attr]


async def test_a_failed_lookup_records_nothing_and_asks_again(make: Build) -> None:
    """The platform busy: nothing recorded, the invoice is looked up in the next round."""
    rig = await make()
    row = await rig.delivered("ORD-1", "S-1")
    rig.platform.busy = True
    assert 1 == await rig.follower.follow_once()
    assert None is (await rig.get(row)).issuance
    assert 1 == rig.follower.stats.lookup_failures
    rig.platform.busy = False
    rig.platform.set("S-1", "2", invoiceNo="1")
    assert 1 == await rig.follower.follow_once()
    assert IssuanceOutcome.DONE == (await rig.get(row)).issuance.outcome  # type: ignore[union-attr]


async def test_gives_up_after_give_up_after(make: Build) -> None:
    """Not final `give_up_after` after delivery: given up without another lookup."""
    rig = await make()
    row = await rig.delivered("ORD-1", "S-1")
    rig.platform.set("S-1", "20")
    await rig.follower.follow_once()
    rig.clock.advance(GIVE_UP)
    assert 0 == await rig.follower.follow_once()
    stored = await rig.get(row)
    assert stored.issuance is not None
    assert (SubmissionState.DELIVERED, IssuanceOutcome.GIVEN_UP, "20") == (
        stored.state,
        stored.issuance.outcome,
        stored.issuance.status,
    )
    assert 1 == len(rig.lookups())
    assert 1 == rig.follower.stats.final[("issue", IssuanceOutcome.GIVEN_UP)]


async def test_an_answer_without_a_serial_is_not_followed(make: Build) -> None:
    """No serial number in the platform's answer: nothing to look up by, given up at once."""
    rig = await make()
    row = await rig.delivered("ORD-1", None)
    assert 0 == await rig.follower.follow_once()
    stored = await rig.get(row)
    assert stored.issuance is not None
    assert IssuanceOutcome.GIVEN_UP == stored.issuance.outcome


async def test_by_business_key_when_no_serial_pointer(make: Build) -> None:
    """Without `serial_pointer` the business key is the number (e.g. `by: orderNos`)."""
    rig = await make(serial_pointer=None, entry_serial_pointer="/serialNo")
    row = await rig.delivered("ORD-1")
    rig.platform.set("ORD-1", "2", invoiceNo="7")
    await rig.follower.follow_once()
    assert [["ORD-1"]] == rig.lookups()
    assert "7" == (await rig.get(row)).issuance.invoice_number  # type: ignore[union-attr]
