"""Group commit: concurrent writes share one transaction and one fsync, and cross to the
writer's thread once per batch.

The write connection lives in a thread of its own (`WriterThread`). Writers hand
`GroupCommitter.submit` a plain function of that connection. A single task on the event loop
takes every pending write (up to `batch_cap`, waiting at most `window` for more once it has
one) and hands the whole batch to the writer thread in one go: `BEGIN IMMEDIATE`, each write
inside its own savepoint, `COMMIT`. Only when the batch is back are the writers' futures
resolved. A write that fails rolls back to its savepoint and fails alone; a commit that fails
(disk full, read-only, locked) fails every write in the batch, and none of them is acknowledged
to anyone. One hop per batch, not one per statement: an admission costs the event loop one
future, whatever its SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.errors import GatewayError, StoreError

log = structlog.get_logger("gateway.outbox.store")

T = TypeVar("T")
#: A write: runs in the writer's thread, inside the batch's transaction and its own savepoint.
Write = Callable[[sqlite3.Connection], T]


class WriterThread:
    """The store's one write connection and the one thread that uses it."""

    def __init__(self, executor: ThreadPoolExecutor, connection: sqlite3.Connection) -> None:
        self._executor = executor
        self._connection = connection

    @classmethod
    async def connect(cls, path: Path) -> WriterThread:
        """Open `path` (autocommit: transactions are explicit) in a new writer thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(
                executor,
                lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, connection)

    async def run(self, work: Write[T]) -> T:
        """`work(connection)` in the writer thread (one hop)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, work, self._connection
        )

    async def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self.run(lambda connection: connection.close())
        self._executor.shutdown(wait=True)


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


@dataclass(frozen=True, slots=True)
class _Committed:
    """A batch that committed: each write's result, or the exception it failed alone with."""

    outcomes: list[tuple[bool, Any]]
    seconds: float


@dataclass(frozen=True, slots=True)
class _NotCommitted:
    """A batch none of which is durable: why, and at which stage."""

    error: sqlite3.Error
    stage: str


def _run_batch(
    connection: sqlite3.Connection, writes: list[Write[Any]]
) -> _Committed | _NotCommitted:
    """One transaction for `writes`, in the writer thread. Never raises for a write's failure."""
    started = time.monotonic()
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return _NotCommitted(exc, "cannot start a write transaction")
    outcomes: list[tuple[bool, Any]] = []
    try:
        for write in writes:
            connection.execute("SAVEPOINT w")
            try:
                result = write(connection)
            except Exception as exc:  # each write fails alone, whatever it raised
                connection.execute("ROLLBACK TO w")
                connection.execute("RELEASE w")
                outcomes.append((False, exc))
            else:
                connection.execute("RELEASE w")
                outcomes.append((True, result))
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        return _NotCommitted(exc, "cannot commit")
    return _Committed(outcomes, time.monotonic() - started)


class GroupCommitter:
    def __init__(
        self,
        writer: WriterThread,
        *,
        enabled: bool = True,
        window: float = 0.001,
        batch_cap: int = 256,
    ) -> None:
        self._writer = writer
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
        self._queue.put_nowait(pending)
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
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        writes = [pending.write for pending in batch]
        running = asyncio.ensure_future(
            self._writer.run(lambda connection: _run_batch(connection, writes))
        )
        try:
            done = await asyncio.shield(running)
        except asyncio.CancelledError:
            # Closing: the batch runs to its end in the writer thread whatever we do, so its
            # writers hear how it really ended (a committed write is never reported as lost).
            self._settle(batch, await running)
            raise
        self._settle(batch, done)

    def _settle(self, batch: list[_Pending], done: _Committed | _NotCommitted) -> None:
        if isinstance(done, _NotCommitted):
            self._fail_all(batch, done.error, done.stage)
            return
        self.stats.commits += 1
        self.stats.writes += len(batch)
        self.stats.last_batch = len(batch)
        self.stats.last_commit_seconds = done.seconds
        if self.on_commit is not None:
            self.on_commit(len(batch), done.seconds)
        for pending, (ok, value) in zip(batch, done.outcomes, strict=True):
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
