"""What only the PostgreSQL store's `reseal` can show: it reads a batch outside its write
transaction, so a gateway may write a row in between; the compare-and-set then leaves that row
as the gateway wrote it (counted as changed) rather than overwriting it with what was read.
(SQLite reads and writes in one `BEGIN IMMEDIATE` transaction: nothing comes in between.)"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gateway.outbox.store import open_store
from gateway.outbox.store import postgres as postgres_store
from gateway.outbox.store.sealing import KEY_ENV, PREVIOUS_KEYS_ENV, Sealer, key_id, new_key
from gateway.outbox.submissions import SubmissionState, Transition
from tests.support.postgres import scratch_database, server_url
from tests.support.submissions import NOW, admit, new_submission

OLD, NEW = new_key(), new_key()


@pytest.fixture(scope="module")
def server() -> str:
    return server_url()


@pytest.fixture
async def url(server: str) -> AsyncIterator[str]:
    async with scratch_database("reseal") as created:
        yield created


async def test_a_row_written_between_read_and_write_is_left_as_written(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    laggard = await open_store(url, environ={KEY_ENV: OLD, PREVIOUS_KEYS_ENV: NEW})
    store = await open_store(url, environ={KEY_ENV: NEW, PREVIOUS_KEYS_ENV: OLD})
    try:
        row = (await admit(laggard, new_submission("A-1"), queue=True, now=NOW)).submission
        original = postgres_store.resealed
        written: list[Any] = []

        def write_meanwhile(sealer: Sealer, values: Sequence[Any]) -> tuple[Any, ...] | None:
            if not written:  # the gateway's write lands after the read, before the CAS
                written.append(_transition_sync(url, row.id))
            return original(sealer, values)

        monkeypatch.setattr(postgres_store, "resealed", write_meanwhile)
        batch = await store.reseal(after=None, limit=10)
        assert (batch.checked, batch.resealed, batch.changed) == (1, 0, 1)
        after = await store.get(row.id)
        assert after is not None
        assert after.result == {"meanwhile": True}
        assert after.state is SubmissionState.DEAD
        monkeypatch.undo()
        again = await store.reseal(after=None, limit=10)
        assert (again.resealed, again.changed) == (1, 0)
        assert await store.key_usage() == {key_id(base64.b64decode(NEW)): 2}
    finally:
        await store.close()
        await laggard.close()


def _transition_sync(url: str, submission_id: str) -> bool:
    """A write of another process (under the old key), done while `reseal` runs."""

    def work() -> None:
        async def go() -> None:
            gateway = await open_store(url, environ={KEY_ENV: OLD, PREVIOUS_KEYS_ENV: NEW})
            try:
                row = await gateway.get(submission_id)
                assert row is not None
                moved = await gateway.transition(
                    row.id,
                    row.fence,
                    Transition(SubmissionState.DEAD, result={"meanwhile": True}),
                    now=NOW + 1,
                )
                assert moved is not None
            finally:
                await gateway.close()

        asyncio.run(go())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    return True
