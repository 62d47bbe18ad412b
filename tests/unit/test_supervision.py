"""The watchdog catches handlers wedged in blocking calls; restarts cool down and escalate."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

import nonstop
from nonstop import CircuitBreaker, Restart, Retry, RunStatus
from nonstop.policies.breaker import BreakerState
from tests.conftest import AppFactory
from tests.unit.test_durable_runs import query, wait_status


def test_a_wedged_handler_is_restarted_then_escalated_then_resumed(
    make_app: AppFactory,
) -> None:
    app = make_app()
    wedge = threading.Event()
    wedge.set()
    entered: list[float] = []

    def stuck_call() -> str:
        entered.append(time.monotonic())
        while wedge.is_set():  # a socket read that never returns, a deadlock...
            time.sleep(0.01)
        return "unstuck"

    @app.agent(heartbeat_timeout=0.3, restart=Restart(cooldown=0.2, max_restarts=2, window="1h"))
    def fragile(ctx: nonstop.SyncContext) -> str:
        ctx.heartbeat("starting")
        return str(stuck_call())  # called inline: the handler's own thread wedges

    with app.worker(poll_interval=0.02):
        handle = app.start(fragile)
        wait_status(handle, RunStatus.PAUSED, timeout=20)
        reason = handle.get().wait_reason or ""
        assert "escalated after 2 restart(s) (missed heartbeats)" in reason
        kinds = [k for (k,) in query(app, "SELECT kind FROM incidents ORDER BY id")]
        assert kinds.count("restarted") == 2 and kinds[-1] == "escalated"
        assert kinds.count("missed_heartbeat") == 3  # once per stuck execution
        gaps = [b - a for a, b in itertools.pairwise(entered)]
        assert len(entered) == 3 and all(g >= 0.2 + 0.6 for g in gaps)  # 2 timeouts + cooldown
        wedge.clear()  # a human fixed the cause
        app._call(lambda rt: rt.store.resume_run(handle.run_id, time.time()))
        assert handle.result(10) == "unstuck"


def test_beating_and_progressing_runs_are_left_alone(make_app: AppFactory) -> None:
    app = make_app()

    def tick() -> None:
        time.sleep(0.05)

    @app.agent(heartbeat_timeout=0.2, restart=Restart(cooldown=0, max_restarts=0))
    def busy(ctx: nonstop.SyncContext) -> int:
        for _ in range(20):  # one second of work, a step every 50 ms
            ctx.step(tick)
        return 20

    with app.worker(poll_interval=0.02):
        assert app.start(busy).result(10) == 20
    assert query(app, "SELECT kind FROM incidents") == []


def test_a_crash_loop_escalates(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent(restart=Restart(cooldown=60, max_restarts=1))
    async def doomed(ctx: nonstop.Context) -> None:
        return None

    handle = app.start(doomed)

    def crash_holding_it(at: float) -> None:
        """A node claims the run at `at` and dies: its lease has already lapsed."""
        claimed = app._call(
            lambda rt: rt.store.claim_runs(
                "dead-node", agents=["doomed"], limit=1, now=at, lease_ttl=time.time() - at - 1
            )
        )
        assert [c.run.id for c in claimed] == [handle.run_id]

    crash_holding_it(time.time())
    with app.worker(poll_interval=0.02):
        wait_status(handle, RunStatus.SLEEPING)
    assert "restart 1 of 1 after crash of its node" in (handle.get().wait_reason or "")
    crash_holding_it(time.time() + 120)  # after the cooldown, its next node dies too
    with app.worker(poll_interval=0.02):
        wait_status(handle, RunStatus.PAUSED)
    assert "escalated after 1 restart(s) (crash of its node)" in (handle.get().wait_reason or "")


def test_breaker_policy_closed_open_half_open() -> None:
    breaker = CircuitBreaker("crm", failure_threshold=2, reset_after=10, half_open_max=1)
    state = BreakerState("crm")
    assert breaker.admit(state, 0) == (True, state)
    state = breaker.record(state, False, 1)
    assert state.state == "closed" and state.failures == 1
    state = breaker.record(state, False, 2)
    assert (state.state, state.opened_at) == ("open", 2)
    assert breaker.admit(state, 11)[0] is False  # still cooling off
    allowed, state = breaker.admit(state, 12.5)
    assert allowed and state.state == "half_open"
    assert breaker.admit(state, 12.6)[0] is False  # one trial at a time
    assert breaker.record(state, False, 13).state == "open"  # the trial failed
    assert breaker.record(state, True, 13) == BreakerState("crm")  # the trial succeeded


def test_an_open_breaker_fails_fast_for_every_run(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[str] = []
    crm = CircuitBreaker("crm", failure_threshold=3, reset_after=60)

    def push(lead: str) -> None:
        calls.append(lead)
        raise ConnectionError("crm down")

    @app.agent(retry=Retry(max_attempts=1))
    async def sync_lead(ctx: nonstop.Context, lead: str) -> str:
        try:
            await ctx.step(push, lead, breaker=crm)
        except nonstop.StepFailed as exc:
            return exc.type_name
        return "pushed"

    with app.worker(poll_interval=0.02):
        outcomes = [app.start(sync_lead, {"lead": f"l{i}"}).result(10) for i in range(5)]
    assert outcomes == ["builtins.ConnectionError"] * 3 + ["nonstop.errors.BreakerOpen"] * 2
    assert calls == ["l0", "l1", "l2"]  # the open breaker never called the dependency again
    (state,) = app._call(lambda rt: rt.store.list_breakers())
    assert (state.name, state.state, state.failures) == ("crm", "open", 3)


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [("one_for_one", set()), ("one_for_all", {"first", "last"}), ("rest_for_one", {"last"})],
)
def test_group_strategies_restart_siblings_like_otp(
    make_app: AppFactory, strategy: str, restarted: set[str]
) -> None:
    app = make_app()
    wedge = threading.Event()
    wedge.set()
    release = threading.Event()

    async def steady() -> None:
        await asyncio.sleep(0.05)

    def stuck() -> None:
        while wedge.is_set():
            time.sleep(0.01)

    def member(name: str) -> None:
        @app.agent(name=name, heartbeat_timeout=0.3, restart=Restart(cooldown=0, max_restarts=5))
        async def loop(ctx: nonstop.Context) -> str:
            while not release.is_set():  # a long-lived, healthy loop
                await ctx.step(steady)
            return name

    member("first")

    @app.agent(heartbeat_timeout=0.3, restart=Restart(cooldown=0, max_restarts=5))
    def middle(ctx: nonstop.SyncContext) -> str:
        ctx.step(stuck)  # wedged until the test lets it go
        return "middle"

    member("last")
    app.group(["first", "middle", "last"], strategy=strategy)
    with app.worker(poll_interval=0.02):
        handles = {n: app.start(n, id=n) for n in ("first", "middle", "last")}
        deadline = time.monotonic() + 20
        while not query(
            app, "SELECT 1 FROM incidents WHERE run_id = 'middle' AND kind = 'restarted'"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # deliberate: room for a wrong sibling restart to show
        wedge.clear()
        release.set()
        assert {n: h.result(20) for n, h in handles.items()} == {n: n for n in handles}
    rows = query(app, "SELECT run_id, detail FROM incidents WHERE kind = 'restarted'")
    siblings = {str(r) for r, d in rows if r != "middle"}
    assert siblings == restarted
    assert all("sibling middle restarted" in str(d) for r, d in rows if r != "middle")


def test_groups_are_validated(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def a(ctx: nonstop.Context) -> None:
        return None

    @app.agent
    async def b(ctx: nonstop.Context) -> None:
        return None

    with pytest.raises(nonstop.ConfigError, match="strategy"):
        app.group([a, b], strategy="one_for_some")
    with pytest.raises(nonstop.ConfigError, match="two or more"):
        app.group([a, "ghost"])
    app.group([a, b], strategy="one_for_all")
    with pytest.raises(nonstop.ConfigError, match="already in a group"):
        app.group([a, b])
