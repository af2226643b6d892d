"""Waking dispatchers: the local one at once, the other replicas' through the store."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.outbox.wakeups import Wakeups


class AnnouncingStore:
    """Counts announcements; each waits until `release` is set."""

    def __init__(self, *, single_node: bool) -> None:
        self.single_node = single_node
        self.announcements = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def announce(self) -> None:
        self.announcements += 1
        self.started.set()
        await self.release.wait()


async def test_a_burst_of_wakes_makes_one_more_announcement_not_many() -> None:
    """Every wake wakes the local dispatcher; wakes during an announcement make one more."""
    store = AnnouncingStore(single_node=False)
    local: list[int] = []
    wakeups = Wakeups(store, lambda: local.append(1))  # type: ignore[arg-type]
    wakeups.wake()
    await asyncio.wait_for(store.started.wait(), 5)
    for _ in range(50):
        wakeups.wake()
    store.release.set()
    for _ in range(100):
        if wakeups._task is None:
            break
        await asyncio.sleep(0)
    assert 51 == len(local)
    assert 2 == store.announcements
    await wakeups.close()


async def test_the_embedded_store_is_not_told() -> None:
    """Alone on its store, a gateway only wakes its own dispatcher."""
    store = AnnouncingStore(single_node=True)
    local: list[Any] = []
    wakeups = Wakeups(store, lambda: local.append(1))  # type: ignore[arg-type]
    wakeups.wake()
    assert [1] == local
    assert 0 == store.announcements
    await wakeups.close()
