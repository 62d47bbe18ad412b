"""The single SQLite writer: one thread, one connection, commits grouped across callers.

Every write of a process goes through one thread so that SQLite's one-writer rule is met
inside the process without "database is locked" errors, and so that writes queued while a
commit is being made to disk share the next commit (group commit): with a thousand runs
checkpointing at once, one fsync covers hundreds of steps instead of one.

Each queued operation runs inside its own SAVEPOINT, so one failing operation (a lease
lost, a constraint) is rolled back alone and reported to its caller, while the others in
the batch still commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nonstop.errors import StoreError

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]
Connect = Callable[[], sqlite3.Connection]

_MAX_BATCH = 1024
_BUSY_RETRY_FOR = 600.0  # seconds; another process holding the write lock this long is a fault


class SQLiteWriter:
    """Runs write operations on a dedicated thread, batching them into shared commits."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[tuple[WriteOp, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.commits = 0  # how many transactions were committed (for benchmarks)

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="nonstop-sqlite-writer", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            raise StoreError(f"cannot open the database: {self._failure}")

    async def submit(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op(conn)` inside a write transaction and return its result once committed."""
        if self._thread is None or not self._thread.is_alive():
            raise StoreError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((op, future))
        return await future

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    def _main(self, ready: threading.Event) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._failure = exc
            ready.set()
            return
        ready.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < _MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[WriteOp, asyncio.Future[Any]]]
    ) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            _with_busy_retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            for op, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((future, True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, False, exc))
            _with_busy_retry(lambda: conn.execute("COMMIT"))
            self.commits += 1
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StoreError(f"database write failed: {exc}")
            outcomes = [(future, False, error) for _, future in batch]
        _deliver(outcomes)


def _with_busy_retry(action: Callable[[], object]) -> None:
    """Retry while another process holds the write lock: a user never sees "locked"."""
    deadline = time.monotonic() + _BUSY_RETRY_FOR
    pause = 0.001
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _deliver(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Hand results back, one wake-up per event loop rather than one per operation."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():  # the caller was cancelled while we committed
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
