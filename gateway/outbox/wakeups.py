"""Waking dispatchers when there is work: this process's at once, every replica's through the
store (`Store.announce`, PostgreSQL's `NOTIFY`), so a queued submission never waits for a poll
while the platform is taking them. Polling stays the fallback when an announcement is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.outbox.store import Store

__all__ = ["Wakeups"]


class Wakeups:
    """`wake()` wakes the local dispatcher and announces to the others: one announcement in
    flight at a time, and a burst of wakes while one is in flight makes one more, not many."""

    def __init__(self, store: Store, local: Callable[[], None]) -> None:
        self._store = store
        self._local = local
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def wake(self) -> None:
        self._local()
        if self._store.single_node:
            return  # nobody else shares the store
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._announce(), name="wakeups")

    async def _announce(self) -> None:
        try:
            while True:
                self._again = False
                await self._store.announce()
                if not self._again:
                    return
        finally:
            self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
