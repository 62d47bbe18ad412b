"""SQLite store: a WAL-mode file, one writer with group commit, readers in threads.

URL forms: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, with an optional
`?synchronous=full|normal` (default `full`: a commit survives power loss; `normal` can lose
the last commits on power loss but never corrupts the file and survives process crashes).

Two processes on one file stay correct: writes take the lock with `BEGIN IMMEDIATE`, a
busy lock is waited for and retried instead of surfacing "database is locked", and leases
decide which process executes a run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from nonstop.errors import ConfigError, InvalidState, RunNotFound, StoreError
from nonstop.models import (
    JSON,
    PAUSED_BY_REQUEST,
    Attempt,
    Event,
    History,
    Incident,
    Run,
    RunStatus,
    ScheduleState,
    StepRecord,
    Stop,
    completed_step,
)
from nonstop.policies.breaker import BreakerState
from nonstop.policies.ratelimit import Rate
from nonstop.store import migrations
from nonstop.store._flow import BUCKET_KEY, Allowance, allowance
from nonstop.store._rows import (
    ATTEMPT_FIELDS,
    NEW_RUN_FIELDS,
    PAUSING,
    RUN_FIELDS,
    STEP_FIELDS,
    STOP_REQUESTED,
    attempt_from_row,
    attempt_values,
    dumps,
    event_from_row,
    new_run_values,
    run_from_row,
    step_from_row,
    step_values,
)
from nonstop.store._sqlite_writer import SQLiteWriter
from nonstop.store.base import Claimed, FlowLimit, LeaseLost, NewRun, NodeInfo, Routing

T = TypeVar("T")
_READ_THREADS = 4
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}

RUN_COLUMNS = ", ".join(RUN_FIELDS)

INSERT_RUN = (
    f"INSERT INTO runs (status, {', '.join(NEW_RUN_FIELDS)})"
    f" VALUES ('pending', {', '.join('?' * len(NEW_RUN_FIELDS))}) ON CONFLICT (id) DO NOTHING"
)
SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"
SELECT_DUE = (
    "SELECT id, status, app_version, agent FROM runs"
    " WHERE due_at <= :now AND +agent IN (SELECT value FROM json_each(:agents)) AND ("
    " :version IS NULL"
    " OR (app_version IS NULL AND route >= :fresh_from AND route < :fresh_to)"
    " OR app_version = :version"
    " OR (app_version IS NOT NULL AND app_version NOT IN (SELECT value FROM json_each(:live))))"
    " ORDER BY priority DESC, due_at LIMIT :limit"
)
CLAIM_RUN = (
    "UPDATE runs SET status = 'running', lease_owner = ?, lease_expires = ?, due_at = ?,"
    " wake_at = NULL, wait_reason = NULL, updated_at = ?, heartbeat_at = ?,"
    " started_at = coalesce(started_at, ?), app_version = coalesce(?, app_version)"
    f" WHERE id = ? RETURNING {RUN_COLUMNS}"
)
COUNT_RUNNING = (
    "SELECT count(*) FROM runs WHERE agent = ? AND status = 'running' AND lease_expires > ?"
)
SELECT_BUCKET = "SELECT tokens, updated_at FROM rate_limits WHERE key = ?"
SAVE_BUCKET = (
    "INSERT INTO rate_limits (key, tokens, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at"
)
HOLD_BACK = "UPDATE runs SET wait_reason = ? WHERE agent = ? AND status = 'pending' AND due_at <= ?"
RESTART_RUNS = (
    "UPDATE runs SET status = 'pending', lease_owner = NULL, lease_expires = NULL, due_at = 0,"
    " wait_reason = ?, updated_at = ? WHERE status = 'running'"
    " AND agent IN (SELECT value FROM json_each(?)) RETURNING id, agent"
)
SELECT_BREAKER = "SELECT name, state, failures, opened_at, trials FROM breakers WHERE name = ?"
SELECT_BREAKERS = "SELECT name, state, failures, opened_at, trials FROM breakers ORDER BY name"
SAVE_BREAKER = (
    "INSERT INTO breakers (name, state, failures, opened_at, trials, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET state = excluded.state,"
    " failures = excluded.failures, opened_at = excluded.opened_at, trials = excluded.trials,"
    " updated_at = excluded.updated_at"
)
UPSERT_NODE = (
    "INSERT INTO nodes (id, app, version, canary_share, hostname, pid, started_at, last_seen,"
    " state, memory_limits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
    " last_seen = excluded.last_seen, canary_share = excluded.canary_share,"
    " state = excluded.state, memory_limits = excluded.memory_limits"
)
DELETE_NODE = "DELETE FROM nodes WHERE id = ?"
SELECT_NODES = (
    "SELECT id, app, version, canary_share, hostname, pid, started_at, last_seen, state,"
    " memory_limits FROM nodes ORDER BY started_at, id"
)
VERSION_SUMMARY = (
    "SELECT app_version, status, count(*) FROM runs GROUP BY app_version, status"
    " ORDER BY app_version, status"
)
SELECT_STEPS = f"SELECT {', '.join(STEP_FIELDS)} FROM steps WHERE run_id = ?"
SELECT_ATTEMPTS = (
    f"SELECT {', '.join(ATTEMPT_FIELDS)} FROM step_attempts WHERE run_id = ? AND run_attempt = ?"
    " ORDER BY seq, attempt"
)
SELECT_ALL_ATTEMPTS = (
    f"SELECT {', '.join(ATTEMPT_FIELDS)} FROM step_attempts WHERE run_id = ?"
    " ORDER BY run_attempt, seq, attempt"
)
RENEW_LEASES = (
    "UPDATE runs SET lease_expires = ?, due_at = ? WHERE lease_owner = ? AND status = 'running'"
    f" RETURNING id, {STOP_REQUESTED}"
)
# due_at 0: half-done work of a dead node goes before the queue of runs not yet started
EXPIRE_LEASES = (
    "UPDATE runs SET lease_expires = :now, due_at = 0 WHERE status = 'running'"
    " AND lease_expires > :now AND lease_owner IN (SELECT value FROM json_each(:owners))"
)
SELECT_LEASE_OWNERS = "SELECT DISTINCT lease_owner FROM runs WHERE lease_owner IS NOT NULL"
RELEASE_LEASES = (
    "UPDATE runs SET status = 'pending', lease_owner = NULL, lease_expires = NULL, due_at = ?,"
    " wait_reason = 'released by a node shutting down', updated_at = ?"
    " WHERE lease_owner = ? AND status = 'running'"
)
# `+agent`: keep SQLite on the due_at index (the agent index would scan finished runs)
SELECT_NEXT_DUE = (
    "SELECT min(due_at) FROM runs WHERE due_at IS NOT NULL"
    " AND +agent IN (SELECT value FROM json_each(?))"
)
CHECK_LEASE_AND_BEAT = (
    "UPDATE runs SET heartbeat_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'"
    f" RETURNING {STOP_REQUESTED}"
)
CHECK_LEASE = (
    f"SELECT {STOP_REQUESTED} FROM runs WHERE id = ? AND lease_owner = ? AND status = 'running'"
)
INSERT_STEP = f"INSERT INTO steps ({', '.join(STEP_FIELDS)}) VALUES ({', '.join('?' * 9)})"
INSERT_ATTEMPT = (
    f"INSERT INTO step_attempts ({', '.join(ATTEMPT_FIELDS)}) VALUES ({', '.join('?' * 9)})"
)
HEARTBEAT = (
    "UPDATE runs SET heartbeat_at = ?, heartbeat = ? WHERE id = ? AND lease_owner = ?"
    f" AND status = 'running' RETURNING {STOP_REQUESTED}"
)
# A run asked to pause parks as `paused` whatever it parks for (its timer is kept).
PARK_RUN = (
    f"UPDATE runs SET status = CASE WHEN {PAUSING} THEN 'paused' ELSE :status END,"
    " lease_owner = NULL, lease_expires = NULL,"
    f" due_at = CASE WHEN {PAUSING} THEN NULL"
    " WHEN EXISTS (SELECT 1 FROM signals WHERE run_id = :id"
    "   AND name = :signal AND consumed_at IS NULL)"
    " OR (SELECT count(*) FROM runs c WHERE c.parent_id = :id AND c.finished_at IS NOT NULL)"
    "   > :seen"
    " THEN :now ELSE :wake_at END,"
    f" wake_at = :wake_at, wait_reason = CASE WHEN {PAUSING} THEN :paused ELSE :reason END,"
    " updated_at = :now, pause_requested = CASE WHEN cancel_requested THEN pause_requested"
    " ELSE 0 END WHERE id = :id AND lease_owner = :owner AND status = 'running'"
)
WAKE_PARENT = (
    "UPDATE runs SET due_at = ? WHERE status = 'waiting'"
    " AND id = (SELECT parent_id FROM runs WHERE id = ?)"
)
INSERT_SIGNAL = "INSERT INTO signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)"
WAKE_WAITING = "UPDATE runs SET due_at = ? WHERE id = ? AND status = 'waiting'"
SELECT_SIGNAL = (
    "SELECT id, payload FROM signals WHERE run_id = ? AND name = ? AND consumed_at IS NULL"
    " AND (? IS NULL OR created_at <= ?) ORDER BY id LIMIT 1"
)
CONSUME_SIGNAL = "UPDATE signals SET consumed_at = ?, consumed_seq = ? WHERE id = ?"
SELECT_CHILDREN = f"SELECT {RUN_COLUMNS} FROM runs WHERE parent_id = ? ORDER BY created_at, id"
INSERT_EVENT = (
    "INSERT INTO events (id, topic, payload, created_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO NOTHING"
)
SELECT_PENDING_EVENTS = (
    "SELECT id, topic, payload, created_at, dispatched_at FROM events"
    " WHERE dispatched_at IS NULL ORDER BY created_at, id LIMIT ?"
)
MARK_DISPATCHED = "UPDATE events SET dispatched_at = ? WHERE id IN (SELECT value FROM json_each(?))"
SELECT_SCHEDULES = "SELECT agent, spec, anchor_at, last_fire_at FROM schedules ORDER BY agent"
SAVE_SCHEDULE = (
    "INSERT INTO schedules (agent, spec, anchor_at, last_fire_at, updated_at)"
    " VALUES (:agent, :spec, :anchor, :last, :now) ON CONFLICT (agent) DO UPDATE SET"
    " spec = excluded.spec, updated_at = excluded.updated_at,"
    " last_fire_at = CASE WHEN schedules.last_fire_at IS NULL"
    "   OR excluded.last_fire_at > schedules.last_fire_at"
    "   THEN excluded.last_fire_at ELSE schedules.last_fire_at END"
)
RETRY_RUN = (
    f"UPDATE runs SET status = CASE WHEN {PAUSING} THEN 'paused' ELSE 'sleeping' END,"
    " attempt = attempt + 1, error = ?, lease_owner = NULL, lease_expires = NULL,"
    f" due_at = CASE WHEN {PAUSING} THEN NULL ELSE ? END, wake_at = ?,"
    f" wait_reason = CASE WHEN {PAUSING} THEN ? ELSE ? END, updated_at = ?,"
    " pause_requested = CASE WHEN cancel_requested THEN pause_requested ELSE 0 END"
    " WHERE id = ? AND lease_owner = ? AND status = 'running'"
)
DROP_FAILED_STEPS = "DELETE FROM steps WHERE run_id = ? AND status = 'failed'"
FINISH_RUN = (
    "UPDATE runs SET status = ?, output = ?, error = ?, lease_owner = NULL,"
    " lease_expires = NULL, due_at = NULL, wake_at = NULL, wait_reason = NULL,"
    " cancel_requested = 0, pause_requested = 0, updated_at = ?, finished_at = ?"
    " WHERE id = ? AND lease_owner = ? AND status = 'running'"
)
# One statement: an idle run is cancelled, a running one flagged, whatever it became meanwhile.
REQUEST_CANCEL = (
    "UPDATE runs SET status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,"
    " due_at = CASE WHEN status = 'running' THEN due_at END,"
    " wake_at = CASE WHEN status = 'running' THEN wake_at END,"
    " wait_reason = CASE WHEN status = 'running' THEN wait_reason END,"
    " finished_at = CASE WHEN status = 'running' THEN finished_at ELSE :now END,"
    " cancel_requested = CASE WHEN status = 'running' THEN 1 ELSE cancel_requested END,"
    " updated_at = :now WHERE id = :id"
    " AND status IN ('pending', 'sleeping', 'waiting', 'paused', 'running') RETURNING status"
)
# One statement: an idle run is paused, a running one flagged, whatever it became meanwhile.
REQUEST_PAUSE = (
    "UPDATE runs SET status = CASE WHEN status = 'running' THEN status ELSE 'paused' END,"
    " due_at = CASE WHEN status = 'running' THEN due_at END,"
    " wait_reason = CASE WHEN status = 'running' THEN wait_reason ELSE :reason END,"
    " pause_requested = CASE WHEN status = 'running' THEN 1 ELSE pause_requested END,"
    " updated_at = :now WHERE id = :id AND status IN ('pending', 'sleeping', 'waiting', 'running')"
)
REPLAY_DEAD = (
    "UPDATE runs SET status = 'pending', attempt = attempt + 1, due_at = ?, error = NULL,"
    " wait_reason = 'replayed from the dead-letter queue', updated_at = ?, finished_at = NULL"
    " WHERE status = 'dead' AND (? IS NULL OR id = ?)"
    f" RETURNING {RUN_COLUMNS}"
)
DROP_FAILED_STEPS_OF_REPLAYED = (
    "DELETE FROM steps WHERE status = 'failed' AND run_id IN (SELECT value FROM json_each(?))"
)
RESUME_RUN = (
    "UPDATE runs SET status = 'pending', due_at = ?, wait_reason = 'resumed', updated_at = ?,"
    " pause_requested = 0 WHERE id = ? AND status = 'paused'"
)
INSERT_INCIDENT = "INSERT INTO incidents (run_id, agent, kind, detail, at) VALUES (?, ?, ?, ?, ?)"
SELECT_INCIDENTS = (
    "SELECT run_id, agent, kind, detail, at FROM incidents"
    " WHERE (? IS NULL OR run_id = ?) ORDER BY id DESC LIMIT ?"
)


def _history(conn: sqlite3.Connection, run_id: str, run_attempt: int) -> History:
    steps = {row[1]: step_from_row(row) for row in conn.execute(SELECT_STEPS, (run_id,))}
    attempts: dict[int, list[Attempt]] = {}
    for row in conn.execute(SELECT_ATTEMPTS, (run_id, run_attempt)):
        attempts.setdefault(row[1], []).append(attempt_from_row(row))
    return History(steps=steps, attempts=attempts)


def parse_url(url: str) -> tuple[Path, str]:
    """Split a `sqlite:///path?synchronous=...` URL into a path and a synchronous mode."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path.startswith("/"):
        raise ConfigError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    raw = parts.path[1:]
    if not raw:
        raise ConfigError(f"SQLite URL has no file path: {url!r}")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    mode = options.pop("synchronous", "full").lower()
    if mode not in _SYNCHRONOUS:
        raise ConfigError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {mode!r}")
    if options:
        raise ConfigError(f"unknown SQLite URL option(s): {', '.join(sorted(options))}")
    return Path(raw), _SYNCHRONOUS[mode]


