"""Executor: claim due runs by lease, replay their handlers, and finish, retry or park them.

One executor per node. It keeps at most `concurrency` runs in flight, renews the leases of
all of them together, recovers runs whose owner died, and stops the work of a run that was
cancelled, timed out or lost its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from nonstop.context import (
    MEMORY_EXIT,
    Context,
    Interrupt,
    SyncContext,
    encode,
    error_info,
    iso,
    isolation_child,
)
from nonstop.errors import (
    ChildDied,
    CorruptCheckpoint,
    InvalidInput,
    LoopDetected,
    NonDeterminismError,
    RunTimeout,
    StepFailed,
    ToolDenied,
)
from nonstop.isolation import drain_children, memory_limits, run_in_child
from nonstop.models import PAUSED_BY_REQUEST, Incident, RunStatus, Stop
from nonstop.observe.alerts import Alerts
from nonstop.observe.logging import get_logger
from nonstop.policies.durations import seconds
from nonstop.policies.retry import gives_up
from nonstop.store.base import (
    Claimed,
    FlowLimit,
    LeaseLost,
    NodeInfo,
    Routing,
    Store,
    wake_on_work,
)

if TYPE_CHECKING:
    from nonstop.app import Agent, App

log = get_logger("nonstop.executor")

_STEP_THREADS = 64
_MAX_BACKOFF = 10.0  # seconds between claims while the store keeps failing
_ANNOUNCE_WITHIN = 2.0  # seconds a draining node gives the store to record shutting_down


def node_id() -> str:
    """`host:pid:start_ms:nonce`: enough to tell, on the same host, whether the owner of a
    lease is still alive (a recycled pid has another start time)."""
    started = int(psutil.Process().create_time() * 1000)
    return f"{socket.gethostname()}:{os.getpid()}:{started}:{os.urandom(3).hex()}"


def owner_is_dead(owner: str) -> bool:
    """True only when `owner` certainly ran on this host and its process is gone."""
    parts = owner.split(":")
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return False
    try:
        pid, started = int(parts[1]), int(parts[2])
    except ValueError:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped: dead
            return True
        return int(process.create_time() * 1000) != started
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


@dataclass(slots=True)
class _Active:
    ctx: Context
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None  # Interrupt.CANCELLED, SHUTDOWN or RESTART
    settling: bool = False  # the handler has ended; only bookkeeping is left
    unhealthy: bool = False  # the watchdog saw it miss its heartbeat timeout
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Executor:
    """Claims runs of `app`'s agents from `store` and drives them to a resting state."""

    def __init__(
        self,
        app: App,
        store: Store,
        *,
        owner: str | None = None,
        concurrency: int = 100,
        lease_ttl: float = 30.0,
        poll_interval: float = 0.5,
        canary_share: float = 0.0,
    ) -> None:
        self.app = app
        self.store = store
        self.owner = owner or node_id()
        self.canary_share = canary_share
        self.routing = Routing(app.version, _fresh_share(canary_share, {}), (app.version,))
        self.limits = [
            FlowLimit(a.name, a.concurrency, a.rate)
            for a in app.agents.values()
            if a.concurrency is not None or a.rate is not None
        ]
        self._started_at = time.time()
        isolated = any(a.isolation == "process" for a in app.agents.values())
        self.memory_limits = memory_limits().detail if isolated and not isolation_child() else ""
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self._active: dict[str, _Active] = {}
        self._settled: dict[str, set[asyncio.Future[None]]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._handler_threads = ThreadPoolExecutor(concurrency, "nonstop-handler")
        self._step_threads = ThreadPoolExecutor(_STEP_THREADS, "nonstop-step")
        self._tasks: list[asyncio.Task[None]] = []
        self.last_tick = time.monotonic()  # when the claim loop last went round (liveness)
        self.alerts = Alerts()

    @property
    def active_runs(self) -> int:
        return len(self._active)

    async def wait_settled(self, run_id: str, timeout: float) -> None:
        """Return when this executor next brings `run_id` to rest (finished, parked,
        retrying, left), or after `timeout`: callers waiting for a run poll less."""
        settled = asyncio.get_running_loop().create_future()
        waiters = self._settled.setdefault(run_id, set())
        waiters.add(settled)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await settled
        finally:
            waiters.discard(settled)
            if not waiters:
                self._settled.pop(run_id, None)

    def notify(self) -> None:
        """Something may be due now (a run was started in this process): claim at once."""
        self._wakeup.set()

    async def start(self) -> None:
        wake_on_work(self.store, self._wakeup)
        await self._recover_orphans()
        await self._refresh_routing()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="nonstop-claim"),
            asyncio.create_task(self._lease_loop(), name="nonstop-leases"),
        ]
        watched = [a.heartbeat_timeout for a in self.app.agents.values() if a.heartbeat_timeout]
        if watched:
            every = min(1.0, min(watched) / 4)
            self._tasks.append(asyncio.create_task(self._watch_loop(every), name="nonstop-watch"))

    async def stop(self, grace_period: float = 30.0) -> None:
        """Stop claiming, let runs in flight reach a resting state within `grace_period`,
        then stop the rest and hand their leases back so another node resumes them."""
        self._stopping = True
        self.alerts.draining = True
        self._wakeup.set()
        drain_children()  # isolated runs' children keep working, their alarms quiet too
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_ANNOUNCE_WITHIN):  # a down database must not eat the grace
                await self.store.register_node(self._node_info(time.time()))
        waiting = [a.done.wait() for a in self._active.values()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_period):
                    await asyncio.gather(*waiting)
        for run_id in list(self._active):
            self._stop_run(run_id, Interrupt.SHUTDOWN)
        remaining = [a.done.wait() for a in self._active.values()]
        if remaining:
            await asyncio.gather(*remaining)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.release_leases(self.owner, time.time())
            await self.store.remove_node(self.owner)
        self._handler_threads.shutdown(wait=False, cancel_futures=True)
        self._step_threads.shutdown(wait=False, cancel_futures=True)

    # -- loops ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        agents = list(self.app.agents)
        failures = 0
        while not self._stopping:
            self.last_tick = time.monotonic()
            self._wakeup.clear()
            free = self.concurrency - len(self._active)
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await self.store.claim_runs(
                        self.owner,
                        agents=agents,
                        limit=free,
                        now=time.time(),
                        lease_ttl=self.lease_ttl,
                        routing=self.routing,
                        limits=self.limits,
                    )
                except Exception as exc:
                    # the store is down or failing: back off, say so once per attempt
                    failures += 1
                    backoff = min(self.poll_interval * 2**failures, _MAX_BACKOFF)
                    log.error("claim_failed", error=str(exc), retry_in=round(backoff, 2))
                    await self._wait(backoff)
                    continue
                failures = 0
                for item in claimed:
                    self._launch(item)
            if claimed and len(claimed) == free:
                await self._wait(self.poll_interval)  # full: a finishing run wakes us
                continue
            delay = self.poll_interval
            with contextlib.suppress(Exception):
                due = await self.store.next_due(agents)
                if due is not None:
                    delay = min(delay, max(due - time.time(), 0.0))
            if delay > 0:
                await self._wait(delay)

    async def _wait(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wakeup.wait()

    async def _watch_loop(self, every: float) -> None:
        """The watchdog: a run whose handler made no progress (no step completed, no
        `ctx.heartbeat`) within its agent's `heartbeat_timeout` is unhealthy; after two
        timeouts it is stopped (a wedged sync handler is abandoned) and restarted per its
        agent's restart policy. Catches handlers stuck in a blocking call, not only dead
        processes."""
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for run_id, active in list(self._active.items()):
                limit = self.app.agents[active.ctx.agent].heartbeat_timeout
                if limit is None or active.settling or active.stop_reason is not None:
                    continue
                silent = now - active.ctx.last_beat
                if silent > limit and not active.unhealthy:
                    active.unhealthy = True
                    detail = f"no heartbeat or step for {silent:.1f}s (timeout {limit:g}s)"
                    log.warning(
                        "missed_heartbeat",
                        agent=active.ctx.agent,
                        run_id=run_id,
                        silent_s=round(silent, 3),
                    )
                    with contextlib.suppress(Exception):
                        await self.store.add_incident(
                            Incident(
                                run_id, active.ctx.agent, "missed_heartbeat", detail, time.time()
                            )
                        )
                if silent > 2 * limit:
                    self.alerts.fire(
                        "missed_heartbeat",
                        agent=active.ctx.agent,
                        run_id=run_id,
                        silent_s=round(silent, 3),
                    )
                    self._stop_run(run_id, Interrupt.RESTART)

    async def _restart(self, agent: Agent, run_id: str, reason: str) -> None:
        """Park a stopped or crashed run for a restart after the policy's cooldown, or,
        after too many restarts within the window, pause it for a human (`escalated`)."""
        now = time.time()
        policy = agent.restart
        recent = 0
        if policy is not None:
            since = now - seconds(policy.window)
            incidents = await self.store.list_incidents(run_id, limit=10_000)
            recent = sum(1 for i in incidents if i.kind == "restarted" and i.at >= since)
            if not policy.decide(recent):
                why = f"escalated after {recent} restart(s) ({reason})"
                await self._pause(run_id, f"paused: {why}; `nonstop resume` continues it", now)
                await self.store.add_incident(Incident(run_id, agent.name, "escalated", why, now))
                self.alerts.fire("escalated", agent=agent.name, run_id=run_id, reason=why)
                return
        wake = now + (0.0 if policy is None else seconds(policy.cooldown))
        count = f"{recent + 1}" + ("" if policy is None else f" of {policy.max_restarts}")
        await self.store.park_run(
            self.owner,
            run_id,
            status=RunStatus.SLEEPING,
            wake_at=wake,
            reason=f"restart {count} after {reason}, at {iso(wake)}",
            now=now,
        )
        await self.store.add_incident(Incident(run_id, agent.name, "restarted", reason, now))
        log.warning(
            "run_restarting",
            agent=agent.name,
            run_id=run_id,
            reason=reason,
            restart=recent + 1,
            at=iso(wake),
        )
        await self._restart_siblings(agent.name, run_id)

    async def _pause(self, run_id: str, reason: str, now: float) -> None:
        """Park a run this node holds as `paused` for a human (`nonstop resume`)."""
        await self.store.park_run(
            self.owner, run_id, status=RunStatus.PAUSED, wake_at=None, reason=reason, now=now
        )

    async def _restart_siblings(self, agent: str, run_id: str) -> None:
        """Apply the agent's group strategy: restart its siblings' running runs too."""
        siblings = self.app.siblings_to_restart(agent)
        if not siblings:
            return
        reason = f"sibling {agent} restarted (run {run_id})"
        now = time.time()
        restarted = await self.store.restart_runs(siblings, f"restarting: {reason}", now)
        for sibling_run, sibling in restarted:
            self._stop_run(sibling_run, Interrupt.LEASE_LOST)  # if it runs here: stop now
            await self.store.add_incident(Incident(sibling_run, sibling, "restarted", reason, now))
            log.warning("run_restarting", agent=sibling, run_id=sibling_run, reason=reason)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                requests = await self.store.renew_leases(
                    self.owner, now=time.time(), lease_ttl=self.lease_ttl
                )
                for run_id, stop in requests.items():
                    if stop == Stop.CANCEL:
                        self._stop_run(run_id, Interrupt.CANCELLED)  # now, mid-step too
                    elif (active := self._active.get(run_id)) is not None:
                        active.ctx.request_stop(stop)  # a pause waits for the step boundary
                await self._recover_orphans()
                await self._refresh_routing()
            except Exception as exc:
                log.error("lease_renewal_failed", error=str(exc))

    async def _recover_orphans(self) -> None:
        """Expire at once the leases of dead processes on this host, instead of waiting
        for them to run out (a node restarted after kill -9 resumes its runs right away)."""
        dead = [o for o in await self.store.lease_owners() if o != self.owner and owner_is_dead(o)]
        if dead and await self.store.expire_leases(dead, time.time()):
            log.info("orphans_found", owners=dead)
            self._wakeup.set()

    async def _refresh_routing(self) -> None:
        """Say this node is alive, and work out which runs are its own (rolling deploys).

        A node counts as alive while it has been seen within one lease time. The versions
        of live nodes keep their runs; a canary share of fresh runs goes to the canary."""
        now = time.time()
        await self.store.register_node(self._node_info(now))
        live: dict[str, float] = {}
        for node in await self.store.list_nodes():
            if node.id != self.owner and (
                owner_is_dead(node.id) or node.last_seen < now - 3 * self.lease_ttl
            ):
                await self.store.remove_node(node.id)  # gone for good: forget it
                continue
            if node.last_seen >= now - self.lease_ttl:
                live[node.version] = max(live.get(node.version, 0.0), node.canary_share)
        live[self.app.version] = self.canary_share
        self.routing = Routing(
            self.app.version, _fresh_share(self.canary_share, live), tuple(sorted(live))
        )

    def _node_info(self, now: float) -> NodeInfo:
        return NodeInfo(
            id=self.owner,
            app=self.app.name,
            version=self.app.version,
            canary_share=self.canary_share,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            last_seen=now,
            state="shutting_down" if self._stopping else "serving",
            memory_limits=self.memory_limits,
        )

    # -- one run ----------------------------------------------------------------------

    def _launch(self, claimed: Claimed) -> None:
        run = claimed.run
        ctx = Context(
            run,
            claimed.history,
            self.store,
            self.owner,
            self._step_threads,
            self.app.new_run,
            self.app.tools_of(run.agent),
            self.app.agents[run.agent].loops,
        )
        active = _Active(ctx)
        active.task = asyncio.create_task(self._execute(claimed, active), name=f"run:{run.id}")
        # A run that parks and is due at once may be claimed again while its previous
        # execution is still in its `finally`: entries are replaced, never shared.
        self._active[run.id] = active
        if claimed.recovered:
            log.info("run_recovered", agent=run.agent, run_id=run.id, attempt=run.attempt)

    def _stop_run(self, run_id: str, reason: str) -> None:
        active = self._active.get(run_id)
        if active is None or active.stop_reason is not None or active.settling:
            return
        active.stop_reason = reason
        active.ctx.abandoned = True
        if active.task is not None:
            active.task.cancel()

    async def _execute(self, claimed: Claimed, active: _Active) -> None:
        run = claimed.run
        try:
            await self._drive(claimed, active.ctx, active)
        except LeaseLost:
            log.warning("lease_lost", agent=run.agent, run_id=run.id)
        except Exception as exc:  # the store failed: the lease runs out and the run recovers
            log.error("run_bookkeeping_failed", agent=run.agent, run_id=run.id, error=str(exc))
        finally:
            active.done.set()
            if self._active.get(run.id) is active:
                del self._active[run.id]
            self._wakeup.set()
            for waiter in self._settled.get(run.id, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def _drive(self, claimed: Claimed, ctx: Context, active: _Active) -> None:
        run = claimed.run
        agent = self.app.agents[run.agent]
        if not await self._accept_version(claimed):
            return
        if claimed.recovered and agent.restart is not None:
            # its node died with it: a crash counts as a restart (a crash loop escalates)
            await self._restart(agent, run.id, "crash of its node")
            return
        try:
            ctx.validate_history()  # before any replay: checksums of every record
        except CorruptCheckpoint:
            await self._settle_failure(agent, ctx, ctx.fatal or Exception(), time.time())
            return
        if agent.loops.active:  # each resume after a loop pause grants one more allowance
            incidents = await self.store.list_incidents(run.id, limit=10_000)
            ctx.allow_loop_rounds(1 + sum(1 for i in incidents if i.kind == "loop"))
        started = time.monotonic()
        outcome: Any = None
        failure: BaseException | None = None
        handler = asyncio.create_task(self._invoke(agent, ctx, run.input))
        try:
            outcome = await _with_timeout(handler, agent.timeout)
        except asyncio.CancelledError:
            if active.stop_reason is None:
                raise
            # _stop_run cancelled us (and with us the handler): this is a decision, not a
            # shutdown of the loop, so the cancellation is consumed here.
            _uncancel()
            failure = Interrupt(active.stop_reason)
        except BaseException as exc:
            if not isinstance(exc, Exception | Interrupt):
                raise
            failure = exc
        if isinstance(failure, MemoryError) and isolation_child():
            os._exit(MEMORY_EXIT)  # the parent reports the limit, with the peak it saw
        active.settling = True
        if isinstance(failure, Interrupt) and failure.why not in (
            Interrupt.PARKED,
            Interrupt.SETTLED,
        ):
            ctx.abandoned = True  # a sync handler still running stops at its next ctx call
        if ctx.fatal is not None:  # a replay error the handler caught: still fatal
            failure = ctx.fatal
        now = time.time()
        if failure is None:
            try:
                encode(outcome, f"the output of run {run.id}")
            except InvalidInput as exc:
                failure = exc
            else:
                await self.store.finish_run(
                    self.owner, run.id, status=RunStatus.COMPLETED, now=now, output=outcome
                )
                log.info(
                    "run_completed",
                    agent=run.agent,
                    run_id=run.id,
                    attempt=run.attempt,
                    duration_ms=round((time.monotonic() - started) * 1000, 3),
                )
                return
        await self._settle_failure(agent, ctx, failure, now)

    async def _accept_version(self, claimed: Claimed) -> bool:
        """Apply `on_version_change` to a run adopted from a version no live node runs."""
        run, previous, version = claimed.run, claimed.previous_version, self.app.version
        if previous is None or previous == version:
            return True
        now = time.time()
        detail = f"started under version {previous}, adopted by version {version}"
        if self.app.on_version_change == "pause":
            await self._pause(
                run.id, f"paused: {detail} (on_version_change=pause; `nonstop resume` runs it)", now
            )
            await self.store.add_incident(
                Incident(run.id, run.agent, "version_change", f"{detail}; paused", now)
            )
            log.warning("run_paused", agent=run.agent, run_id=run.id, reason=detail)
            return False
        await self.store.add_incident(
            Incident(run.id, run.agent, "version_change", f"{detail}; resumed", now)
        )
        log.info("run_adopted", agent=run.agent, run_id=run.id, reason=detail)
        return True

    async def _undo(self, ctx: Context) -> dict[str, Any] | None:
        """Run the saga's compensations before a run ends for good; return the error of a
        compensation that could not be done (the run is then dead and needs a human)."""
        if not ctx.compensable:
            return None
        try:
            await ctx.compensate()
        except StepFailed as exc:
            log.error("compensation_failed", agent=ctx.agent, run_id=ctx.run_id, error=str(exc))
            return {"type": "nonstop.errors.CompensationFailed", "message": str(exc)}
        return None

    async def drive_now(self, claimed: Claimed) -> None:
        """Execute one run already leased to this executor's owner, to its resting state
        (the child process of an isolated run does only this)."""
        self._launch(claimed)
        await self._active[claimed.run.id].done.wait()

    async def _invoke(self, agent: Agent, ctx: Context, inputs: dict[str, Any]) -> Any:
        if agent.isolation == "process" and not isolation_child():
            death = await run_in_child(self.app, self.store.url, self.owner, ctx.run_id, agent)
            if death is None:
                raise Interrupt(Interrupt.SETTLED)
            raise ChildDied(death.kind, death.detail)
        if agent.is_async:
            return await agent.fn(ctx, **inputs)
        sync_ctx = SyncContext(ctx, asyncio.get_running_loop())
        call: Callable[[], Any] = lambda: agent.fn(sync_ctx, **inputs)  # noqa: E731
        return await asyncio.get_running_loop().run_in_executor(self._handler_threads, call)

    async def _settle_failure(
        self, agent: Agent, ctx: Context, failure: BaseException, now: float
    ) -> None:
        run_id, name = ctx.run_id, ctx.agent
        if isinstance(failure, Interrupt):
            if failure.why in (Interrupt.PARKED, Interrupt.SETTLED):
                return  # the park (or the child's bookkeeping) is already committed
            if failure.why == Interrupt.CANCELLED or ctx.cancel_requested:
                undo_error = await self._undo(ctx)
                status = RunStatus.CANCELLED if undo_error is None else RunStatus.DEAD
                await self.store.finish_run(
                    self.owner, run_id, status=status, now=time.time(), error=undo_error
                )
                log.info("run_cancelled", agent=name, run_id=run_id)
                return
            if failure.why == Interrupt.RESTART:
                await self._restart(agent, run_id, "missed heartbeats")
                return
            if failure.why == Interrupt.PAUSE:
                await self._pause(run_id, PAUSED_BY_REQUEST, now)
                log.info("run_paused", agent=name, run_id=run_id, reason="requested")
                return
            if failure.why != Interrupt.TIMEOUT:
                # shutdown, lost lease, store down: the run rests on its checkpoints until
                # its next owner (or this node, once the lease lapses) resumes it
                log.warning("run_left", agent=name, run_id=run_id, reason=failure.why)
                return
            failure = RunTimeout(f"run exceeded its timeout of {agent.timeout:g}s")
        if isinstance(failure, ChildDied):
            # never a silent death: the reason goes to the run, the incidents and the log
            await self.store.add_incident(Incident(run_id, name, failure.kind, failure.reason, now))
            self.alerts.fire(failure.kind, agent=name, run_id=run_id, reason=failure.reason)
            await self._restart(agent, run_id, failure.reason)
            return
        if isinstance(failure, NonDeterminismError | CorruptCheckpoint | LoopDetected):
            kind = {
                NonDeterminismError: "non_determinism",
                CorruptCheckpoint: "corrupt_checkpoint",
                LoopDetected: "loop",
            }[type(failure)]
            await self._pause(run_id, f"paused: {type(failure).__name__}: {failure}", now)
            await self.store.add_incident(Incident(run_id, name, kind, str(failure), now))
            log.error("run_paused", agent=name, run_id=run_id, error=str(failure))
            if kind == "loop":
                self.alerts.fire(kind, agent=name, run_id=run_id, reason=str(failure))
            return
        error = error_info(failure)
        policy = agent.retry
        retryable = (
            ctx.attempt < policy.max_attempts
            and not gives_up(failure, policy.give_up_on)
            and not isinstance(failure, InvalidInput | ToolDenied)
        )
        if retryable:
            wake_at = now + policy.delay(ctx.attempt)
            await self.store.retry_run(self.owner, run_id, wake_at=wake_at, error=error, now=now)
            log.warning(
                "run_retrying",
                agent=name,
                run_id=run_id,
                attempt=ctx.attempt,
                error=error["message"],
                retry_at=iso(wake_at),
            )
            return
        undo_error = await self._undo(ctx)
        await self.store.finish_run(
            self.owner, run_id, status=RunStatus.DEAD, now=time.time(), error=undo_error or error
        )
        log.error(
            "run_dead", agent=name, run_id=run_id, attempt=ctx.attempt, error=error["message"]
        )


def _fresh_share(canary_share: float, live: dict[str, float]) -> tuple[float, float]:
    """The slice of fresh runs (by route, in [0, 1)) a node takes: a canary the first
    `canary_share` of them, any other node what live canaries of other versions leave."""
    if canary_share > 0:
        return (0.0, canary_share)
    return (min(sum(share for share in live.values() if share > 0), 1.0), 1.0)


async def _with_timeout(task: asyncio.Task[Any], limit: float | None) -> Any:
    if limit is None:
        return await task
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            return await task
    except TimeoutError:
        if deadline.expired():
            raise Interrupt(Interrupt.TIMEOUT) from None
        raise  # the handler itself raised TimeoutError


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
