"""Loop detection pauses a run going round in circles, with an alert; resume gives it a
fresh allowance; while the node shuts down, the loop alarm stays quiet."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import nonstop
from nonstop import RunStatus
from nonstop.errors import ConfigError
from nonstop.observe.alerts import Alerts
from tests.conftest import AppFactory
from tests.unit.test_durable_runs import query, wait_status


def alerts_in(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [
        str(r.msg.get("kind"))
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == event
    ]


def test_max_steps_pauses_a_runaway_run_and_resume_gives_a_fresh_allowance(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    executed: list[int] = []

    def think(i: int) -> int:
        executed.append(i)
        return i

    @app.agent(max_steps=5)
    async def thinker(ctx: nonstop.Context, rounds: int) -> int:
        return sum([await ctx.step(think, i) for i in range(rounds)])

    with app.worker(poll_interval=0.02):
        assert app.run(thinker, {"rounds": 5}) == 10  # at the cap: fine
        handle = app.start(thinker, {"rounds": 8})
        wait_status(handle, RunStatus.PAUSED)
        reason = handle.get().wait_reason or ""
        assert "LoopDetected" in reason and "max_steps 5 reached" in reason
        app._call(lambda rt: rt.store.resume_run(handle.run_id, time.time()))
        assert handle.result(10) == 28  # 5 replayed, 3 executed: within a fresh 5
    assert executed == [*range(5), *range(8)]  # no step ran twice
    kinds = query(app, "SELECT kind FROM incidents WHERE run_id = ?", handle.run_id)
    assert kinds == [("loop",)]
    assert alerts_in(caplog, "alert") == ["loop"]


def test_the_same_tool_call_repeated_past_max_repeats_is_a_loop(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[str] = []

    @app.tool
    def status(job: str) -> str:
        calls.append(job)
        return "pending"

    @app.agent(tools=["status"], max_repeats=3)
    async def poller(ctx: nonstop.Context) -> str:
        for job in ("a", "b", "c"):  # different arguments: different calls
            await ctx.tool("status", job=job)
        while await ctx.tool("status", job="a") == "pending":  # never ends
            pass
        return "done"

    with app.worker(poll_interval=0.02):
        handle = app.start(poller)
        wait_status(handle, RunStatus.PAUSED)
    assert "tool 'status' called 4 times with the same arguments" in (
        handle.get().wait_reason or ""
    )
    assert calls == ["a", "b", "c", "a", "a"]  # the fourth "a" never reached the tool


def test_loop_limits_are_validated(make_app: AppFactory) -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="max_steps must be at least 1"):
        app.agent(max_steps=0)(lambda ctx: None)


def test_a_node_shutting_down_keeps_loop_alarms_quiet_but_still_pauses(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    inside, release = threading.Event(), threading.Event()
    states: list[object] = []

    def wait_for_shutdown() -> None:
        inside.set()
        release.wait(10)
        states.extend(s for (s,) in query(app, "SELECT state FROM nodes"))

    def spin() -> None:
        return None

    @app.agent(max_steps=3)
    async def cleanup(ctx: nonstop.Context) -> None:
        await ctx.step(wait_for_shutdown)
        while True:  # the cleanup burst
            await ctx.step(spin)

    caplog.set_level(logging.INFO, logger="nonstop.alerts")
    with app.worker(poll_interval=0.02, grace_period=10):
        handle = app.start(cleanup)
        assert inside.wait(10)
        threading.Timer(0.3, release.set).start()
    # the run finished its step within the grace period, then tripped the loop guard
    assert handle.status() == RunStatus.PAUSED
    assert states == ["shutting_down"]  # the node told the store it was draining
    assert alerts_in(caplog, "alert_suppressed") == ["loop"]
    assert alerts_in(caplog, "alert") == []


def test_alerts_other_than_loop_and_cost_still_fire_while_draining(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alerts = Alerts()
    alerts.draining = True
    with caplog.at_level(logging.INFO):
        assert alerts.fire("oom", agent="a", run_id="r") is True
        assert alerts.fire("cost", agent="a", run_id="r") is False
    assert alerts_in(caplog, "alert") == ["oom"]
    assert alerts_in(caplog, "alert_suppressed") == ["cost"]
