"""Plain records the store returns: runs, step records and attempts, all frozen."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

JSON = Any
"""A value that survives `json.dumps`/`json.loads` unchanged."""


class RunStatus(enum.StrEnum):
    """Where a run is in its life. Parked states hold no worker slot."""

    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"  # durable timer: ctx.sleep or a retry backoff
    WAITING = "waiting"  # a signal or an approval
    PAUSED = "paused"  # stopped by a policy or an error that needs a human
    COMPLETED = "completed"
    DEAD = "dead"  # retries exhausted; listed in the DLQ
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.DEAD, RunStatus.CANCELLED})


class Stop(enum.IntEnum):
    """What an operator asked of a running run; the node executing it acts on it."""

    NONE = 0
    CANCEL = 1  # stop now (an in-flight step is abandoned); compensations run
    PAUSE = 2  # park as `paused` at the next step boundary; `resume` continues it


PAUSED_BY_REQUEST = "paused on request; `nonstop resume` continues it"
"""The reason of a run an operator paused (`nonstop pause`, `POST /api/runs/{id}/pause`)."""


class StepStatus(enum.StrEnum):
    COMPLETED = "completed"  # result recorded
    FAILED = "failed"  # final error recorded (retries of the step exhausted)


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    agent: str
    status: RunStatus
    input: dict[str, JSON]
    attempt: int  # 1-based; grows on each run-level retry or DLQ replay
    created_at: float  # all timestamps: UTC epoch seconds
    updated_at: float
    output: JSON = None
    error: dict[str, JSON] | None = None  # {"type", "message", "traceback"}
    wake_at: float | None = None
    wait_reason: str | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    stop_requested: Stop = Stop.NONE
    heartbeat_at: float | None = None
    heartbeat: dict[str, JSON] | None = None
    app_version: str | None = None
    parent_id: str | None = None
    priority: int = 0
    scheduled_at: float | None = None  # for scheduled runs: the time it was due to fire

    @property
    def cancel_requested(self) -> bool:
        return self.stop_requested == Stop.CANCEL

    @property
    def pause_requested(self) -> bool:
        return self.stop_requested == Stop.PAUSE


@dataclass(frozen=True, slots=True)
class StepRecord:
    """The durable outcome of the step at position `seq` of a run."""

    run_id: str
    seq: int
    name: str
    status: StepStatus
    payload: str  # JSON text: the result when completed, the error object when failed
    checksum: str  # of (seq, name, status, payload); checked before replay trusts it
    attempts: int
    started_at: float
    finished_at: float


def checksum(seq: int, name: str, status: str, payload: str) -> str:
    """Fingerprint of a step record; replay refuses a record whose fingerprint differs."""
    data = f"{seq}\x1f{name}\x1f{status}\x1f{payload}".encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def completed_step(run_id: str, seq: int, name: str, payload: str, at: float) -> StepRecord:
    """A step record of an outcome that took no time to produce (a timer, a signal)."""
    status = StepStatus.COMPLETED
    return StepRecord(
        run_id, seq, name, status, payload, checksum(seq, name, status, payload), 1, at, at
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed try of a step, kept for `show` and to make retry waits durable."""

    run_id: str
    seq: int
    run_attempt: int
    attempt: int
    name: str
    error: dict[str, JSON]
    started_at: float
    finished_at: float
    retry_at: float | None  # when the next try may start; None when none follows


@dataclass(frozen=True, slots=True)
class History:
    """Everything replay needs about a run, read in one go when it is claimed."""

    steps: dict[int, StepRecord] = field(default_factory=dict)
    attempts: dict[int, list[Attempt]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Incident:
    run_id: str | None
    agent: str | None
    kind: str  # recovered, timeout, non_determinism, corrupt_checkpoint, ...
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event: each agent subscribed to its topic runs once for it."""

    id: str
    topic: str
    payload: dict[str, JSON]
    created_at: float
    dispatched_at: float | None = None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What the store remembers of an agent's schedule, so fires survive restarts."""

    agent: str
    spec: str
    anchor_at: float  # when the schedule was first seen: nothing before it is "missed"
    last_fire_at: float | None  # the latest scheduled time handled (fired or skipped)
