"""`copy_store` and `verify` (`invoice-gateway store copy`): from a real SQLite file into a real
store of every implementation (`tests.contract.factories.FACTORIES`: SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.outbox.store import Store, StoredToken, open_store
from gateway.outbox.store.copy import CopyError, CopyReport, Progress, copy_store, verify
from gateway.outbox.submissions import AuditEntry, SubmissionState, Transition
from tests.contract.factories import FACTORIES, Database, StoreFactory
from tests.contract.test_store_contract_export import exported, varied_rows
from tests.support.submissions import NOW, admit, new_submission, queued

SOURCE_NAME = "sqlite:///source.db"


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[Store]:
    """The embedded store a gateway ran on: a real SQLite file."""
    store = await open_store(f"sqlite:///{tmp_path / 'source.db'}")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=sorted(FACTORIES))
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store of each implementation to copy into."""
    factory: Callable[[Path], StoreFactory] = FACTORIES[request.param]
    database = Database(factory(tmp_path / "target"))
    try:
        yield await database.open()
    finally:
        await database.drop()


async def audit_entries(store: Store) -> list[AuditEntry]:
    """The whole audit log, oldest first."""
    entries: list[AuditEntry] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.audit_log(limit=100, cursor=cursor)
        entries += page
        if cursor is None:
            return entries[::-1]


async def populate(store: Store) -> None:
    """Submissions queued, delivering, unknown, dead and delivered with a response; five audit
    entries; two tokens."""
    await varied_rows(store)
    for index in range(5):
        await store.record_audit(
            AuditEntry(
                actor="alice",
                role="operator",
                action=f"action-{index}",
                submission_ids=(f"sub_{index}",),
                reason="because" if index % 2 else None,
                details={"n": index, "text": "中文"},
                at=NOW + index,
            )
        )
    await store.save_token("nuonuo:app", StoredToken("token-1", NOW, 86400.0))
    await store.save_token("nuonuo:app:acme", StoredToken("token-2", NOW + 5, 3600.0))


async def copy(
    source: Store, target: Store, *, batch: int = 500, progress: Progress | None = None
) -> CopyReport:
    return await copy_store(
        source, target, source_name=SOURCE_NAME, actor="ops", batch=batch, progress=progress
    )


# -- failures first -----------------------------------------------------------------------------


async def test_a_target_holding_another_submission_under_a_key_is_refused(
    source: Store, target: Store
) -> None:
    """The target holds a different submission (another id) with a source row's idempotency key:
    `CopyError` naming the row and the key; rows before it stay copied, none is recorded as a
    finished copy."""
    first = await queued(source, "A-0")
    clashing = await queued(source, "A-1")
    await admit(target, new_submission("A-1"), queue=True)
    with pytest.raises(CopyError) as failure:
        await copy(source, target, batch=10)
    message = str(failure.value)
    assert clashing.id in message
    assert "idempotency key 'A-1'" in message
    assert "copy into an empty store" in message
    assert first == await target.get(first.id)
    assert None is await target.get(clashing.id)
    assert "store.copy" not in [entry.action for entry in await audit_entries(target)]


async def test_verify_names_what_the_target_lacks_and_what_differs(
    source: Store, target: Store
) -> None:
    """Two stores that differ: a source row missing in the target, one in another state."""
    rows = [await queued(source, f"A-{index}", now=NOW + index) for index in range(4)]
    lost, moved = rows[1], rows[2]
    await target.merge_rows([row for row in rows if row is not lost])
    gone = Transition(SubmissionState.DEAD, error_class="http_5xx", error="gave up")
    assert await source.transition(moved.id, moved.fence, gone, now=NOW + 10)

    verification = await verify(source, target, batch=1)  # the first batch lines up

    assert not verification.ok
    assert (4, (lost.id,), 1) == (
        verification.checked,
        verification.missing,
        verification.missing_count,
    )
    assert ((moved.id, "dead", "queued"),) == verification.differing
    assert {"dead": 1, "queued": 3} == verification.source_states
    assert {"missing": 1, "queued": 3} == verification.target_states
    description = verification.describe()
    assert f"the target lacks 1 of 4 source submissions ({lost.id})" in description
    assert f"{moved.id}: source dead, target queued" in description


