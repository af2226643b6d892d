"""How gateways sharing a database coordinate through the store: `exclusive` locks, the
database's clock, and announcements (`announce` / `on_announcement`).

A single-node store has one process by definition: its locks are taken by tasks of that
process (through one store), and nobody else hears its announcements. Stores replicas share
are exercised through two stores on one database, as two gateways would use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from gateway.outbox.store import Store
from tests.contract.factories import Database

#: Longest any step here may take before the test fails (nothing waits this long when it works).
BOUND_S = 10.0
#: How long a blocked holder is watched not getting in.
STILL_WAITING_S = 0.3


def other_holder(store: Store, peer: Store) -> Store:
    """Who contends with `store` for a lock: another gateway on the database, or (single node,
    one process) another task of the same gateway."""
    return store if store.single_node else peer


async def hold_and_contend(
    holder: Store, contender: Store, *, held: str, wanted: str
) -> tuple[bool, list[str]]:
    """`holder` takes `held`; meanwhile `contender` asks for `wanted`. Returns whether the
    contender got in while the lock was still held, and the order things happened in."""
    order: list[str] = []
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with holder.exclusive(held):
            order.append("holder in")
            holding.set()
            await release.wait()
            order.append("holder out")

    async def contend() -> None:
        await holding.wait()
        async with contender.exclusive(wanted):
            order.append("contender in")

    holder_task = asyncio.create_task(hold())
    await asyncio.wait_for(holding.wait(), BOUND_S)
    contender_task = asyncio.create_task(contend())
    done, _ = await asyncio.wait({contender_task}, timeout=STILL_WAITING_S)
    got_in = contender_task in done
    release.set()
    await asyncio.wait_for(asyncio.gather(holder_task, contender_task), BOUND_S)
    return got_in, order


async def test_a_held_lock_makes_another_holder_wait(store: Store, peer: Store) -> None:
    """While one holds `exclusive(name)`, another asking for the same name waits until it is
    released, then gets it."""
    got_in, order = await hold_and_contend(
        store, other_holder(store, peer), held="token:app", wanted="token:app"
    )
    assert (False, ["holder in", "holder out", "contender in"]) == (got_in, order)


async def test_another_name_does_not_wait(store: Store, peer: Store) -> None:
    """Locks of different names are independent."""
    got_in, order = await hold_and_contend(
        store, other_holder(store, peer), held="token:app", wanted="token:other"
    )
    assert (True, ["holder in", "contender in", "holder out"]) == (got_in, order)


async def test_the_blocks_own_error_passes_and_frees_the_lock(store: Store, peer: Store) -> None:
    """An error raised inside the block reaches the caller as it was (it is not the store's),
    and the lock is free again."""
    with pytest.raises(OSError, match="the token endpoint is down"):
        async with store.exclusive("token:app"):
            raise OSError("the token endpoint is down")
    contender = other_holder(store, peer)

    async def take() -> bool:
        async with contender.exclusive("token:app"):
            return True

    assert await asyncio.wait_for(take(), BOUND_S)


async def test_the_database_clock_is_the_wall_clock(store: Store) -> None:
    """A shared database gives its clock (UTC unix seconds, near this host's here); the
    embedded store has none (its host's clock serves)."""
    before = time.time()
    database_time = await store.database_time()
    if store.single_node:
        assert database_time is None
    else:
        assert database_time is not None
        assert before - 5 <= database_time <= time.time() + 5


async def test_announcing_never_raises(database: Database, store: Store) -> None:
    """Announcing is best effort: it returns quietly, even on a closed store."""
    await store.announce()
    await database.close(store)
    await store.announce()


async def keep_announcing(store: Store, heard: asyncio.Event) -> None:
    """Announce until `heard` (a listener may still be connecting when the first goes out)."""

    async def announce_until_heard() -> None:
        while not heard.is_set():
            await store.announce()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.wait(), 0.2)

    await asyncio.wait_for(announce_until_heard(), BOUND_S)


async def listening(heard: asyncio.Event) -> None:
    """Wait for the call a store makes once it starts listening (for what was announced
    before), then clear it: what is heard next was announced."""
    await asyncio.wait_for(heard.wait(), BOUND_S)
    heard.clear()


async def test_a_store_starting_to_listen_calls_back_once_unasked(store: Store) -> None:
    """A replica serves before its LISTEN connection is up: announcements made meanwhile are
    lost, so the store calls back once when it starts listening, without any announcement."""
    if store.single_node:
        return  # never called back at all
    calls: list[int] = []
    heard = asyncio.Event()

    def called() -> None:
        calls.append(1)
        heard.set()

    store.on_announcement(called)
    await asyncio.wait_for(heard.wait(), BOUND_S)
    assert [1] == calls


async def test_another_gateway_hears_an_announcement(store: Store, peer: Store) -> None:
    """What one gateway announces reaches the others' callbacks; a single-node store has no
    one to tell, and calls nobody."""
    heard = asyncio.Event()
    peer.on_announcement(heard.set)
    if store.single_node:
        await store.announce()
        assert not heard.is_set()
        return
    await listening(heard)
    await keep_announcing(store, heard)
    assert heard.is_set()


async def test_a_gateway_hears_its_own_announcement(store: Store) -> None:
    """Every process on the database hears an announcement, the announcer included."""
    if store.single_node:
        return  # it wakes its own dispatcher without the store
    heard = asyncio.Event()
    store.on_announcement(heard.set)
    await listening(heard)
    await keep_announcing(store, heard)
    assert heard.is_set()


async def test_a_later_callback_replaces_the_earlier_one(store: Store, peer: Store) -> None:
    """One callback per store: after a second `on_announcement`, only the second is called."""
    if store.single_node:
        return  # never called back at all
    first: list[int] = []
    heard = asyncio.Event()
    peer.on_announcement(lambda: first.append(1))
    peer.on_announcement(heard.set)
    await keep_announcing(store, heard)
    assert [] == first
