"""The Store protocol: the atomic domain verbs every backend implements.

The store keeps and claims; it never decides. Replay, retries and policies live above it,
in the executor. Every verb is one transaction: it happens entirely or not at all. Verbs
that act on a running run take the caller's `owner` (its node id) and raise `LeaseLost`
when that owner no longer holds the run's lease, so a node that was presumed dead can
never overwrite the work of the node that took over.

Timestamps are UTC epoch seconds (floats). JSON payloads travel as text so that checksums
are computed over exactly the bytes that were stored.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from nonstop.errors import NonstopError
from nonstop.models import (
    JSON,
    Attempt,
    Event,
    History,
    Incident,
    Run,
    RunStatus,
    ScheduleState,
    StepRecord,
    Stop,
)
from nonstop.policies.breaker import BreakerState
from nonstop.policies.ratelimit import Rate

T = TypeVar("T")


class LeaseLost(NonstopError):
    """The caller no longer owns the run: its lease expired and another owner took it, or the
    run was finished or cancelled meanwhile. The caller must drop the run without writing."""


@dataclass(frozen=True, slots=True)
class NewRun:
    id: str
    agent: str
    input: dict[str, JSON]
    app_version: str | None = None  # None: whichever version first executes it
    parent_id: str | None = None
    priority: int = 0
    not_before: float | None = None  # the run is not claimable before this time
    route: float = field(default_factory=random.random)  # canary routing of fresh runs
    scheduled_at: float | None = None  # a schedule's fire: the time it was due


@dataclass(frozen=True, slots=True)
class Claimed:
    """A run handed to one owner, with the history its replay needs."""

    run: Run
    history: History
    recovered: bool  # its previous owner's lease had expired
    previous_version: str | None = None  # the app version it ran under before this claim


@dataclass(frozen=True, slots=True)
class Routing:
    """Which runs a node of app version `version` claims during a rolling deploy.

    Runs that never ran are fresh: the node takes those whose `route` lies in `fresh`
    (a canary takes `[0, share)`, the others the rest). Runs that ran under `version` are
    its own. Runs of another version are left to that version while one of its nodes is
    alive (`live_versions`), and adopted otherwise."""

    version: str
    fresh: tuple[float, float] = (0.0, 1.0)
    live_versions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FlowLimit:
    """Per-agent limits that hold across every node: runs executing at once, and runs
    started per period (a token bucket in the store). Excess runs wait as `pending`."""

    agent: str
    concurrency: int | None = None
    rate: Rate | None = None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A serving node as it registers itself in the store."""

    id: str
    app: str
    version: str
    canary_share: float
    hostname: str
    pid: int
    started_at: float
    last_seen: float
    state: str = "serving"  # or "shutting_down": draining, its alarms quiet (see node.py)
    memory_limits: str = ""  # how it enforces isolated runs' memory_mb, and why


def wake_on_work(store: Store, event: asyncio.Event) -> None:
    """Set `event`, on the running loop, whenever `store` announces work (`on_work` may
    call from another thread, so the set is handed to the loop)."""
    loop = asyncio.get_running_loop()

    def wake() -> None:
        loop.call_soon_threadsafe(event.set)

    store.on_work(wake)


