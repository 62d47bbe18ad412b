"""Loop detection pauses a run going round in circles, with an alert, however often it
parks; resume grants one more allowance; while the node shuts down, the alarm is quiet."""

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


def test_max_steps_pauses_a_runaway_run_and_resume_grants_one_more_allowance(
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
        assert "LoopDetected" in reason and "max_steps reached: more than 5" in reason
        app._call(lambda rt: rt.store.resume_run(handle.run_id, time.time()))
        assert handle.result(10) == 28  # 5 replayed, 3 executed: within 2 x 5
    assert executed == [*range(5), *range(8)]  # no step ran twice
    kinds = query(app, "SELECT kind FROM incidents WHERE run_id = ?", handle.run_id)
    assert kinds == [("loop",)]
    assert alerts_in(caplog, "alert") == ["loop"]


def test_the_same_tool_call_repeated_past_max_repeats_is_a_loop_across_parks(
    make_app: AppFactory,
) -> None:
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
            await ctx.sleep(0.01)  # parks the run: each wake-up replays from the top
        return "done"

    with app.worker(poll_interval=0.02):
        handle = app.start(poller)
        wait_status(handle, RunStatus.PAUSED)
    assert "tool 'status' called 4 times with the same arguments" in (
        handle.get().wait_reason or ""
    )
    assert calls == ["a", "b", "c", "a", "a"]  # the fourth "a" never reached the tool


def test_a_handler_that_swallows_the_loop_error_is_still_stopped(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[int] = []

    @app.tool
    def poke() -> None:
        calls.append(1)

    @app.agent(tools=["poke"], max_repeats=2)
    async def stubborn(ctx: nonstop.Context) -> None:
        while True:
            try:
                await ctx.tool("poke")
            except Exception:  # the usual catch-all of an agent loop
                continue

    @app.agent
    async def bystander(ctx: nonstop.Context) -> str:
        return "fine"

    with app.worker(poll_interval=0.02):
        handle = app.start(stubborn)
        wait_status(handle, RunStatus.PAUSED)  # the loop could not spin on
        assert app.run(bystander) == "fine"  # and the node's event loop is free
    assert "called 3 times" in (handle.get().wait_reason or "") and len(calls) == 2


def test_loop_limits_are_validated(make_app: AppFactory) -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="max_steps must be at least 1"):
        app.agent(max_steps=0)(lambda ctx: None)


def test_a_node_shutting_down_keeps_loop_alarms_quiet_but_still_pauses(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    inside = threading.Event()
    states: list[object] = []

    def wait_for_shutdown() -> None:
        inside.set()
        deadline = time.monotonic() + 10
        while not states:  # until the node tells the store it is draining
            assert time.monotonic() < deadline
            states.extend(s for (s,) in query(app, "SELECT state FROM nodes") if s != "serving")
            time.sleep(0.01)

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
