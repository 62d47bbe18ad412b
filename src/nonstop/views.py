"""What people and scripts see of runs: JSON-ready dicts and the "why not done?" sentence.

The CLI and the HTTP API both render through here, so a run reads the same everywhere.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from nonstop.context import iso
from nonstop.errors import RunNotFound
from nonstop.models import (
    Attempt,
    Incident,
    Run,
    RunStatus,
    StepRecord,
    StepStatus,
    Stop,
)

if TYPE_CHECKING:
    from nonstop.store.base import Store


def _when(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def why(run: Run, now: float) -> str:
    """One sentence saying what a run is doing or waiting for. Never empty."""
    status = run.status
    if status == RunStatus.COMPLETED:
        return f"completed at {_when(run.finished_at)}"
    if status == RunStatus.CANCELLED:
        return f"cancelled at {_when(run.finished_at)}"
    if status == RunStatus.DEAD:
        message = (run.error or {}).get("message", "")
        return f"dead after {run.attempt} attempt(s): {message}; in the dead-letter queue"
    if status == RunStatus.RUNNING:
        node = run.lease_owner or "?"
        if run.lease_expires is not None and run.lease_expires < now:
            return (
                f"lease expired: node {node} presumed dead, recovery due since"
                f" {_when(run.lease_expires)}"
            )
        beat = _when(run.heartbeat_at or run.started_at)
        asked = {Stop.CANCEL: "; cancel requested", Stop.PAUSE: "; pause requested"}
        return f"running on node {node} (last heartbeat {beat}){asked.get(run.stop_requested, '')}"
    if status == RunStatus.PENDING:
        if run.wake_at is not None and run.wake_at > now:
            return f"pending until {_when(run.wake_at)}"
        if run.wait_reason:
            return f"pending: {run.wait_reason}"
        return "pending: waiting for a node with a free slot"
    return run.wait_reason or f"{status} since {_when(run.updated_at)}"


def run_dict(run: Run, now: float) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "agent": run.agent,
        "status": str(run.status),
        "attempt": run.attempt,
        "input": run.input,
        "output": run.output,
        "error": run.error,
        "why": why(run, now),
        "created_at": _when(run.created_at),
        "updated_at": _when(run.updated_at),
        "started_at": _when(run.started_at),
        "finished_at": _when(run.finished_at),
        "wake_at": _when(run.wake_at),
        "lease_owner": run.lease_owner,
        "heartbeat_at": _when(run.heartbeat_at),
        "heartbeat": run.heartbeat,
        "app_version": run.app_version,
        "parent_id": run.parent_id,
    }


def step_dict(record: StepRecord) -> dict[str, Any]:
    payload = json.loads(record.payload)
    failed = record.status == StepStatus.FAILED
    return {
        "seq": record.seq,
        "name": record.name,
        "status": str(record.status),
        "attempts": record.attempts,
        "result": None if failed else payload,
        "error": payload if failed else None,
        "started_at": _when(record.started_at),
        "finished_at": _when(record.finished_at),
        "duration_ms": round((record.finished_at - record.started_at) * 1000, 3),
    }


def attempt_dict(attempt: Attempt) -> dict[str, Any]:
    return {
        "seq": attempt.seq,
        "name": attempt.name,
        "run_attempt": attempt.run_attempt,
        "attempt": attempt.attempt,
        "error": {k: v for k, v in attempt.error.items() if k != "traceback"},
        "started_at": _when(attempt.started_at),
        "duration_ms": round((attempt.finished_at - attempt.started_at) * 1000, 3),
        "retry_at": _when(attempt.retry_at),
    }


def incident_dict(incident: Incident) -> dict[str, Any]:
    return {
        "run_id": incident.run_id,
        "agent": incident.agent,
        "kind": incident.kind,
        "detail": incident.detail,
        "at": _when(incident.at),
    }


def run_detail(
    run: Run,
    steps: list[StepRecord],
    attempts: list[Attempt],
    incidents: list[Incident],
    now: float,
    children: list[Run] | None = None,
) -> dict[str, Any]:
    """A run with its steps (compensations last), failed attempts, incidents and child
    runs by status: what `show` prints."""
    counts: dict[str, int] = {}
    for child in children or []:
        counts[str(child.status)] = counts.get(str(child.status), 0) + 1
    ordered = sorted(steps, key=lambda s: (s.seq < 0, abs(s.seq)))
    return {
        **run_dict(run, now),
        "steps": [step_dict(s) for s in ordered],
        "attempts": [attempt_dict(a) for a in attempts],
        "incidents": [incident_dict(i) for i in incidents],
        "children": counts,
    }


async def load_detail(store: Store, run_id: str) -> dict[str, Any]:
    """Read everything `show` and `GET /api/runs/{id}` display about a run; RunNotFound
    if there is no such run."""
    run = await store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    history = await store.load_history(run_id)
    return run_detail(
        run,
        list(history.steps.values()),
        await store.list_attempts(run_id),
        await store.list_incidents(run_id),
        time.time(),
        await store.list_children(run_id),
    )