class Store(Protocol):
    """Durable state of a nonstop app. Implementations: SQLite and PostgreSQL."""

    url: str

    async def open(self) -> None:
        """Connect and apply pending migrations. Safe to call from several processes at once."""

    async def close(self) -> None:
        """Flush pending writes and release connections. Idempotent."""

    async def ping(self) -> None:
        """Raise StoreError unless the database answers (readiness probes)."""

    def on_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) whenever runs may have become due: created,
        replayed, resumed, released or expired, in this process or, where the backend can
        tell (PostgreSQL's NOTIFY), in any other. Pollers still poll: this only shortens
        the wait."""

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, new: NewRun, now: float) -> tuple[Run, bool]:
        """Insert a `pending` run unless one with `new.id` exists.

        Returns the run and whether this call created it. Concurrent calls with one id, from
        any number of processes, create exactly one run; the others get that run back."""

    async def get_run(self, run_id: str) -> Run | None:
        """The run's current row, or None."""

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """Runs newest first, filtered; `limit=0` means all."""

    async def load_history(self, run_id: str) -> History:
        """All step records and failed attempts of the run."""

    async def list_attempts(self, run_id: str) -> list[Attempt]:
        """Every failed try of every step of the run, across all its attempts, in order."""

    async def list_incidents(self, run_id: str | None = None, limit: int = 100) -> list[Incident]:
        """Incidents newest first, of one run or of all."""

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
        """Lease up to `limit` due runs of `agents` to `owner` and mark them `running`.

        Due means: `pending` or `sleeping` whose wake time has come, or `running` whose lease
        expired (its owner is presumed dead; an incident `recovered` is recorded). Earliest
        due first (higher priority before). A run is never leased to two owners at once.
        With `routing`, only the runs that routing gives this node, and each claimed run
        records its version. `limits` hold across all claimers; runs they hold back stay
        pending and say why."""

    async def renew_leases(self, owner: str, *, now: float, lease_ttl: float) -> dict[str, Stop]:
        """Extend every lease `owner` holds; return its runs that were asked to cancel or
        pause, with the request."""

    async def expire_leases(self, owners: Sequence[str], now: float) -> int:
        """Expire the live leases of `owners` (known dead): their runs become due before any
        run waiting in the queue. Returns how many leases were expired (0 when already so)."""

    async def lease_owners(self) -> set[str]:
        """Owners currently holding at least one lease."""

    async def release_leases(self, owner: str, now: float) -> int:
        """Hand back every run `owner` holds as due `pending` (graceful shutdown)."""

    async def next_due(self, agents: Sequence[str]) -> float | None:
        """The earliest time at which a run of `agents` becomes claimable, or None."""

    # -- progress of a leased run ---------------------------------------------------------

    async def record_step(self, owner: str, record: StepRecord, *, beat: bool = True) -> Stop:
        """Commit a step's outcome; return what the run was asked (cancel, pause or none).

        The record is written at most once per `(run_id, seq)`. With `beat`, the run's
        heartbeat time is set to the step's end (callers beat at most every second or so:
        it is the only per-step write to the run's row). Raises LeaseLost (writing
        nothing) if `owner` does not hold the run."""

    async def record_attempt(self, owner: str, attempt: Attempt) -> None:
        """Commit a failed try of a step, with when the next try may start."""

    async def heartbeat(
        self, owner: str, run_id: str, status: str, fields: dict[str, JSON], now: float
    ) -> Stop:
        """Record a heartbeat from inside the run; return what it was asked (see Stop)."""

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
        """Release the lease and park the run (`sleeping`, `waiting`, `pending` or `paused`)
        until `wake_at`, committing `record` in the same transaction when given.

        A run parked to wait for a signal (`wake_on_signal`) or for its children
        (`children_seen_finished`: how many of them it saw finished) is due at once if the
        signal is already there or more children have finished: no wake-up falls between
        the look and the park."""

    async def retry_run(
        self, owner: str, run_id: str, *, wake_at: float, error: dict[str, JSON], now: float
    ) -> None:
        """End the current attempt with `error` and park the run until `wake_at` for the
        next one. Recorded step errors are dropped so the failed steps run again; completed
        steps stay."""

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
        """Move the run to a final status (`completed`, `dead`, `cancelled`) and release it.
        A waiting parent run is woken (made due) in the same transaction."""

    async def continue_run(self, owner: str, run_id: str, new: NewRun, now: float) -> None:
        """End the run as `completed` (output `{"continued_as": new.id}`) and create `new`,
        in one transaction: a forever-agent's chain never breaks and never forks."""

    # -- operator verbs -------------------------------------------------------------------

    async def request_cancel(self, run_id: str, now: float) -> Run:
        """Cancel a run. A run nobody executes is cancelled at once; a running one is flagged
        and its owner stops it. Finished runs are returned unchanged. Raises RunNotFound."""

    async def request_pause(self, run_id: str, reason: str, now: float) -> Run:
        """Pause a run. A run nobody executes (pending, sleeping, waiting) is `paused` at
        once with `reason`; a running one is flagged (unless a cancel is asked already) and
        its owner parks it at its next step boundary. A paused run is returned unchanged.
        Raises RunNotFound, or InvalidState (changing nothing) for a finished run."""

    async def replay_dead(self, run_id: str | None, now: float) -> list[Run]:
        """Put a dead run (or, with None, every dead run) back to `pending` as a new attempt,
        resuming from its last good checkpoint. Returns the runs replayed. Raises
        RunNotFound for an unknown id and leaves non-dead runs untouched."""

    async def resume_run(self, run_id: str, now: float) -> Run:
        """Make a `paused` run due again. Raises RunNotFound, or InvalidState (changing
        nothing) when the run is not paused."""

    async def add_incident(self, incident: Incident) -> None:
        """Append to the incident log."""

    # -- signals, children, events, schedules ---------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, now: float) -> Run:
        """Keep a signal for the run (consumed by its next `wait_for(name)`, even one that
        comes later) and wake the run if it waits. Raises RunNotFound, or InvalidState for
        a finished run."""

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
        """Consume the oldest kept signal `name` of the run (sent no later than `sent_by`,
        when given: a wait's deadline) and record its payload as step `seq`, in one
        transaction; None (changing nothing) when there is none."""

    async def list_children(self, parent_id: str) -> list[Run]:
        """Runs started by `ctx.call`/`ctx.map` of the run, oldest first."""

    async def create_event(self, event_id: str, topic: str, payload: str, now: float) -> bool:
        """Store an event (idempotent by id); True if this call stored it."""

    async def pending_events(self, limit: int) -> list[Event]:
        """Events not yet dispatched to their subscribers, oldest first."""

    async def mark_dispatched(self, event_ids: Sequence[str], now: float) -> None:
        """Mark events as dispatched (their runs exist)."""

    async def load_schedules(self) -> list[ScheduleState]:
        """The remembered state of every schedule."""

    async def save_schedule(self, state: ScheduleState, now: float) -> None:
        """Insert or advance a schedule's state: the first anchor is kept, and the last
        fire time only moves forward (two nodes firing the same time agree)."""

    async def restart_runs(
        self, agents: Sequence[str], reason: str, now: float
    ) -> list[tuple[str, str]]:
        """Take every running run of `agents` from its owner and make it due at once, to
        resume from its checkpoints (a supervision strategy restarting siblings). Their
        owners' next writes fail with LeaseLost. Returns (run id, agent) pairs."""

    async def update_breaker(
        self, name: str, change: Callable[[BreakerState], tuple[T, BreakerState]]
    ) -> T:
        """Read breaker `name` (a fresh closed one if unknown), apply `change` and store the
        state it returns, atomically: two runs on two nodes never both see the old state.
        Returns what `change` returned first."""

    async def list_breakers(self) -> list[BreakerState]:
        """Every breaker's stored state."""

    async def take_token(
        self, key: str, rate: Rate, now: float, max_wait: float
    ) -> tuple[bool, float]:
        """Reserve the next token of the bucket `key` (full when first used), refilled per
        `rate` (`Rate.reserve`): `(True, wait)` when it is due within `max_wait` (use it
        after `wait` seconds), else `(False, wait)` with nothing taken (ask again after
        `wait`). Atomic: all nodes share one bucket per key, and a node whose clock lags
        never winds the bucket's time back."""

    # -- nodes and versions -----------------------------------------------------------------

    async def register_node(self, node: NodeInfo) -> None:
        """Insert or refresh the node's row (its `last_seen` says it is alive)."""

    async def remove_node(self, node_id: str) -> None:
        """Forget a node that stopped (or is known dead)."""

    async def list_nodes(self) -> list[NodeInfo]:
        """Every registered node, live or not, oldest first."""

    async def version_summary(self) -> list[tuple[str | None, str, int]]:
        """(app version, status, number of runs) for every pair that has runs."""