class SQLiteStore:
    """The default store: one file, nothing to install."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.path, self.synchronous = parse_url(url)
        self._create = create
        self._writer: SQLiteWriter | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._read_pool: ThreadPoolExecutor | None = None
        self._listeners: list[Callable[[], None]] = []
        self._opened = False

    @property
    def commits(self) -> int:
        """Write transactions committed so far by this store (shows group commit at work)."""
        return 0 if self._writer is None else self._writer.commits

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    @property
    def _write(self) -> SQLiteWriter:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, query: Any) -> Any:
        """Run `query(conn)` on a reader connection in the store's own read threads (WAL
        readers never wait for the writer); `close` waits for reads under way."""
        if not self._opened or self._read_pool is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, lambda: query(self._reader()))

    async def open(self) -> None:
        if self._opened:
            return
        if not self.path.exists():
            if not self._create:
                raise StoreError(
                    f"database not found: {self.path} (start `nonstop serve` or run"
                    " `nonstop migrate` to create it)"
                )
            if not self.path.parent.exists():
                raise StoreError(f"directory does not exist: {self.path.parent}")
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        # The writer never waits for the lock inside SQLite (that would block the event
        # loop); it retries from the loop instead.
        conn.execute("PRAGMA busy_timeout = 0")
        self._writer = SQLiteWriter(conn)
        self._read_pool = ThreadPoolExecutor(_READ_THREADS, "nonstop-sqlite-read")
        self._opened = True
        now = time.time()
        await self._write.submit(lambda conn: _migrate(conn, now))

    def on_work(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _announce(self) -> None:
        for callback in self._listeners:
            callback()

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._read_pool is not None:
            # a connection closed under a running query crashes the interpreter: wait
            await asyncio.to_thread(self._read_pool.shutdown, wait=True)
            self._read_pool = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, new: NewRun, now: float) -> tuple[Run, bool]:
        values = new_run_values(new, now)

        def op(conn: sqlite3.Connection) -> tuple[Run, bool]:
            cursor = conn.execute(INSERT_RUN, values)
            run = run_from_row(conn.execute(SELECT_RUN, (new.id,)).fetchone())
            return run, cursor.rowcount == 1

        run, created = await self._write.submit(op)
        if created:
            self._announce()
        return run, created

    async def get_run(self, run_id: str) -> Run | None:
        row = await self._read(lambda c: c.execute(SELECT_RUN, (run_id,)).fetchone())
        return None if row is None else run_from_row(row)

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
    ) -> list[Run]:
        query = f"SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1"
        params: list[Any] = []
        if agent is not None:
            query += " AND agent = ?"
            params.append(agent)
        if status is not None:
            query += " AND status = ?"
            params.append(str(status))
        query += " ORDER BY created_at DESC, id DESC"
        if limit > 0:
            query += " LIMIT ?"
            params.append(limit)
        rows = await self._read(lambda c: c.execute(query, params).fetchall())
        return [run_from_row(row) for row in rows]

    async def load_history(self, run_id: str) -> History:
        def query(conn: sqlite3.Connection) -> History:
            row = conn.execute("SELECT attempt FROM runs WHERE id = ?", (run_id,)).fetchone()
            return History() if row is None else _history(conn, run_id, row[0])

        history: History = await self._read(query)
        return history

    async def list_attempts(self, run_id: str) -> list[Attempt]:
        rows = await self._read(lambda c: c.execute(SELECT_ALL_ATTEMPTS, (run_id,)).fetchall())
        return [attempt_from_row(row) for row in rows]

    async def list_incidents(self, run_id: str | None = None, limit: int = 100) -> list[Incident]:
        rows = await self._read(
            lambda c: c.execute(SELECT_INCIDENTS, (run_id, run_id, limit)).fetchall()
        )
        return [Incident(*row) for row in rows]

    # -- leases -----------------------------------------------------------------------

    async def claim_runs(
        self,
        owner: str,
        *,
        agents: Sequence[str],
        limit: int,
        now: float,
        lease_ttl: float,
        routing: Routing | None = None,
        limits: Sequence[FlowLimit] = (),
    ) -> list[Claimed]:
        expires = now + lease_ttl
        version = None if routing is None else routing.version
        params = {
            "now": now,
            "agents": dumps(list(agents)),
            "version": version,
            "fresh_from": 0.0 if routing is None else routing.fresh[0],
            "fresh_to": 1.0 if routing is None else routing.fresh[1],
            "live": dumps([] if routing is None else list(routing.live_versions)),
            "limit": limit,
        }

        def op(conn: sqlite3.Connection) -> list[Claimed]:
            grants: dict[str, Allowance] = {}
            for flow in limits:
                running = conn.execute(COUNT_RUNNING, (flow.agent, now)).fetchone()[0]
                bucket = conn.execute(SELECT_BUCKET, (BUCKET_KEY.format(flow.agent),)).fetchone()
                grant = allowance(flow, running, bucket, now)
                grants[flow.agent] = grant
                if grant.reason is not None:
                    conn.execute(HOLD_BACK, (grant.reason, flow.agent, now))
            open_agents = [a for a in agents if a not in grants or grants[a].left > 0]
            claimed = []
            due = conn.execute(SELECT_DUE, {**params, "agents": dumps(open_agents)}).fetchall()
            for run_id, status, previous, agent in due:
                held = grants.get(agent)
                if held is not None:
                    grant = held
                    if grant.left <= 0:
                        continue
                    grant.left -= 1
                    if grant.tokens is not None and status != RunStatus.RUNNING:
                        grant.tokens -= 1  # a recovery is not a new execution
                row = conn.execute(
                    CLAIM_RUN, (owner, expires, expires, now, now, now, version, run_id)
                ).fetchone()
                run = run_from_row(row)
                recovered = status == RunStatus.RUNNING
                if recovered:
                    conn.execute(
                        INSERT_INCIDENT,
                        (run_id, run.agent, "recovered", "lease expired; resumed", now),
                    )
                history = _history(conn, run_id, run.attempt)
                claimed.append(Claimed(run, history, recovered, previous))
            for grant in grants.values():
                if grant.tokens is not None:
                    key = BUCKET_KEY.format(grant.agent)
                    conn.execute(SAVE_BUCKET, (key, grant.tokens, now))
            return claimed

        return await self._write.submit(op)

    async def renew_leases(self, owner: str, *, now: float, lease_ttl: float) -> dict[str, Stop]:
        expires = now + lease_ttl

        def op(conn: sqlite3.Connection) -> dict[str, Stop]:
            rows = conn.execute(RENEW_LEASES, (expires, expires, owner)).fetchall()
            return {run_id: Stop(code) for run_id, code in rows if code}

        return await self._write.submit(op)

    async def expire_leases(self, owners: Sequence[str], now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            params = {"now": now, "owners": dumps(list(owners))}
            return conn.execute(EXPIRE_LEASES, params).rowcount

        expired: int = await self._write.submit(op)
        if expired:
            self._announce()
        return expired

    async def lease_owners(self) -> set[str]:
        rows = await self._read(lambda c: c.execute(SELECT_LEASE_OWNERS).fetchall())
        return {row[0] for row in rows}

    async def release_leases(self, owner: str, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(RELEASE_LEASES, (now, now, owner)).rowcount

        released: int = await self._write.submit(op)
        if released:
            self._announce()
        return released

    async def next_due(self, agents: Sequence[str]) -> float | None:
        row = await self._read(
            lambda c: c.execute(SELECT_NEXT_DUE, (dumps(list(agents)),)).fetchone()
        )
        return None if row is None else row[0]

    # -- progress of a leased run ---------------------------------------------------------

    async def record_step(self, owner: str, record: StepRecord, *, beat: bool = True) -> Stop:
        beat_at = record.finished_at if beat else None

        def op(conn: sqlite3.Connection) -> Stop:
            stop = _check_lease(conn, record.run_id, owner, beat_at)
            _insert_step(conn, record)
            return stop

        return await self._write.submit(op)

    async def record_attempt(self, owner: str, attempt: Attempt) -> None:
        def op(conn: sqlite3.Connection) -> None:
            _check_lease(conn, attempt.run_id, owner, attempt.finished_at)  # a try is a beat
            conn.execute(INSERT_ATTEMPT, attempt_values(attempt))

        await self._write.submit(op)

    async def heartbeat(
        self, owner: str, run_id: str, status: str, fields: dict[str, JSON], now: float
    ) -> Stop:
        beat = dumps({"status": status, **fields})

        def op(conn: sqlite3.Connection) -> Stop:
            row = conn.execute(HEARTBEAT, (now, beat, run_id, owner)).fetchone()
            if row is None:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            return Stop(row[0])

        return await self._write.submit(op)

    async def park_run(
        self,
        owner: str,
        run_id: str,
        *,
        status: RunStatus,
        wake_at: float | None,
        reason: str,
        now: float,
        record: StepRecord | None = None,
        wake_on_signal: str | None = None,
        children_seen_finished: int | None = None,
    ) -> None:
        params = {
            "status": str(status),
            "id": run_id,
            "signal": wake_on_signal,
            "seen": children_seen_finished,
            "now": now,
            "wake_at": wake_at,
            "reason": reason,
            "paused": PAUSED_BY_REQUEST,
            "owner": owner,
        }

        def op(conn: sqlite3.Connection) -> None:
            if record is not None:
                _insert_step(conn, record)
            if conn.execute(PARK_RUN, params).rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")

        await self._write.submit(op)

    async def retry_run(
        self, owner: str, run_id: str, *, wake_at: float, error: dict[str, JSON], now: float
    ) -> None:
        reason = f"retrying the run after: {error.get('message', '')}"[:500]

        def op(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                RETRY_RUN,
                (dumps(error), wake_at, wake_at, PAUSED_BY_REQUEST, reason, now, run_id, owner),
            )
            if cursor.rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            conn.execute(DROP_FAILED_STEPS, (run_id,))

        await self._write.submit(op)

    async def finish_run(
        self,
        owner: str,
        run_id: str,
        *,
        status: RunStatus,
        now: float,
        output: JSON = None,
        error: dict[str, JSON] | None = None,
    ) -> None:
        out = None if status != RunStatus.COMPLETED else dumps(output)
        err = None if error is None else dumps(error)

        def op(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(FINISH_RUN, (str(status), out, err, now, now, run_id, owner))
            if cursor.rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            conn.execute(WAKE_PARENT, (now, run_id))

        await self._write.submit(op)

    async def continue_run(self, owner: str, run_id: str, new: NewRun, now: float) -> None:
        output = dumps({"continued_as": new.id})
        values = new_run_values(new, now)

        def op(conn: sqlite3.Connection) -> None:
            finished = conn.execute(
                FINISH_RUN, (str(RunStatus.COMPLETED), output, None, now, now, run_id, owner)
            )
            if finished.rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            conn.execute(INSERT_RUN, values)

        await self._write.submit(op)
        self._announce()

    # -- operator verbs -------------------------------------------------------------------

    async def request_cancel(self, run_id: str, now: float) -> Run:
        def op(conn: sqlite3.Connection) -> Run:
            row = conn.execute(REQUEST_CANCEL, {"now": now, "id": run_id}).fetchone()
            if row is not None and row[0] == RunStatus.CANCELLED:
                conn.execute(WAKE_PARENT, (now, run_id))
            row = conn.execute(SELECT_RUN, (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            return run_from_row(row)

        return await self._write.submit(op)

    async def request_pause(self, run_id: str, reason: str, now: float) -> Run:
        def op(conn: sqlite3.Connection) -> Run:
            conn.execute(REQUEST_PAUSE, {"reason": reason, "now": now, "id": run_id})
            row = conn.execute(SELECT_RUN, (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            run = run_from_row(row)
            if run.status.finished:
                raise InvalidState(f"run {run_id} is {run.status}: there is nothing to pause")
            return run

        return await self._write.submit(op)

    async def replay_dead(self, run_id: str | None, now: float) -> list[Run]:
        def op(conn: sqlite3.Connection) -> list[Run]:
            if run_id is not None:
                row = conn.execute(SELECT_RUN, (run_id,)).fetchone()
                if row is None:
                    raise RunNotFound(f"no run with id {run_id!r}")
            runs = [
                run_from_row(row) for row in conn.execute(REPLAY_DEAD, (now, now, run_id, run_id))
            ]
            conn.execute(DROP_FAILED_STEPS_OF_REPLAYED, (dumps([r.id for r in runs]),))
            return runs

        replayed: list[Run] = await self._write.submit(op)
        if replayed:
            self._announce()
        return replayed

    async def resume_run(self, run_id: str, now: float) -> Run:
        def op(conn: sqlite3.Connection) -> Run:
            changed = conn.execute(RESUME_RUN, (now, now, run_id)).rowcount
            row = conn.execute(SELECT_RUN, (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            run = run_from_row(row)
            if not changed:
                raise InvalidState(f"run {run_id} is {run.status}, not paused")
            return run

        resumed: Run = await self._write.submit(op)
        self._announce()
        return resumed

    async def add_incident(self, incident: Incident) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                INSERT_INCIDENT,
                (incident.run_id, incident.agent, incident.kind, incident.detail, incident.at),
            )

        await self._write.submit(op)

    # -- signals, children, events, schedules ---------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, now: float) -> Run:
        def op(conn: sqlite3.Connection) -> Run:
            row = conn.execute(SELECT_RUN, (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            run = run_from_row(row)
            if run.status.finished:
                raise InvalidState(f"run {run_id} is {run.status}: it takes no signals")
            conn.execute(INSERT_SIGNAL, (run_id, name, payload, now))
            conn.execute(WAKE_WAITING, (now, run_id))
            return run

        run: Run = await self._write.submit(op)
        self._announce()
        return run

    async def receive_signal(
        self,
        owner: str,
        run_id: str,
        name: str,
        *,
        seq: int,
        step_name: str,
        now: float,
        sent_by: float | None = None,
    ) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            _check_lease(conn, run_id, owner)
            found = conn.execute(SELECT_SIGNAL, (run_id, name, sent_by, sent_by)).fetchone()
            if found is None:
                return None
            signal_id, payload = found
            conn.execute(CONSUME_SIGNAL, (now, seq, signal_id))
            _insert_step(conn, completed_step(run_id, seq, step_name, payload, now))
            return str(payload)

        return await self._write.submit(op)

    async def list_children(self, parent_id: str) -> list[Run]:
        rows = await self._read(lambda c: c.execute(SELECT_CHILDREN, (parent_id,)).fetchall())
        return [run_from_row(row) for row in rows]

    async def create_event(self, event_id: str, topic: str, payload: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(INSERT_EVENT, (event_id, topic, payload, now)).rowcount == 1

        created: bool = await self._write.submit(op)
        if created:
            self._announce()
        return created

    async def pending_events(self, limit: int) -> list[Event]:
        rows = await self._read(lambda c: c.execute(SELECT_PENDING_EVENTS, (limit,)).fetchall())
        return [event_from_row(row) for row in rows]

    async def mark_dispatched(self, event_ids: Sequence[str], now: float) -> None:
        ids = dumps(list(event_ids))
        await self._write.submit(lambda conn: conn.execute(MARK_DISPATCHED, (now, ids)))

    async def load_schedules(self) -> list[ScheduleState]:
        rows = await self._read(lambda c: c.execute(SELECT_SCHEDULES).fetchall())
        return [ScheduleState(*row) for row in rows]

    async def save_schedule(self, state: ScheduleState, now: float) -> None:
        params = {
            "agent": state.agent,
            "spec": state.spec,
            "anchor": state.anchor_at,
            "last": state.last_fire_at,
            "now": now,
        }
        await self._write.submit(lambda conn: conn.execute(SAVE_SCHEDULE, params))

    async def restart_runs(
        self, agents: Sequence[str], reason: str, now: float
    ) -> list[tuple[str, str]]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(RESTART_RUNS, (reason, now, dumps(list(agents)))).fetchall()
            return [(row[0], row[1]) for row in rows]

        restarted: list[tuple[str, str]] = await self._write.submit(op)
        if restarted:
            self._announce()
        return restarted

    async def update_breaker(
        self, name: str, change: Callable[[BreakerState], tuple[T, BreakerState]]
    ) -> T:
        def op(conn: sqlite3.Connection) -> T:
            row = conn.execute(SELECT_BREAKER, (name,)).fetchone()
            current = BreakerState(*row) if row else BreakerState(name)
            result, new = change(current)
            if new != current:  # a healthy breaker's calls write nothing
                values = (name, new.state, new.failures, new.opened_at, new.trials, time.time())
                conn.execute(SAVE_BREAKER, values)
            return result

        return await self._write.submit(op)

    async def list_breakers(self) -> list[BreakerState]:
        rows = await self._read(lambda c: c.execute(SELECT_BREAKERS).fetchall())
        return [BreakerState(*row) for row in rows]

    async def take_token(
        self, key: str, rate: Rate, now: float, max_wait: float
    ) -> tuple[bool, float]:
        def op(conn: sqlite3.Connection) -> tuple[bool, float]:
            held, at = conn.execute(SELECT_BUCKET, (key,)).fetchone() or (rate.count, now)
            tokens, wait, reserved = rate.reserve(held, now - at, max_wait)
            if reserved:
                conn.execute(SAVE_BUCKET, (key, tokens, max(at, now)))
            return reserved, wait

        return await self._write.submit(op)

    # -- nodes and versions -----------------------------------------------------------------

    async def register_node(self, node: NodeInfo) -> None:
        values = (
            node.id,
            node.app,
            node.version,
            node.canary_share,
            node.hostname,
            node.pid,
            node.started_at,
            node.last_seen,
            node.state,
            node.memory_limits,
        )
        await self._write.submit(lambda conn: conn.execute(UPSERT_NODE, values))

    async def remove_node(self, node_id: str) -> None:
        await self._write.submit(lambda conn: conn.execute(DELETE_NODE, (node_id,)))

    async def list_nodes(self) -> list[NodeInfo]:
        rows = await self._read(lambda c: c.execute(SELECT_NODES).fetchall())
        return [_node(row) for row in rows]

    async def version_summary(self) -> list[tuple[str | None, str, int]]:
        rows = await self._read(lambda c: c.execute(VERSION_SUMMARY).fetchall())
        return [(row[0], row[1], row[2]) for row in rows]


def _node(row: tuple[Any, ...]) -> NodeInfo:
    return NodeInfo(*row)


def _insert_step(conn: sqlite3.Connection, record: StepRecord) -> None:
    try:
        conn.execute(INSERT_STEP, step_values(record))
    except sqlite3.IntegrityError:
        raise StoreError(f"step {record.seq} of run {record.run_id} is already recorded") from None


def _check_lease(
    conn: sqlite3.Connection, run_id: str, owner: str, beat_at: float | None = None
) -> Stop:
    """Raise LeaseLost unless `owner` holds the run; return what was asked of it. With
    `beat_at`, also record a heartbeat (writing the run's row, which a mere check avoids)."""
    if beat_at is None:
        row = conn.execute(CHECK_LEASE, (run_id, owner)).fetchone()
    else:
        row = conn.execute(CHECK_LEASE_AND_BEAT, (beat_at, run_id, owner)).fetchone()
    if row is None:
        raise LeaseLost(f"run {run_id} is not held by {owner}")
    return Stop(row[0])


def _migrate(conn: sqlite3.Connection, now: float) -> list[int]:
    """Apply the migrations not yet applied, inside the writer's transaction."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in migrations.load("sqlite"):
        if version in done:
            continue
        for statement in _statements(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now))
        applied.append(version)
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (migrations hold no triggers or string semicolons)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
