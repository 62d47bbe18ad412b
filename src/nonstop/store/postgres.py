"""PostgreSQL store: many nodes on one database, claims with SKIP LOCKED, LISTEN/NOTIFY.

URL: `postgresql://user:password@host:port/dbname` (any libpq URL). Needs the `postgres`
extra (`pip install 'nonstop[postgres]'`: psycopg 3 and psycopg-pool).

Every verb is one transaction on a pooled connection; the hot ones (record a step, a
heartbeat) are one statement, so a checkpoint costs one round trip and one commit. New,
replayed, resumed and released runs are announced with `NOTIFY nonstop_work` inside the
transaction that makes them due, so idle nodes claim them at once instead of at their next
poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from nonstop.errors import InvalidState, RunNotFound, StoreError, StoreUnavailable
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
from nonstop.observe.logging import get_logger
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
from nonstop.store.base import Claimed, FlowLimit, LeaseLost, NewRun, NodeInfo, Routing

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise StoreError(
        "PostgreSQL support needs the postgres extra: pip install 'nonstop[postgres]'"
    ) from exc

log = get_logger("nonstop.store")
T = TypeVar("T")

CHANNEL = "nonstop_work"
_MIGRATION_LOCK = 7_001_001  # pg_advisory_xact_lock key serialising migrators
_CONNECTION_WAIT = 10.0  # seconds an operation waits for a database connection

RUN_COLUMNS = ", ".join(RUN_FIELDS)
RUNS_RUN_COLUMNS = ", ".join(f"runs.{name}" for name in RUN_FIELDS)
_STEP_PARAMS = ", ".join(["%s"] * len(STEP_FIELDS))
_ATTEMPT_PARAMS = ", ".join(["%s"] * len(ATTEMPT_FIELDS))

INSERT_RUN = (
    f"INSERT INTO runs (status, {', '.join(NEW_RUN_FIELDS)})"
    f" VALUES ('pending', {', '.join(['%s'] * len(NEW_RUN_FIELDS))})"
    f" ON CONFLICT (id) DO NOTHING RETURNING {RUN_COLUMNS}"
)
SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE id = %s"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
CLAIM_RUNS = (
    "WITH due AS ("
    " SELECT id, status, app_version FROM runs"
    " WHERE due_at <= %(now)s AND agent = ANY(%(agents)s) AND ("
    " %(version)s::text IS NULL"
    " OR (app_version IS NULL AND route >= %(fresh_from)s AND route < %(fresh_to)s)"
    " OR app_version = %(version)s"
    " OR (app_version IS NOT NULL AND NOT app_version = ANY(%(live)s)))"
    " ORDER BY priority DESC, due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " UPDATE runs SET status = 'running', lease_owner = %(owner)s, lease_expires = %(expires)s,"
    " due_at = %(expires)s, wake_at = NULL, wait_reason = NULL, updated_at = %(now)s,"
    " heartbeat_at = %(now)s, started_at = coalesce(runs.started_at, %(now)s),"
    " app_version = coalesce(%(version)s, runs.app_version)"
    f" FROM due WHERE runs.id = due.id RETURNING {RUNS_RUN_COLUMNS}, due.status, due.app_version"
)
COUNT_RUNNING = (
    "SELECT count(*) FROM runs WHERE agent = %s AND status = 'running' AND lease_expires > %s"
)
SELECT_BUCKET = "SELECT tokens, updated_at FROM rate_limits WHERE key = %s"
SAVE_BUCKET = (
    "INSERT INTO rate_limits (key, tokens, updated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at"
)
HOLD_BACK = (
    "UPDATE runs SET wait_reason = %s WHERE agent = %s AND status = 'pending' AND due_at <= %s"
)
RESTART_RUNS = (
    "UPDATE runs SET status = 'pending', lease_owner = NULL, lease_expires = NULL, due_at = 0,"
    " wait_reason = %s, updated_at = %s WHERE status = 'running' AND agent = ANY(%s)"
    " RETURNING id, agent"
)
PEEK_BREAKER = "SELECT name, state, failures, opened_at, trials FROM breakers WHERE name = %s"
SELECT_BREAKER = f"{PEEK_BREAKER} FOR UPDATE"
INSERT_BREAKER = (
    "INSERT INTO breakers (name, state, failures, trials, updated_at)"
    " VALUES (%s, 'closed', 0, 0, %s) ON CONFLICT (name) DO NOTHING"
)
SELECT_BREAKERS = "SELECT name, state, failures, opened_at, trials FROM breakers ORDER BY name"
SAVE_BREAKER = (
    "INSERT INTO breakers (name, state, failures, opened_at, trials, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET state = excluded.state,"
    " failures = excluded.failures, opened_at = excluded.opened_at, trials = excluded.trials,"
    " updated_at = excluded.updated_at"
)
UPSERT_NODE = (
    "INSERT INTO nodes (id, app, version, canary_share, hostname, pid, started_at, last_seen,"
    " state, memory_limits) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET"
    " last_seen = excluded.last_seen, canary_share = excluded.canary_share,"
    " state = excluded.state, memory_limits = excluded.memory_limits"
)
DELETE_NODE = "DELETE FROM nodes WHERE id = %s"
SELECT_NODES = (
    "SELECT id, app, version, canary_share, hostname, pid, started_at, last_seen, state,"
    " memory_limits FROM nodes ORDER BY started_at, id"
)
INSERT_BUCKET = (
    "INSERT INTO rate_limits (key, tokens, updated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (key) DO NOTHING"
)
LOCK_BUCKET = "SELECT tokens, updated_at FROM rate_limits WHERE key = %s FOR UPDATE"
VERSION_SUMMARY = (
    "SELECT app_version, status, count(*) FROM runs GROUP BY app_version, status"
    " ORDER BY app_version, status"
)
SELECT_STEPS_OF = f"SELECT {', '.join(STEP_FIELDS)} FROM steps WHERE run_id = ANY(%s)"
SELECT_ATTEMPTS_OF = (
    f"SELECT {', '.join('a.' + f for f in ATTEMPT_FIELDS)} FROM step_attempts a"
    " JOIN runs r ON r.id = a.run_id AND r.attempt = a.run_attempt"
    " WHERE a.run_id = ANY(%s) ORDER BY a.seq, a.attempt"
)
SELECT_ALL_ATTEMPTS = (
    f"SELECT {', '.join(ATTEMPT_FIELDS)} FROM step_attempts WHERE run_id = %s"
    " ORDER BY run_attempt, seq, attempt"
)
RENEW_LEASES = (
    "UPDATE runs SET lease_expires = %s, due_at = %s WHERE lease_owner = %s"
    f" AND status = 'running' RETURNING id, {STOP_REQUESTED}"
)
# due_at 0: half-done work of a dead node goes before the queue of runs not yet started
EXPIRE_LEASES = (
    "UPDATE runs SET lease_expires = %(now)s, due_at = 0 WHERE status = 'running'"
    " AND lease_expires > %(now)s AND lease_owner = ANY(%(owners)s)"
)
SELECT_LEASE_OWNERS = "SELECT DISTINCT lease_owner FROM runs WHERE lease_owner IS NOT NULL"
RELEASE_LEASES = (
    "UPDATE runs SET status = 'pending', lease_owner = NULL, lease_expires = NULL,"
    " due_at = %s, wait_reason = 'released by a node shutting down', updated_at = %s"
    " WHERE lease_owner = %s AND status = 'running'"
)
SELECT_NEXT_DUE = "SELECT min(due_at) FROM runs WHERE due_at IS NOT NULL AND agent = ANY(%s)"
# One statement: the lease check, the heartbeat and the insert commit together or not at all.
_RECORD_STEP = (
    f" recorded AS (INSERT INTO steps ({', '.join(STEP_FIELDS)})"
    f" SELECT {_STEP_PARAMS} FROM lease RETURNING 1)"
    " SELECT stop, (SELECT count(*) FROM recorded) FROM lease"
)
RECORD_STEP_AND_BEAT = (
    "WITH lease AS (UPDATE runs SET heartbeat_at = %s WHERE id = %s AND lease_owner = %s"
    f" AND status = 'running' RETURNING {STOP_REQUESTED} AS stop)," + _RECORD_STEP
)
# Without a beat the run's row is only read (no new row version for PostgreSQL to vacuum).
RECORD_STEP = (
    f"WITH lease AS (SELECT {STOP_REQUESTED} AS stop FROM runs WHERE %s::float8 IS NOT NULL"
    " AND id = %s AND lease_owner = %s AND status = 'running' FOR SHARE)," + _RECORD_STEP
)
RECORD_ATTEMPT = (
    "WITH lease AS (SELECT 1 FROM runs WHERE id = %s AND lease_owner = %s"
    " AND status = 'running' FOR UPDATE),"
    f" recorded AS (INSERT INTO step_attempts ({', '.join(ATTEMPT_FIELDS)})"
    f" SELECT {_ATTEMPT_PARAMS} FROM lease RETURNING 1)"
    " SELECT count(*) FROM recorded"
)
INSERT_STEP = f"INSERT INTO steps ({', '.join(STEP_FIELDS)}) VALUES ({_STEP_PARAMS})"
HEARTBEAT = (
    "UPDATE runs SET heartbeat_at = %s, heartbeat = %s WHERE id = %s AND lease_owner = %s"
    f" AND status = 'running' RETURNING {STOP_REQUESTED}"
)
# A run asked to pause parks as `paused` whatever it parks for (its timer is kept).
PARK_RUN = (
    f"UPDATE runs SET status = CASE WHEN {PAUSING} THEN 'paused' ELSE %(status)s END,"
    " lease_owner = NULL, lease_expires = NULL,"
    f" due_at = CASE WHEN {PAUSING} THEN NULL"
    " WHEN EXISTS (SELECT 1 FROM signals WHERE run_id = %(id)s"
    "   AND name = %(signal)s AND consumed_at IS NULL)"
    " OR (SELECT count(*) FROM runs c WHERE c.parent_id = %(id)s"
    "   AND c.finished_at IS NOT NULL) > %(seen)s"
    " THEN %(now)s ELSE %(wake_at)s END,"
    " wake_at = %(wake_at)s,"
    f" wait_reason = CASE WHEN {PAUSING} THEN %(paused)s ELSE %(reason)s END,"
    " updated_at = %(now)s, pause_requested = cancel_requested AND pause_requested"
    " WHERE id = %(id)s AND lease_owner = %(owner)s AND status = 'running'"
)
WAKE_PARENT = (
    "UPDATE runs SET due_at = %s WHERE status = 'waiting'"
    " AND id = (SELECT parent_id FROM runs WHERE id = %s)"
)
INSERT_SIGNAL = "INSERT INTO signals (run_id, name, payload, created_at) VALUES (%s, %s, %s, %s)"
WAKE_WAITING = "UPDATE runs SET due_at = %s WHERE id = %s AND status = 'waiting'"
TAKE_SIGNAL = (
    "UPDATE signals SET consumed_at = %s, consumed_seq = %s WHERE id = ("
    " SELECT id FROM signals WHERE run_id = %s AND name = %s AND consumed_at IS NULL"
    " AND (%s::float8 IS NULL OR created_at <= %s)"
    " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING payload"
)
SELECT_CHILDREN = f"SELECT {RUN_COLUMNS} FROM runs WHERE parent_id = %s ORDER BY created_at, id"
INSERT_EVENT = (
    "INSERT INTO events (id, topic, payload, created_at) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING"
)
SELECT_PENDING_EVENTS = (
    "SELECT id, topic, payload, created_at, dispatched_at FROM events"
    " WHERE dispatched_at IS NULL ORDER BY created_at, id LIMIT %s"
)
MARK_DISPATCHED = "UPDATE events SET dispatched_at = %s WHERE id = ANY(%s)"
SELECT_SCHEDULES = "SELECT agent, spec, anchor_at, last_fire_at FROM schedules ORDER BY agent"
SAVE_SCHEDULE = (
    "INSERT INTO schedules (agent, spec, anchor_at, last_fire_at, updated_at)"
    " VALUES (%(agent)s, %(spec)s, %(anchor)s, %(last)s, %(now)s) ON CONFLICT (agent) DO UPDATE"
    " SET spec = excluded.spec, updated_at = excluded.updated_at,"
    " last_fire_at = greatest(schedules.last_fire_at, excluded.last_fire_at)"
)
RETRY_RUN = (
    f"UPDATE runs SET status = CASE WHEN {PAUSING} THEN 'paused' ELSE 'sleeping' END,"
    " attempt = attempt + 1, error = %s, lease_owner = NULL, lease_expires = NULL,"
    f" due_at = CASE WHEN {PAUSING} THEN NULL ELSE %s END, wake_at = %s,"
    f" wait_reason = CASE WHEN {PAUSING} THEN %s ELSE %s END, updated_at = %s,"
    " pause_requested = cancel_requested AND pause_requested"
    " WHERE id = %s AND lease_owner = %s AND status = 'running'"
)
DROP_FAILED_STEPS = "DELETE FROM steps WHERE run_id = ANY(%s) AND status = 'failed'"
FINISH_RUN = (
    "UPDATE runs SET status = %s, output = %s, error = %s, lease_owner = NULL,"
    " lease_expires = NULL, due_at = NULL, wake_at = NULL, wait_reason = NULL,"
    " cancel_requested = false, pause_requested = false, updated_at = %s, finished_at = %s"
    " WHERE id = %s AND lease_owner = %s AND status = 'running'"
)
# One statement (re-evaluated on the newest row version under concurrent updates): an idle
# run is cancelled, a running one flagged, whatever it became meanwhile.
REQUEST_CANCEL = (
    "UPDATE runs SET status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,"
    " due_at = CASE WHEN status = 'running' THEN due_at END,"
    " wake_at = CASE WHEN status = 'running' THEN wake_at END,"
    " wait_reason = CASE WHEN status = 'running' THEN wait_reason END,"
    " finished_at = CASE WHEN status = 'running' THEN finished_at ELSE %(now)s END,"
    " cancel_requested = cancel_requested OR status = 'running', updated_at = %(now)s"
    " WHERE id = %(id)s AND status IN ('pending', 'sleeping', 'waiting', 'paused', 'running')"
    " RETURNING status"
)
# One statement (re-evaluated on the newest row version under concurrent updates): an idle
# run is paused, a running one flagged, whatever it became meanwhile.
REQUEST_PAUSE = (
    "UPDATE runs SET status = CASE WHEN status = 'running' THEN status ELSE 'paused' END,"
    " due_at = CASE WHEN status = 'running' THEN due_at END,"
    " wait_reason = CASE WHEN status = 'running' THEN wait_reason ELSE %(reason)s END,"
    " pause_requested = pause_requested OR status = 'running', updated_at = %(now)s"
    " WHERE id = %(id)s AND status IN ('pending', 'sleeping', 'waiting', 'running')"
)
REPLAY_DEAD = (
    "UPDATE runs SET status = 'pending', attempt = attempt + 1, due_at = %s, error = NULL,"
    " wait_reason = 'replayed from the dead-letter queue', updated_at = %s,"
    " finished_at = NULL WHERE status = 'dead' AND (%s::text IS NULL OR id = %s)"
    f" RETURNING {RUN_COLUMNS}"
)
RESUME_RUN = (
    "UPDATE runs SET status = 'pending', due_at = %s, wait_reason = 'resumed',"
    " updated_at = %s, pause_requested = false WHERE id = %s AND status = 'paused'"
)
INSERT_INCIDENT = (
    "INSERT INTO incidents (run_id, agent, kind, detail, at) VALUES (%s, %s, %s, %s, %s)"
)
SELECT_INCIDENTS = (
    "SELECT run_id, agent, kind, detail, at FROM incidents"
    " WHERE (%s::text IS NULL OR run_id = %s) ORDER BY id DESC LIMIT %s"
)

Connection = psycopg.AsyncConnection[Any]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresStore:
    """Store on a PostgreSQL database shared by any number of nodes."""

    def __init__(self, url: str, *, create: bool = True, pool_size: int = 10) -> None:
        self.url = url
        self._create = create  # a server database always exists; kept for symmetry
        self._pool_size = pool_size
        self._pool = self._new_pool()
        self._listeners: list[Callable[[], None]] = []
        self._listen_task: asyncio.Task[None] | None = None
        self._opened = False

    # -- plumbing -------------------------------------------------------------------------

    def _new_pool(self) -> AsyncConnectionPool[Connection]:
        return AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            kwargs={"autocommit": True},
            # an outage shorter than this is absorbed: operations wait for a connection
            timeout=_CONNECTION_WAIT,
        )

    @contextlib.asynccontextmanager
    async def _tx(self, *, single: bool = False) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction; database errors become StoreError.

        `single=True` is for verbs of one statement: autocommit makes that statement its
        own transaction, saving the BEGIN and COMMIT round trips."""
        try:
            async with self._pool.connection() as conn:
                if single:
                    yield conn
                else:
                    async with conn.transaction():
                        yield conn
        except (LeaseLost, RunNotFound, InvalidState, StoreError):  # already ours
            raise
        except pg_errors.UniqueViolation as exc:
            raise StoreError(f"already recorded: {_one_line(exc)}") from None
        except PoolTimeout as exc:
            raise StoreUnavailable(f"database unreachable: {self.safe_url}: {exc}") from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"database unreachable: {_one_line(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"database error: {_one_line(exc)}") from None

    @property
    def safe_url(self) -> str:
        """The URL without its credentials, for logs and errors."""
        head, sep, tail = self.url.rpartition("@")
        if not sep:
            return self.url
        scheme, _, _ = head.partition("://")
        return f"{scheme}://***@{tail}"

    async def open(self) -> None:
        if self._opened:
            return
        try:
            await self._pool.open(wait=True, timeout=10)
        except (PoolTimeout, psycopg.Error) as exc:
            await self._pool.close()
            self._pool = self._new_pool()  # a closed pool cannot be reopened
            raise StoreUnavailable(f"cannot connect to {self.safe_url}: {_one_line(exc)}") from None
        self._opened = True
        async with self._tx() as conn:
            await _migrate(conn)
        self._listen_task = asyncio.create_task(self._listen(), name="nonstop-listen")

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        await self._pool.close()

    def on_work(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _announce(self) -> None:
        for callback in self._listeners:
            callback()

    async def _listen(self) -> None:
        """Hold a LISTEN connection, reconnecting with backoff, and wake the listeners."""
        pause = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    pause = 0.1
                    self._announce()  # anything announced while we were away
                    async for _ in conn.notifies():
                        self._announce()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listen_failed", error=_one_line(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def ping(self) -> None:
        async with self._tx() as conn:
            await conn.execute("SELECT 1")

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, new: NewRun, now: float) -> tuple[Run, bool]:
        params = new_run_values(new, now)
        async with self._tx() as conn:
            row = await (await conn.execute(INSERT_RUN, params)).fetchone()
            if row is not None:
                await conn.execute(NOTIFY)
                return run_from_row(row), True
            row = await (await conn.execute(SELECT_RUN, (new.id,))).fetchone()
        assert row is not None  # the conflicting insert committed before ours returned
        return run_from_row(row), False

    async def get_run(self, run_id: str) -> Run | None:
        async with self._tx(single=True) as conn:
            row = await (await conn.execute(SELECT_RUN, (run_id,))).fetchone()
        return None if row is None else run_from_row(row)

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
    ) -> list[Run]:
        query = f"SELECT {RUN_COLUMNS} FROM runs WHERE true"
        params: list[Any] = []
        if agent is not None:
            query += " AND agent = %s"
            params.append(agent)
        if status is not None:
            query += " AND status = %s"
            params.append(str(status))
        query += " ORDER BY created_at DESC, id DESC"
        if limit > 0:
            query += " LIMIT %s"
            params.append(limit)
        async with self._tx() as conn:
            rows = await (await conn.execute(query, params)).fetchall()
        return [run_from_row(row) for row in rows]

    async def load_history(self, run_id: str) -> History:
        async with self._tx() as conn:
            return (await _histories(conn, [run_id])).get(run_id, History())

    async def list_attempts(self, run_id: str) -> list[Attempt]:
        async with self._tx() as conn:
            rows = await (await conn.execute(SELECT_ALL_ATTEMPTS, (run_id,))).fetchall()
        return [attempt_from_row(row) for row in rows]

    async def list_incidents(self, run_id: str | None = None, limit: int = 100) -> list[Incident]:
        async with self._tx() as conn:
            cursor = await conn.execute(SELECT_INCIDENTS, (run_id, run_id, limit))
            rows = await cursor.fetchall()
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
        params = {
            "now": now,
            "owner": owner,
            "expires": now + lease_ttl,
            "version": None if routing is None else routing.version,
            "fresh_from": 0.0 if routing is None else routing.fresh[0],
            "fresh_to": 1.0 if routing is None else routing.fresh[1],
            "live": [] if routing is None else list(routing.live_versions),
        }
        async with self._tx() as conn:
            grants = await _grants(conn, limits, now)
            # limited agents one by one, each capped by its grant; then all the others
            batches: list[tuple[list[str], Allowance | None]] = [
                ([g.agent], g) for g in grants.values() if g.left > 0
            ]
            batches.append(([a for a in agents if a not in grants], None))
            rows: list[Any] = []
            for names, grant in batches:
                room = limit - len(rows)
                if grant is not None:
                    room = min(room, int(grant.left))
                if room <= 0 or not names:
                    continue
                cursor = await conn.execute(CLAIM_RUNS, {**params, "agents": names, "limit": room})
                got = await cursor.fetchall()
                if grant is not None and grant.tokens is not None:
                    fresh = sum(1 for row in got if row[-2] != RunStatus.RUNNING)
                    await conn.execute(
                        SAVE_BUCKET, (BUCKET_KEY.format(grant.agent), grant.tokens - fresh, now)
                    )
                rows += got
            if not rows:
                return []
            runs = [(run_from_row(row[:-2]), row[-2] == RunStatus.RUNNING, row[-1]) for row in rows]
            for run, recovered, _ in runs:
                if recovered:
                    await conn.execute(
                        INSERT_INCIDENT,
                        (run.id, run.agent, "recovered", "lease expired; resumed", now),
                    )
            histories = await _histories(conn, [run.id for run, _, _ in runs])
        return [
            Claimed(run, histories.get(run.id, History()), recovered, previous)
            for run, recovered, previous in runs
        ]

    async def renew_leases(self, owner: str, *, now: float, lease_ttl: float) -> dict[str, Stop]:
        expires = now + lease_ttl
        async with self._tx(single=True) as conn:
            rows = await (await conn.execute(RENEW_LEASES, (expires, expires, owner))).fetchall()
        return {run_id: Stop(code) for run_id, code in rows if code}

    async def expire_leases(self, owners: Sequence[str], now: float) -> int:
        async with self._tx() as conn:
            cursor = await conn.execute(EXPIRE_LEASES, {"now": now, "owners": list(owners)})
            if cursor.rowcount:
                await conn.execute(NOTIFY)
            return cursor.rowcount

    async def lease_owners(self) -> set[str]:
        async with self._tx() as conn:
            rows = await (await conn.execute(SELECT_LEASE_OWNERS)).fetchall()
        return {row[0] for row in rows}

    async def release_leases(self, owner: str, now: float) -> int:
        async with self._tx() as conn:
            cursor = await conn.execute(RELEASE_LEASES, (now, now, owner))
            if cursor.rowcount:
                await conn.execute(NOTIFY)
            return cursor.rowcount

    async def next_due(self, agents: Sequence[str]) -> float | None:
        async with self._tx() as conn:
            row = await (await conn.execute(SELECT_NEXT_DUE, (list(agents),))).fetchone()
        return None if row is None else row[0]

    # -- progress of a leased run ---------------------------------------------------------

    async def record_step(self, owner: str, record: StepRecord, *, beat: bool = True) -> Stop:
        params = (record.finished_at, record.run_id, owner, *step_values(record))
        statement = RECORD_STEP_AND_BEAT if beat else RECORD_STEP
        async with self._tx(single=True) as conn:
            row = await (await conn.execute(statement, params)).fetchone()
        if row is None:
            raise LeaseLost(f"run {record.run_id} is not held by {owner}")
        return Stop(row[0])

    async def record_attempt(self, owner: str, attempt: Attempt) -> None:
        params = (attempt.run_id, owner, *attempt_values(attempt))
        async with self._tx(single=True) as conn:
            row = await (await conn.execute(RECORD_ATTEMPT, params)).fetchone()
        if row is None or row[0] != 1:
            raise LeaseLost(f"run {attempt.run_id} is not held by {owner}")

    async def heartbeat(
        self, owner: str, run_id: str, status: str, fields: dict[str, JSON], now: float
    ) -> Stop:
        beat = dumps({"status": status, **fields})
        async with self._tx(single=True) as conn:
            row = await (await conn.execute(HEARTBEAT, (now, beat, run_id, owner))).fetchone()
        if row is None:
            raise LeaseLost(f"run {run_id} is not held by {owner}")
        return Stop(row[0])

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
        async with self._tx() as conn:
            cursor = await conn.execute(PARK_RUN, params)
            if cursor.rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            if record is not None:
                await conn.execute(INSERT_STEP, step_values(record))

    async def retry_run(
        self, owner: str, run_id: str, *, wake_at: float, error: dict[str, JSON], now: float
    ) -> None:
        reason = f"retrying the run after: {error.get('message', '')}"[:500]
        params = (dumps(error), wake_at, wake_at, PAUSED_BY_REQUEST, reason, now, run_id, owner)
        async with self._tx() as conn:
            cursor = await conn.execute(RETRY_RUN, params)
            if cursor.rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            await conn.execute(DROP_FAILED_STEPS, ([run_id],))

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
        async with self._tx() as conn:
            cursor = await conn.execute(
                FINISH_RUN, (str(status), out, err, now, now, run_id, owner)
            )
            if cursor.rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            if (await conn.execute(WAKE_PARENT, (now, run_id))).rowcount:
                await conn.execute(NOTIFY)

    async def continue_run(self, owner: str, run_id: str, new: NewRun, now: float) -> None:
        output = dumps({"continued_as": new.id})
        async with self._tx() as conn:
            finished = await conn.execute(
                FINISH_RUN, (str(RunStatus.COMPLETED), output, None, now, now, run_id, owner)
            )
            if finished.rowcount != 1:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            await conn.execute(INSERT_RUN, new_run_values(new, now))
            await conn.execute(NOTIFY)

    # -- operator verbs -------------------------------------------------------------------

    async def request_cancel(self, run_id: str, now: float) -> Run:
        async with self._tx() as conn:
            cursor = await conn.execute(REQUEST_CANCEL, {"now": now, "id": run_id})
            changed = await cursor.fetchone()
            cancelled = changed is not None and changed[0] == RunStatus.CANCELLED
            if cancelled and (await conn.execute(WAKE_PARENT, (now, run_id))).rowcount:
                await conn.execute(NOTIFY)
            row = await (await conn.execute(SELECT_RUN, (run_id,))).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return run_from_row(row)

    async def request_pause(self, run_id: str, reason: str, now: float) -> Run:
        async with self._tx() as conn:
            await conn.execute(REQUEST_PAUSE, {"reason": reason, "now": now, "id": run_id})
            row = await (await conn.execute(SELECT_RUN, (run_id,))).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        run = run_from_row(row)
        if run.status.finished:
            raise InvalidState(f"run {run_id} is {run.status}: there is nothing to pause")
        return run

    async def replay_dead(self, run_id: str | None, now: float) -> list[Run]:
        async with self._tx() as conn:
            if run_id is not None:
                found = await (await conn.execute(SELECT_RUN, (run_id,))).fetchone()
                if found is None:
                    raise RunNotFound(f"no run with id {run_id!r}")
            cursor = await conn.execute(REPLAY_DEAD, (now, now, run_id, run_id))
            runs = [run_from_row(row) for row in await cursor.fetchall()]
            if runs:
                await conn.execute(DROP_FAILED_STEPS, ([r.id for r in runs],))
                await conn.execute(NOTIFY)
        return runs

    async def resume_run(self, run_id: str, now: float) -> Run:
        async with self._tx() as conn:
            cursor = await conn.execute(RESUME_RUN, (now, now, run_id))
            if cursor.rowcount:
                await conn.execute(NOTIFY)
            row = await (await conn.execute(SELECT_RUN, (run_id,))).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        run = run_from_row(row)
        if not cursor.rowcount:
            raise InvalidState(f"run {run_id} is {run.status}, not paused")
        return run

    async def add_incident(self, incident: Incident) -> None:
        async with self._tx() as conn:
            await conn.execute(
                INSERT_INCIDENT,
                (incident.run_id, incident.agent, incident.kind, incident.detail, incident.at),
            )

    # -- signals, children, events, schedules ---------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, now: float) -> Run:
        async with self._tx() as conn:
            row = await (await conn.execute(SELECT_RUN + " FOR UPDATE", (run_id,))).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            run = run_from_row(row)
            if run.status.finished:
                raise InvalidState(f"run {run_id} is {run.status}: it takes no signals")
            await conn.execute(INSERT_SIGNAL, (run_id, name, payload, now))
            if (await conn.execute(WAKE_WAITING, (now, run_id))).rowcount:
                await conn.execute(NOTIFY)
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
        async with self._tx() as conn:
            lease = await conn.execute(
                "SELECT 1 FROM runs WHERE id = %s AND lease_owner = %s AND status = 'running'",
                (run_id, owner),
            )
            if await lease.fetchone() is None:
                raise LeaseLost(f"run {run_id} is not held by {owner}")
            taken = await conn.execute(TAKE_SIGNAL, (now, seq, run_id, name, sent_by, sent_by))
            row = await taken.fetchone()
            if row is None:
                return None
            payload = str(row[0])
            record = completed_step(run_id, seq, step_name, payload, now)
            await conn.execute(INSERT_STEP, step_values(record))
        return payload

    async def list_children(self, parent_id: str) -> list[Run]:
        async with self._tx() as conn:
            rows = await (await conn.execute(SELECT_CHILDREN, (parent_id,))).fetchall()
        return [run_from_row(row) for row in rows]

    async def create_event(self, event_id: str, topic: str, payload: str, now: float) -> bool:
        async with self._tx() as conn:
            cursor = await conn.execute(INSERT_EVENT, (event_id, topic, payload, now))
            if cursor.rowcount:
                await conn.execute(NOTIFY)
        return cursor.rowcount == 1

    async def pending_events(self, limit: int) -> list[Event]:
        async with self._tx() as conn:
            rows = await (await conn.execute(SELECT_PENDING_EVENTS, (limit,))).fetchall()
        return [event_from_row(row) for row in rows]

    async def mark_dispatched(self, event_ids: Sequence[str], now: float) -> None:
        async with self._tx() as conn:
            await conn.execute(MARK_DISPATCHED, (now, list(event_ids)))

    async def load_schedules(self) -> list[ScheduleState]:
        async with self._tx() as conn:
            rows = await (await conn.execute(SELECT_SCHEDULES)).fetchall()
        return [ScheduleState(*row) for row in rows]

    async def save_schedule(self, state: ScheduleState, now: float) -> None:
        params = {
            "agent": state.agent,
            "spec": state.spec,
            "anchor": state.anchor_at,
            "last": state.last_fire_at,
            "now": now,
        }
        async with self._tx() as conn:
            await conn.execute(SAVE_SCHEDULE, params)

    async def restart_runs(
        self, agents: Sequence[str], reason: str, now: float
    ) -> list[tuple[str, str]]:
        async with self._tx() as conn:
            cursor = await conn.execute(RESTART_RUNS, (reason, now, list(agents)))
            restarted = [(row[0], row[1]) for row in await cursor.fetchall()]
            if restarted:
                await conn.execute(NOTIFY)
        return restarted

    async def update_breaker(
        self, name: str, change: Callable[[BreakerState], tuple[T, BreakerState]]
    ) -> T:
        async with self._tx(single=True) as conn:
            row = await (await conn.execute(PEEK_BREAKER, (name,))).fetchone()
        current = BreakerState(*row) if row else BreakerState(name)
        result, new = change(current)
        if new == current:
            return result  # a healthy breaker's calls neither lock nor write
        async with self._tx() as conn:
            # the first change of a name inserts its row; every change locks it and decides
            # again on what it holds, so two nodes never act on one stale state
            await conn.execute(INSERT_BREAKER, (name, time.time()))
            row = await (await conn.execute(SELECT_BREAKER, (name,))).fetchone()
            current = BreakerState(*row) if row else BreakerState(name)
            result, new = change(current)
            if new != current:
                values = (name, new.state, new.failures, new.opened_at, new.trials, time.time())
                await conn.execute(SAVE_BREAKER, values)
        return result

    async def list_breakers(self) -> list[BreakerState]:
        async with self._tx() as conn:
            rows = await (await conn.execute(SELECT_BREAKERS)).fetchall()
        return [BreakerState(*row) for row in rows]

    async def take_token(
        self, key: str, rate: Rate, now: float, max_wait: float
    ) -> tuple[bool, float]:
        async with self._tx() as conn:
            # the first use of a key inserts a full bucket; later ones lock it for the take
            await conn.execute(INSERT_BUCKET, (key, float(rate.count), now))
            row = await (await conn.execute(LOCK_BUCKET, (key,))).fetchone()
            assert row is not None
            held, at = row
            tokens, wait, reserved = rate.reserve(held, now - at, max_wait)
            if reserved:
                await conn.execute(SAVE_BUCKET, (key, tokens, max(at, now)))
        return reserved, wait

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
        async with self._tx() as conn:
            await conn.execute(UPSERT_NODE, values)

    async def remove_node(self, node_id: str) -> None:
        async with self._tx() as conn:
            await conn.execute(DELETE_NODE, (node_id,))

    async def list_nodes(self) -> list[NodeInfo]:
        async with self._tx() as conn:
            rows = await (await conn.execute(SELECT_NODES)).fetchall()
        return [NodeInfo(*row) for row in rows]

    async def version_summary(self) -> list[tuple[str | None, str, int]]:
        async with self._tx() as conn:
            rows = await (await conn.execute(VERSION_SUMMARY)).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]


