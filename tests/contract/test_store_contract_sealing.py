"""Encryption at rest (docs/encryption.md): what a store with a key writes never shows the
invoice data in the database's bytes, reads back exactly, keeps plaintext rows readable, refuses
to open on rows it has no key for, and re-seals under a new key (`key_usage`, `reseal`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

import pytest

from gateway.errors import StoreError
from gateway.outbox.store import Store
from gateway.outbox.store.sealing import KEY_ENV, PREVIOUS_KEYS_ENV, SealingError, key_id, new_key
from gateway.outbox.submissions import (
    AuditEntry,
    Issuance,
    IssuanceCheck,
    IssuanceOutcome,
    StoredResponse,
    Submission,
    SubmissionQuery,
    SubmissionState,
    Transition,
)
from tests.contract.factories import Database
from tests.support.submissions import NOW, admit, new_submission

#: What the buyer's part of a body holds, and what must never be in the database's bytes.
TAX_NUMBER = "91330106MA2GLZ7Q8X"
PHONE = "13912345678"
INVOICE_NUMBER = "24332000000123456789"
OLD, NEW = new_key(), new_key()


def keys(current: str, *previous: str) -> Mapping[str, str]:
    environ = {KEY_ENV: current}
    if previous:
        environ[PREVIOUS_KEYS_ENV] = ",".join(previous)
    return environ


def kid(key: str) -> str:
    return key_id(base64.b64decode(key))


def secret_body(order: str) -> bytes:
    return json.dumps(
        {"order": {"orderNo": order, "buyerTaxNum": TAX_NUMBER, "buyerPhone": PHONE}}
    ).encode()


async def delivered(store: Store, order: str, *, now: float = NOW) -> Submission:
    """A submission with the buyer's data in its body, delivered with an answer and a result
    naming the invoice, and its issuance recorded."""
    new = new_submission(order, body=secret_body(order))
    row = (await admit(store, new, now=now)).submission
    answer = json.dumps({"code": "E0000", "result": {"invoiceSerialNum": order, "phone": PHONE}})
    moved = await store.transition(
        row.id,
        row.fence,
        Transition(
            SubmissionState.DELIVERED,
            response=StoredResponse(200, (("Content-Type", "application/json"),), answer.encode()),
            result={"invoiceSerialNum": order, "buyerTaxNum": TAX_NUMBER},
        ),
        now=now,
    )
    assert moved is not None
    issuance = Issuance(
        IssuanceOutcome.DONE, status="2", serial=order, invoice_number=INVOICE_NUMBER
    )
    [recorded] = await store.record_issuance(
        [IssuanceCheck(moved.id, moved.fence, issuance, next_check_at=None)], now=now
    )
    return recorded


def assert_no_secrets(raw: bytes) -> None:
    for secret in (TAX_NUMBER, PHONE, INVOICE_NUMBER):
        assert secret.encode() not in raw, f"{secret} is in the database's bytes"


async def everything(store: Store) -> list[Submission]:
    return [row async for row in store.stream(SubmissionQuery())]


async def reseal_all(store: Store, *, limit: int = 2) -> tuple[int, int, int]:
    """`reseal` batch after batch to the end: (checked, resealed, changed)."""
    checked = resealed = changed = 0
    cursor: str | None = None
    while True:
        batch = await store.reseal(after=cursor, limit=limit)
        checked += batch.checked
        resealed += batch.resealed
        changed += batch.changed
        if batch.cursor is None:
            return checked, resealed, changed
        cursor = batch.cursor


async def test_sealed_rows_read_back_exactly_and_hide_the_buyer(database: Database) -> None:
    """Body, answer, result and issuance read back as written; the database's bytes hold none
    of the buyer's tax number, phone or the invoice number; the outbox's own columns stay
    queryable (business key search, states)."""
    store = await database.open(keys(NEW))
    row = await delivered(store, "ORD-1")
    assert row.body == secret_body("ORD-1")
    assert row.result == {"invoiceSerialNum": "ORD-1", "buyerTaxNum": TAX_NUMBER}
    assert row.issuance is not None
    assert row.issuance.invoice_number == INVOICE_NUMBER
    assert row == await store.get(row.id)
    page = await store.query(SubmissionQuery(text="ORD-1"), limit=10, cursor=None)
    assert [item.id for item in page.items] == [row.id]
    assert await store.key_usage() == {kid(NEW): 4}
    reopened = await database.reopen(store, keys(NEW))
    assert row == await reopened.get(row.id)
    await database.close(reopened)
    assert_no_secrets(await database.raw())


async def test_without_a_key_nothing_is_sealed(database: Database) -> None:
    store = await database.open()
    row = await delivered(store, "ORD-1")
    assert await store.key_usage() == {}
    assert row == await store.get(row.id)
    assert TAX_NUMBER.encode() in await database.raw()


async def test_plaintext_rows_stay_readable_once_a_key_is_set(database: Database) -> None:
    """Turning encryption on: older rows read as they are, new writes are sealed."""
    store = await database.open()
    old = await delivered(store, "ORD-1")
    store = await database.reopen(store, keys(NEW))
    assert old == await store.get(old.id)
    new = await delivered(store, "ORD-2", now=NOW + 1)
    assert [old, new] == await everything(store)
    assert await store.key_usage() == {kid(NEW): 4}


async def test_a_store_with_sealed_rows_and_no_key_refuses_to_open(database: Database) -> None:
    store = await database.open(keys(OLD))
    await delivered(store, "ORD-1")
    await database.close(store)
    with pytest.raises(StoreError, match=f"{kid(OLD)}.*{KEY_ENV}"):
        await database.open()
    with pytest.raises(StoreError, match=kid(OLD)):
        await database.open(keys(NEW))
    with pytest.raises(StoreError, match=KEY_ENV):
        await database.open({KEY_ENV: "not a key"})
    with pytest.raises(StoreError, match="16 bytes"):
        await database.open({KEY_ENV: new_key()[:22] + "=="})
    assert (await database.open(keys(NEW, OLD))) is not None


async def test_a_value_moved_to_another_row_does_not_open(database: Database) -> None:
    """Each sealed value is bound to its row: copying one row's body over another's (with
    write access to the database) makes that row unreadable, not someone else's."""
    store = await database.open(keys(NEW))
    first = await delivered(store, "ORD-1")
    second = await delivered(store, "ORD-2", now=NOW + 1)
    await database.close(store)
    await _copy_body(database, source=first.id, target=second.id)
    store = await database.open(keys(NEW))
    assert first == await store.get(first.id)
    with pytest.raises(SealingError, match="altered or moved"):
        await store.get(second.id)


