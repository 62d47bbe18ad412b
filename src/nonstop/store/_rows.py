"""Rows to records, shared by every backend: one column order, one JSON encoding."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from nonstop.models import JSON, Attempt, Event, Run, RunStatus, StepRecord, StepStatus, Stop

if TYPE_CHECKING:
    from nonstop.store.base import NewRun

RUN_FIELDS = (
    "id", "agent", "status", "input", "output", "error", "attempt", "priority",
    "app_version", "parent_id", "wake_at", "wait_reason", "lease_owner", "lease_expires",
    "cancel_requested", "heartbeat_at", "heartbeat", "created_at", "updated_at",
    "started_at", "finished_at", "scheduled_at", "pause_requested",
)  # fmt: skip
STOP_REQUESTED = "CASE WHEN cancel_requested THEN 1 WHEN pause_requested THEN 2 ELSE 0 END"
"""What an operator asked of a run, as a `Stop` code: a cancel overrides a pause."""
PAUSING = "(pause_requested AND NOT cancel_requested)"
"""True for a run whose next park must be a pause instead."""
STEP_FIELDS = (
    "run_id", "seq", "name", "status", "payload", "checksum", "attempts", "started_at",
    "finished_at",
)  # fmt: skip
ATTEMPT_FIELDS = (
    "run_id", "seq", "run_attempt", "attempt", "name", "error", "started_at", "finished_at",
    "retry_at",
)  # fmt: skip

Row = tuple[Any, ...]


def dumps(value: JSON) -> str:
    """The one JSON encoding of stored payloads (compact; checksums are over this text)."""
    return json.dumps(value, separators=(",", ":"))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def run_from_row(row: Row) -> Run:
    """A `Run` from a row selected as `RUN_FIELDS`."""
    return Run(
        id=row[0],
        agent=row[1],
        status=RunStatus(row[2]),
        input=json.loads(row[3]),
        output=_loads(row[4]),
        error=_loads(row[5]),
        attempt=row[6],
        priority=row[7],
        app_version=row[8],
        parent_id=row[9],
        wake_at=row[10],
        wait_reason=row[11],
        lease_owner=row[12],
        lease_expires=row[13],
        stop_requested=Stop.CANCEL if row[14] else Stop.PAUSE if row[22] else Stop.NONE,
        heartbeat_at=row[15],
        heartbeat=_loads(row[16]),
        created_at=row[17],
        updated_at=row[18],
        started_at=row[19],
        finished_at=row[20],
        scheduled_at=row[21],
    )


NEW_RUN_FIELDS = (
    "id", "agent", "input", "priority", "app_version", "parent_id", "due_at", "wake_at",
    "created_at", "updated_at", "route", "scheduled_at",
)  # fmt: skip


def new_run_values(new: NewRun, now: float) -> Row:
    """Parameters in `NEW_RUN_FIELDS` order for inserting a `pending` run."""
    due = now if new.not_before is None else max(now, new.not_before)
    return (
        new.id,
        new.agent,
        dumps(new.input),
        new.priority,
        new.app_version,
        new.parent_id,
        due,
        new.not_before,
        now,
        now,
        new.route,
        new.scheduled_at,
    )


def step_from_row(row: Row) -> StepRecord:
    return StepRecord(
        run_id=row[0],
        seq=row[1],
        name=row[2],
        status=StepStatus(row[3]),
        payload=row[4],
        checksum=row[5],
        attempts=row[6],
        started_at=row[7],
        finished_at=row[8],
    )


def step_values(record: StepRecord) -> Row:
    """Parameters in `STEP_FIELDS` order."""
    return (
        record.run_id,
        record.seq,
        record.name,
        str(record.status),
        record.payload,
        record.checksum,
        record.attempts,
        record.started_at,
        record.finished_at,
    )


def attempt_from_row(row: Row) -> Attempt:
    return Attempt(
        run_id=row[0],
        seq=row[1],
        run_attempt=row[2],
        attempt=row[3],
        name=row[4],
        error=json.loads(row[5]),
        started_at=row[6],
        finished_at=row[7],
        retry_at=row[8],
    )


def attempt_values(attempt: Attempt) -> Row:
    """Parameters in `ATTEMPT_FIELDS` order."""
    return (
        attempt.run_id,
        attempt.seq,
        attempt.run_attempt,
        attempt.attempt,
        attempt.name,
        dumps(attempt.error),
        attempt.started_at,
        attempt.finished_at,
        attempt.retry_at,
    )


def event_from_row(row: Row) -> Event:
    return Event(
        id=row[0],
        topic=row[1],
        payload=json.loads(row[2]),
        created_at=row[3],
        dispatched_at=row[4],
    )
