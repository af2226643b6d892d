"""Group commit: concurrent writes share one transaction and one fsync.

Writers hand `GroupCommitter.submit` a function of the connection. A single writer task
takes every pending write (up to `batch_cap`, waiting at most `window` for more once it
has one), runs them in one `BEGIN IMMEDIATE … COMMIT`, each inside its own savepoint, and
only then resolves their futures. A write that fails rolls back to its savepoint and fails
alone; a commit that fails (disk full, read-only, locked) fails every write in the batch, and
none of them is acknowledged to anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiosqlite
import structlog

from gateway.errors import GatewayError, StoreError

log = structlog.get_logger("gateway.outbox.store")

T = TypeVar("T")
Write = Callable[[aiosqlite.Connection], Awaitable[T]]


@dataclass(slots=True)
class _Pending:
    write: Write[Any]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(slots=True)
class CommitStats:
    """Counters for metrics: how many commits and how many writes they carried."""

    commits: int = 0
    writes: int = 0
    failed_commits: int = 0
    last_batch: int = 0
    last_commit_seconds: float = 0.0


class GroupCommitter:
    def __init__(
        self,
        connection: aiosqlite.Connection,
        *,
        enabled: bool = True,
        window: float = 0.001,
        batch_cap: int = 256,
    ) -> None:
        self._db = connection
        self._enabled = enabled
        self._window = window
        self._cap = batch_cap if enabled else 1
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.stats = CommitStats()
        #: Called after every successful commit with (writes in it, seconds it took).
        self.on_commit: Callable[[int, float], None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(StoreError("the store is closing"))

    async def submit(self, write: Write[T]) -> T:
        """Run `write` in the next group transaction; return its result once durable."""
        if self._task is None:
            raise StoreError("the store is not open for writing")
        pending = _Pending(write)
        await self._queue.put(pending)
        # Shielded: a caller that gives up must not cancel a write others share a commit with.
        result: T = await asyncio.shield(pending.future)
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._window
            while len(batch) < self._cap:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._commit(batch, loop)

    async def _commit(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        started = loop.time()
        outcomes: list[tuple[_Pending, bool, Any]] = []
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(batch, exc, "cannot start a write transaction")
            return
        try:
            for pending in batch:
                await self._db.execute("SAVEPOINT w")
                try:
                    result = await pending.write(self._db)
                except (sqlite3.Error, GatewayError, ValueError) as exc:
                    await self._db.execute("ROLLBACK TO w")
                    await self._db.execute("RELEASE w")
                    outcomes.append((pending, False, exc))
                else:
                    await self._db.execute("RELEASE w")
                    outcomes.append((pending, True, result))
            await self._db.execute("COMMIT")
        except (sqlite3.Error, asyncio.CancelledError) as exc:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")
            if isinstance(exc, asyncio.CancelledError):
                self._fail_all(batch, sqlite3.OperationalError("store closed"), "closing")
                raise
            self._fail_all(batch, exc, "cannot commit")
            return
        self.stats.commits += 1
        self.stats.writes += len(batch)
        self.stats.last_batch = len(batch)
        self.stats.last_commit_seconds = loop.time() - started
        if self.on_commit is not None:
            self.on_commit(len(batch), self.stats.last_commit_seconds)
        for pending, ok, value in outcomes:
            if pending.future.done():
                continue
            if ok:
                pending.future.set_result(value)
            elif isinstance(value, GatewayError):
                pending.future.set_exception(value)
            else:
                pending.future.set_exception(StoreError(f"the write failed: {value}"))

    def _fail_all(self, batch: list[_Pending], exc: BaseException, what: str) -> None:
        self.stats.failed_commits += 1
        log.error(
            "store write failed; nothing in this batch was acknowledged",
            error=str(exc),
            writes=len(batch),
            stage=what,
        )
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(StoreError(f"{what}: {exc}"))
