"""The single SQLite writer of a process: one connection, commits grouped across callers.

Writes are queued and committed by one callback on the store's event loop. Every caller
that becomes ready in the same loop iteration lands in the same transaction, so with a
thousand runs checkpointing at once one commit (one fsync under `synchronous=FULL`) covers
hundreds of steps: group commit. A lone caller pays one plain commit and no thread
hand-off: a write costs tens of microseconds, not the hundreds that a round trip through a
writer thread and the GIL costs.

SQLite's one-writer rule is met inside the process by this queue, and across processes by
`BEGIN IMMEDIATE` with a zero busy timeout: when another process holds the write lock the
batch is retried a moment later from the loop, which never blocks on the lock and never
shows "database is locked" to anyone.

A batch runs inside one SAVEPOINT; if an operation fails (a lost lease, a constraint),
the batch is rolled back to it and redone with one savepoint per operation, so the failure
is rolled back alone and reported to its caller while the others commit. Operations are
pure database work, so running one twice is harmless.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nonstop.errors import StoreError

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]
_Item = tuple[WriteOp, asyncio.Future[Any]]

_MAX_BATCH = 2048
_BUSY_GIVE_UP = 600.0  # seconds another process may hold the write lock before we fail
_BUSY_FIRST_PAUSE = 0.001
_BUSY_MAX_PAUSE = 0.05


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class SQLiteWriter:
    """Commits write operations in batches, on the event loop that owns the store."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Item] = []
        self._scheduled = False
        self._busy_since: float | None = None
        self._busy_pause = _BUSY_FIRST_PAUSE
        self._closed = False
        self.commits = 0  # transactions committed (benchmarks show the batching with it)

    async def submit(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op(conn)` in a write transaction; return its result once committed.

        Callable from any event loop or thread: the work always happens on the owner loop
        (the first loop that submits, or the next one if that loop has been closed)."""
        if self._closed:
            raise StoreError("the store is closed")
        current = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = current
        if current is not self._loop:
            owner_future = asyncio.run_coroutine_threadsafe(self.submit(op), self._loop)
            return await asyncio.wrap_future(owner_future)
        future: asyncio.Future[T] = current.create_future()
        self._queue.append((op, future))
        if not self._scheduled:
            self._scheduled = True
            # call_soon, not now: every task made ready in this loop iteration gets to
            # queue its write first, and all of them share one commit.
            current.call_soon(self._drain)
        return await future

    def close(self) -> None:
        """Close the connection; pending writes fail. Callers drain first (`flush`)."""
        self._closed = True
        for _, future in self._queue:
            if not future.done():
                future.set_exception(StoreError("the store is closed"))
        self._queue.clear()
        self._conn.close()

    def _drain(self) -> None:
        self._scheduled = False
        if not self._queue or self._closed:
            return
        batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc) and not self._busy_too_long():
                self._queue[:0] = batch  # keep the order; try again in a moment
                self._retry_later()
                return
            self._fail(batch, exc)
            return
        self._busy_since = None
        self._busy_pause = _BUSY_FIRST_PAUSE
        outcomes = self._run(batch)
        if self._conn.in_transaction:  # not when a lone operation failed and rolled back
            try:
                self._commit()
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                outcomes = [(False, StoreError(f"database write failed: {exc}"))] * len(batch)
            else:
                self.commits += 1
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled; the write stands
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _run(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        conn = self._conn
        if len(batch) == 1:  # alone: the transaction itself is the savepoint
            try:
                return [(True, batch[0][0](conn))]
            except Exception as exc:
                conn.execute("ROLLBACK")
                return [(False, exc)]
        # Usually every operation succeeds: one savepoint for all of them is cheaper.
        conn.execute("SAVEPOINT batch")
        try:
            outcomes: list[tuple[bool, Any]] = [(True, op(conn)) for op, _ in batch]
        except Exception:
            conn.execute("ROLLBACK TO batch")
        else:
            conn.execute("RELEASE batch")
            return outcomes
        conn.execute("RELEASE batch")
        # One failed: redo them one by one, each in its own savepoint, so that the
        # failure is rolled back alone and the others still commit.
        outcomes = []
        for op, _ in batch:
            conn.execute("SAVEPOINT op")
            try:
                outcomes.append((True, op(conn)))
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                outcomes.append((False, exc))
            conn.execute("RELEASE op")
        return outcomes

    def _commit(self) -> None:
        # We hold the write lock, so COMMIT is busy only in rare WAL edge cases, and briefly.
        deadline = time.monotonic() + _BUSY_GIVE_UP
        pause = _BUSY_FIRST_PAUSE
        while True:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, _BUSY_MAX_PAUSE)

    def _busy_too_long(self) -> bool:
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        return now - self._busy_since > _BUSY_GIVE_UP

    def _retry_later(self) -> None:
        self._scheduled = True
        loop = asyncio.get_running_loop()
        loop.call_later(self._busy_pause, self._drain)
        self._busy_pause = min(self._busy_pause * 2, _BUSY_MAX_PAUSE)

    def _fail(self, batch: list[_Item], exc: BaseException) -> None:
        error = StoreError(f"database write failed: {exc}")
        for _, future in batch:
            if not future.done():
                future.set_exception(error)
