"""Scheduler: fires schedules as runs with deterministic ids, and dispatches stored events.

Every node runs one. Fires and event dispatches are idempotent by run id
(`"{agent}@{scheduled time}"`, `"{agent}@evt:{event id}"`), so any number of nodes, a
restart, or a crash between creating a run and recording the fire never start one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
from typing import TYPE_CHECKING

from nonstop.context import iso
from nonstop.models import Event, ScheduleState
from nonstop.observe.logging import get_logger
from nonstop.store.base import NewRun, Store, wake_on_work

if TYPE_CHECKING:
    from nonstop.app import Agent, App

log = get_logger("nonstop.scheduler")

_MAX_SLEEP = 1.0  # seconds between looks even when nothing is due (new events, other nodes)
_EVENT_BATCH = 200


def fire_id(agent: str, scheduled_at: float) -> str:
    return f"{agent}@{iso(scheduled_at)}"


def subscribers(agents: list[Agent], topic: str) -> list[Agent]:
    """Agents whose `on=` patterns (exact topics or globs like `lead.*`) match `topic`."""
    return [a for a in agents if any(fnmatch.fnmatchcase(topic, p) for p in a.topics)]


class Scheduler:
    """Fires the app's schedules and dispatches events, on the node's event loop."""

    def __init__(self, app: App, store: Store) -> None:
        self.app = app
        self.store = store
        self.scheduled = [a for a in app.agents.values() if a.schedule is not None]
        self.listening = [a for a in app.agents.values() if a.topics]
        self._states: dict[str, ScheduleState] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_tick = time.monotonic()
        self.fired = 0  # fires this node created (not counting ones another node made first)

    @property
    def needed(self) -> bool:
        return bool(self.scheduled or self.listening)

    async def start(self) -> None:
        wake_on_work(self.store, self._wakeup)
        await self._load()
        self._task = asyncio.create_task(self._loop(), name="nonstop-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _load(self) -> None:
        """Remember each schedule: a schedule seen for the first time fires from now on."""
        stored = {s.agent: s for s in await self.store.load_schedules()}
        now = time.time()
        for agent in self.scheduled:
            assert agent.schedule is not None
            state = stored.get(agent.name) or ScheduleState(
                agent.name, agent.schedule.spec, now, None
            )
            self._states[agent.name] = state
            await self.store.save_schedule(state, now)

    async def _loop(self) -> None:
        failures = 0
        while True:
            self.last_tick = time.monotonic()
            self._wakeup.clear()
            try:
                await self.fire_due(time.time())
                await self.dispatch_events()
                failures = 0
            except Exception as exc:
                failures += 1
                log.error("scheduler_failed", error=str(exc), failures=failures)
            delay = min(self._next_fire() - time.time(), _MAX_SLEEP)
            if failures:
                delay = min(0.5 * 2**failures, 10.0)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()

    def _next_fire(self) -> float:
        soonest = time.time() + _MAX_SLEEP
        for agent in self.scheduled:
            assert agent.schedule is not None
            state = self._states[agent.name]
            since = state.last_fire_at if state.last_fire_at is not None else state.anchor_at
            soonest = min(soonest, agent.schedule.next_after(since))
        return soonest

    async def fire_due(self, now: float) -> int:
        """Create the runs of every due fire; return how many this call created.

        All due fires are created together (they share one commit, so the hundredth
        schedule is not a hundred commits late), then all schedule states are saved: only
        after the runs exist, so a crash in between fires the same ids again, which the
        store turns into no-ops. Skipped times count as handled too."""
        fires: list[tuple[Agent, NewRun]] = []
        states: list[ScheduleState] = []
        for agent in self.scheduled:
            schedule = agent.schedule
            assert schedule is not None
            state = self._states[agent.name]
            since = state.anchor_at if state.last_fire_at is None else state.last_fire_at
            handled = schedule.latest(since, now)
            if handled is None:
                continue
            for t in schedule.due(state.last_fire_at, state.anchor_at, now):
                new = NewRun(
                    id=fire_id(agent.name, t),
                    agent=agent.name,
                    input={},
                    priority=agent.priority,
                    scheduled_at=t,
                    not_before=t + schedule.jitter_for(agent.name, t),
                )
                fires.append((agent, new))
            states.append(ScheduleState(agent.name, schedule.spec, state.anchor_at, handled))
        created = await asyncio.gather(*(self.store.create_run(n, time.time()) for _, n in fires))
        created_total = 0
        for (agent, new), (_, made) in zip(fires, created, strict=True):
            if made:
                created_total += 1
                assert new.scheduled_at is not None
                log.info(
                    "schedule_fired",
                    agent=agent.name,
                    scheduled_at=iso(new.scheduled_at),
                    lateness_ms=round((time.time() - new.scheduled_at) * 1000, 1),
                )
        await asyncio.gather(*(self.store.save_schedule(s, time.time()) for s in states))
        for state in states:
            self._states[state.agent] = state
        self.fired += created_total
        return created_total

    async def dispatch_events(self) -> int:
        """Start each subscribed agent once per stored event; return the runs created."""
        if not self.listening:
            return 0
        created_total = 0
        while True:
            events = await self.store.pending_events(_EVENT_BATCH)
            if not events:
                return created_total
            for event in events:
                created_total += await self._dispatch(event)
            await self.store.mark_dispatched([e.id for e in events], time.time())
            if len(events) < _EVENT_BATCH:
                return created_total

    async def _dispatch(self, event: Event) -> int:
        created_count = 0
        for agent in subscribers(self.listening, event.topic):
            new = NewRun(
                id=f"{agent.name}@evt:{event.id}",
                agent=agent.name,
                input=event.payload,
                priority=agent.priority,
            )
            _, created = await self.store.create_run(new, time.time())
            created_count += created
        return created_count
