"""On-call actions against a real SQLite store: state rules, fences, audit trail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import ActionNotAllowed, BadRequest, NotFound
from gateway.jsonpointer import JsonPointer
from gateway.outbox.oncall import Actor, JobState, OnCall
from gateway.outbox.store.sqlite import SqliteStore
from gateway.outbox.submissions import (
    AuditEntry,
    NewSubmission,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
    fingerprint,
)
from tests.support.fakes import FakeClock

OPERATOR = Actor("alice", "operator")
S = SubmissionState


class Rig:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.clock = FakeClock()
        self.wakes = 0
        self.oncall = OnCall(
            store=store,
            clock=self.clock,
            wake_dispatcher=self._wake,
            protected_pointers={"issue": (JsonPointer("/order/orderNo"),)},
        )

    def _wake(self) -> None:
        self.wakes += 1

    async def submission(self, state: SubmissionState, key: str = "A-1") -> Submission:
        body = json.dumps({"order": {"orderNo": key, "buyerName": ""}}).encode()
        new = NewSubmission(
            tenant="demo",
            operation="issue",
            idempotency_key=key,
            fingerprint=fingerprint(body),
            business_key=key,
            ordering_key=None,
            method="POST",
            path="/open/v1/services",
            query=(),
            headers=(),
            body=body,
            request_id="r",
        )
        row = (
            await self.store.admit(
                new, queue=True, owner="x", lease_seconds=30, now=self.clock.wall()
            )
        ).submission
        if state is not S.QUEUED:
            moved = await self.store.transition(
                row.id, row.fence, Transition(state, attempts_delta=3), now=self.clock.wall()
            )
            assert moved is not None
            row = moved
        return row


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        yield Rig(store)
    finally:
        await store.close()


async def audit_actions(rig: Rig) -> list[tuple[str, str | None]]:
    entries, _ = await rig.store.audit_log(limit=100, cursor=None)
    return [(e.action, e.reason) for e in reversed(entries)]


async def test_replay_makes_a_dead_submission_due_with_a_fresh_start(rig: Rig) -> None:
    """Replaying a dead submission queues it now, counting attempts and age afresh."""
    dead = await rig.submission(S.DEAD)
    rig.clock.advance(100)
    replayed = await rig.oncall.replay(dead.id, OPERATOR, "platform fixed")
    assert (S.QUEUED, 0) == (replayed.state, replayed.attempts)
    assert rig.clock.wall() == replayed.next_attempt_at == replayed.age_from
    assert [("replay", "platform fixed")] == await audit_actions(rig)
    assert 1 == rig.wakes


async def test_an_audit_entry_names_the_tenant_of_the_submission(rig: Rig) -> None:
    """Whose invoice an operator acted on is in the audit log, not only its id."""
    dead = await rig.submission(S.DEAD)
    await rig.oncall.replay(dead.id, OPERATOR, "platform fixed")
    [entry], _ = await rig.store.audit_log(limit=10, cursor=None)
    assert dead.tenant == (entry.details or {})["tenant"]


async def test_replay_of_an_unknown_submission_stays_a_reconciliation(rig: Rig) -> None:
    """An unknown submission is made due but stays unknown: reconciled, never resent blindly."""
    unknown = await rig.submission(S.UNKNOWN)
    assert S.UNKNOWN == (await rig.oncall.replay(unknown.id, OPERATOR, None)).state


@pytest.mark.parametrize("state", [S.DELIVERED, S.DISCARDED])
async def test_replay_refuses_final_submissions(rig: Rig, state: SubmissionState) -> None:
    """Delivered or discarded submissions are not replayed (force-resend exists for the first)."""
    row = await rig.submission(state)
    with pytest.raises(ActionNotAllowed, match=state.value):
        await rig.oncall.replay(row.id, OPERATOR, None)
    assert [] == await audit_actions(rig)


async def test_requeue_is_only_for_dead(rig: Rig) -> None:
    """Requeue applies to dead submissions only."""
    queued = await rig.submission(S.QUEUED)
    with pytest.raises(ActionNotAllowed, match="only dead"):
        await rig.oncall.requeue(queued.id, OPERATOR, None)


async def test_discard_needs_a_reason(rig: Rig) -> None:
    """Discarding without a reason is refused; with one it is final and audited."""
    row = await rig.submission(S.QUEUED)
    with pytest.raises(BadRequest, match="reason is required"):
        await rig.oncall.discard(row.id, OPERATOR, "  ")
    discarded = await rig.oncall.discard(row.id, OPERATOR, "customer cancelled")
    assert S.DISCARDED == discarded.state
    assert [("discard", "customer cancelled")] == await audit_actions(rig)


async def test_force_resend_needs_confirmation(rig: Rig) -> None:
    """Resending a delivered submission may issue twice: refused unless confirmed."""
    delivered = await rig.submission(S.DELIVERED)
    with pytest.raises(BadRequest, match="second"):
        await rig.oncall.force_resend(delivered.id, OPERATOR, "platform lost it", confirm=False)
    resent = await rig.oncall.force_resend(delivered.id, OPERATOR, "platform lost it", confirm=True)
    assert (S.QUEUED, False) == (resent.state, resent.maybe_sent)


async def test_edit_records_before_and_after(rig: Rig) -> None:
    """An edit changes one field and the audit log shows the old and new values."""
    failed = await rig.submission(S.FAILED)
    edited = await rig.oncall.edit_payload(
        failed.id, OPERATOR, "/order/buyerName", "北京示例", "typo"
    )
    assert "北京示例" == json.loads(edited.body)["order"]["buyerName"]
    entries, _ = await rig.store.audit_log(limit=10, cursor=None)
    assert {"pointer": "/order/buyerName", "before": "", "after": "北京示例"}.items() <= (
        entries[0].details or {}
    ).items()


async def test_edit_refuses_the_business_key(rig: Rig) -> None:
    """The order number is the idempotency key: it cannot be edited."""
    failed = await rig.submission(S.FAILED)
    with pytest.raises(ActionNotAllowed, match="business or ordering key"):
        await rig.oncall.edit_payload(failed.id, OPERATOR, "/order/orderNo", "B-2", "typo")


async def test_stale_fence_is_refused(rig: Rig) -> None:
    """An action on a row that changed since it was read is refused, not applied blindly."""
    stale = await rig.submission(S.DEAD)
    await rig.oncall.discard(stale.id, OPERATOR, "someone else got there first")
    with pytest.raises(ActionNotAllowed, match="changed while you acted"):
        await rig.oncall._replay(stale, OPERATOR, None, action="replay")


async def test_unknown_id_is_not_found(rig: Rig) -> None:
    """Acting on an id that does not exist says so."""
    with pytest.raises(NotFound):
        await rig.oncall.replay("sub_does_not_exist", OPERATOR, None)


async def test_bulk_replay_job_progress_and_cancel(rig: Rig) -> None:
    """A bulk replay reports progress and stops when cancelled."""
    for i in range(450):
        await rig.submission(S.DEAD, key=f"K-{i}")
    query = SubmissionQuery(states=(S.DEAD,))
    assert 450 == await rig.oncall.count(query)
    job = await rig.oncall.start_replay_job(query, {"state": "dead"}, OPERATOR, "outage over")
    for _ in range(1000):  # bounded: the job advances in steps of 100
        if job.done >= 100:
            break
        await asyncio.sleep(0.005)
    rig.oncall.cancel_job(job.id)
    assert job._task is not None
    await job._task
    assert JobState.CANCELLED == job.state
    assert 100 <= job.done < 450
    assert job.done == await rig.store.count(SubmissionQuery(states=(S.QUEUED,)))


async def test_bulk_job_is_done_only_once_its_closing_audit_entry_is_written(rig: Rig) -> None:
    """Whoever sees a bulk job finished (the admin API, the CLI's progress) finds its closing
    audit entry: the job says done only after that entry is written."""
    await rig.submission(S.DEAD, key="K-1")
    writing_end, release = asyncio.Event(), asyncio.Event()
    record_audit = rig.store.record_audit

    async def slow_end(entry: AuditEntry) -> None:
        if entry.action.startswith("bulk-replay-") and entry.action != "bulk-replay-started":
            writing_end.set()
            await release.wait()
        await record_audit(entry)

    rig.store.record_audit = slow_end  # type: ignore[method-assign]
    job = await rig.oncall.start_replay_job(
        SubmissionQuery(states=(S.DEAD,)), {"state": "dead"}, OPERATOR, "outage over"
    )
    await asyncio.wait_for(writing_end.wait(), 5)
    assert (JobState.RUNNING, None) == (job.state, job.finished_at)
    release.set()
    assert job._task is not None
    await job._task
    assert JobState.DONE == job.state
    assert ("bulk-replay-done", "outage over") in await audit_actions(rig)


async def test_export_import_round_trip(rig: Rig, tmp_path: Path) -> None:
    """An export loads into an empty store with every field intact; not into a full one."""
    for i in range(5):
        await rig.submission(S.DEAD, key=f"K-{i}")
    lines = [line async for line in rig.oncall.export(SubmissionQuery())]
    other = await SqliteStore.open(tmp_path / "other.db")
    try:
        oncall = OnCall(
            store=other, clock=rig.clock, wake_dispatcher=lambda: None, protected_pointers={}
        )
        assert 5 == await oncall.import_lines(lines, OPERATOR)
        again = [line async for line in oncall.export(SubmissionQuery())]
        assert lines == again
        with pytest.raises(ActionNotAllowed, match="empty store"):
            await oncall.import_lines(lines, OPERATOR)
    finally:
        await other.close()


async def test_import_rejects_a_bad_line(rig: Rig) -> None:
    """A malformed import line is refused with its line number; nothing is imported."""
    with pytest.raises(BadRequest, match="line 2"):
        await rig.oncall.import_lines([b"", b'{"id": 1}'], OPERATOR)
    assert 0 == await rig.store.count(SubmissionQuery())