async def test_a_row_changed_in_the_source_since_the_last_run_fails_verification(
    source: Store, target: Store
) -> None:
    """The gateway ran on the source again between two runs: the row the target holds is not
    copied again (a copy only adds), so the verification says it differs, and the second run
    records no `store.copy` entry."""
    row = await queued(source, "A-1")
    assert (await copy(source, target)).verification.ok
    delivered = Transition(SubmissionState.DELIVERED, attempts_delta=1)
    assert await source.transition(row.id, row.fence, delivered, now=NOW + 1)

    again = await copy(source, target)

    assert not again.verification.ok
    assert ((row.id, "delivered", "queued"),) == again.verification.differing
    assert again.verification.describe() == again.as_json()["problems"]
    assert 1 == [entry.action for entry in await audit_entries(target)].count("store.copy")


async def test_an_interrupted_copy_is_finished_by_a_second_run(
    source: Store, target: Store
) -> None:
    """A copy stopped after its first batch leaves that batch; the next run copies the rest and
    counts the first batch as already there."""
    rows = [await queued(source, f"A-{index}", now=NOW + index) for index in range(7)]

    def stop_after_first_batch(phase: str, done: int, total: int) -> None:
        assert (phase, total) == ("submissions", 7)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await copy(source, target, batch=3, progress=stop_after_first_batch)
    assert rows[:3] == await exported(target)

    report = await copy(source, target, batch=3)

    assert (7, 4, 3) == (report.submissions, report.copied, report.already_present)
    assert report.verification.ok
    assert rows == await exported(target)


# -- a whole copy -------------------------------------------------------------------------------


async def test_a_copy_holds_every_row_audit_entry_and_token(source: Store, target: Store) -> None:
    """Row for row equal (`get` of every id), the audit log oldest first with its numbers and
    times, the tokens; one `store.copy` entry recorded last; a second run copies nothing."""
    await populate(source)
    rows = await exported(source)
    seen: list[tuple[str, int, int]] = []

    report = await copy(source, target, batch=2, progress=lambda *step: seen.append(step))

    for row in rows:
        assert row == await target.get(row.id)
    assert rows == await exported(target)
    source_log = await audit_entries(source)
    *copied_log, entry = await audit_entries(target)
    assert source_log == copied_log
    assert ("ops", "operator", "store.copy") == (entry.actor, entry.role, entry.action)
    assert entry.seq > source_log[-1].seq
    assert {
        "source": SOURCE_NAME,
        "submissions": 6,
        "copied": 6,
        "already_present": 0,
        "by_state": {"dead": 1, "delivered": 1, "delivering": 2, "queued": 1, "unknown": 1},
        "audit_entries": 5,
        "audit_copied": 5,
        "tokens": 2,
    } == entry.details
    assert await source.token_rows() == await target.token_rows()
    assert report.verification.ok
    assert ("submissions", 2, 6) == seen[0]
    assert ("audit", 5, 5) == [step for step in seen if step[0] == "audit"][-1]
    assert ("verify", 6, 6) == seen[-1]

    again = await copy(source, target)
    assert (0, 6, 0) == (again.copied, again.already_present, again.audit_copied)
    assert again.verification.ok


async def test_a_copy_of_an_empty_store_copies_nothing_and_verifies(
    source: Store, target: Store
) -> None:
    report = await copy(source, target)
    assert ({}, 0, 0, 0) == (report.by_state, report.copied, report.audit_entries, report.tokens)
    assert report.verification.ok
    assert ["store.copy"] == [entry.action for entry in await audit_entries(target)]