async def _grants(
    conn: Connection, limits: Sequence[FlowLimit], now: float
) -> dict[str, Allowance]:
    """Serialise claimers of each limited agent (advisory locks, always taken in name
    order so two claimers cannot deadlock) and work out what this claim may take."""
    grants: dict[str, Allowance] = {}
    for flow in sorted(limits, key=lambda f: f.agent):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"nonstop:{flow.agent}",))
        running = await (await conn.execute(COUNT_RUNNING, (flow.agent, now))).fetchone()
        bucket = await (
            await conn.execute(SELECT_BUCKET, (BUCKET_KEY.format(flow.agent),))
        ).fetchone()
        grant = allowance(flow, running[0] if running else 0, bucket, now)
        grants[flow.agent] = grant
        if grant.reason is not None:
            await conn.execute(HOLD_BACK, (grant.reason, flow.agent, now))
    return grants


async def _histories(conn: Connection, run_ids: list[str]) -> dict[str, History]:
    """Step records and current-attempt failures of several runs, in two queries."""
    steps: dict[str, dict[int, StepRecord]] = {run_id: {} for run_id in run_ids}
    for row in await (await conn.execute(SELECT_STEPS_OF, (run_ids,))).fetchall():
        record = step_from_row(row)
        steps[record.run_id][record.seq] = record
    attempts: dict[str, dict[int, list[Attempt]]] = {run_id: {} for run_id in run_ids}
    for row in await (await conn.execute(SELECT_ATTEMPTS_OF, (run_ids,))).fetchall():
        attempt = attempt_from_row(row)
        attempts[attempt.run_id].setdefault(attempt.seq, []).append(attempt)
    return {run_id: History(steps[run_id], attempts[run_id]) for run_id in run_ids}


async def _migrate(conn: Connection) -> list[int]:
    """Apply pending migrations; concurrent migrators queue on an advisory lock."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
        " name text NOT NULL, applied_at double precision NOT NULL)"
    )
    rows = await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()
    done = {row[0] for row in rows}
    applied = []
    for version, name, sql in migrations.load("postgres"):
        if version in done:
            continue
        await conn.execute(sql.encode())
        await conn.execute(
            "INSERT INTO schema_migrations VALUES (%s, %s, extract(epoch from now()))",
            (version, name),
        )
        applied.append(version)
    return applied