async def test_rotation_reseals_every_row_under_the_new_key(database: Database) -> None:
    """With a new current key and the old one as previous, old rows read as before; `reseal`
    moves every row (and plaintext ones) under the new key in batches, after which the old key
    can go."""
    store = await database.open()
    plain = await delivered(store, "ORD-0")
    store = await database.reopen(store, keys(OLD))
    rows = [plain] + [await delivered(store, f"ORD-{n}", now=NOW + n) for n in (1, 2, 3)]
    assert await store.key_usage() == {kid(OLD): 12}
    store = await database.reopen(store, keys(NEW, OLD))
    assert rows == await everything(store)
    assert await reseal_all(store) == (4, 4, 0)
    assert await store.key_usage() == {kid(NEW): 16}
    assert await reseal_all(store) == (4, 0, 0), "a second pass finds nothing to do"
    store = await database.reopen(store, keys(NEW))
    assert rows == await everything(store)
    await database.close(store)
    assert_no_secrets(await database.raw())


async def test_rotation_goes_on_where_it_stopped(database: Database) -> None:
    store = await database.open(keys(OLD))
    rows = [await delivered(store, f"ORD-{n}", now=NOW + n) for n in range(3)]
    store = await database.reopen(store, keys(NEW, OLD))
    first = await store.reseal(after=None, limit=2)
    assert (first.checked, first.resealed, first.changed) == (2, 2, 0)
    assert first.cursor is not None
    assert await store.key_usage() == {kid(NEW): 8, kid(OLD): 4}
    store = await database.reopen(store, keys(NEW, OLD))
    rest = await store.reseal(after=first.cursor, limit=2)
    assert (rest.checked, rest.resealed, rest.cursor) == (1, 1, None)
    assert await store.key_usage() == {kid(NEW): 12}
    assert rows == await everything(store)


async def test_resealing_without_a_current_key_decrypts(database: Database) -> None:
    """Turning encryption off: with the old key only as previous, `reseal` stores plaintext."""
    store = await database.open(keys(OLD))
    row = await delivered(store, "ORD-1")
    store = await database.reopen(store, {PREVIOUS_KEYS_ENV: OLD})
    assert await reseal_all(store) == (1, 1, 0)
    assert await store.key_usage() == {}
    store = await database.reopen(store)
    assert row == await store.get(row.id)


async def test_rows_a_gateway_still_seals_under_the_old_key_are_picked_up_again(
    database: Database,
) -> None:
    """A gateway not yet restarted with the new key keeps sealing under the old one (and reads
    what the new key sealed, once configured as its previous key); a later pass re-seals what
    it wrote meanwhile."""
    store = await database.open(keys(NEW, OLD))
    laggard = await database.open(keys(OLD, NEW))
    row = await delivered(laggard, "ORD-1")
    assert await reseal_all(store) == (1, 1, 0)
    moved = await laggard.transition(
        row.id,
        row.fence,
        Transition(SubmissionState.DELIVERED, result={"again": TAX_NUMBER}),
        now=NOW + 1,
    )
    assert moved is not None
    # A redelivery clears the issuance; the new result is sealed under the old key.
    assert await store.key_usage() == {kid(NEW): 2, kid(OLD): 1}
    assert await reseal_all(store) == (1, 1, 0)
    assert await store.key_usage() == {kid(NEW): 3}
    assert moved == await store.get(row.id)


async def test_export_and_import_carry_plaintext_rows_into_the_targets_sealing(
    database: Database, empty_store: Store
) -> None:
    """Rows go through `stream` opened and are sealed by the store they are merged into (here
    one without a key: plaintext), so `store copy` needs the source's keys only."""
    store = await database.open(keys(NEW))
    rows = [await delivered(store, "ORD-1"), await delivered(store, "ORD-2", now=NOW + 1)]
    await empty_store.import_rows(
        rows, audit=AuditEntry(actor="alice", role="operator", action="import")
    )
    assert rows == await everything(empty_store)
    assert await empty_store.key_usage() == {}


# -- helpers ---------------------------------------------------------------------------------


async def _copy_body(database: Database, *, source: str, target: str) -> None:
    """Overwrite `target`'s stored body with `source`'s, as raw bytes."""
    await database.raw_execute(
        "UPDATE submission SET body = (SELECT body FROM submission WHERE id = {0}) WHERE id = {1}",
        source,
        target,
    )
