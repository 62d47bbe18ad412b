"""Pause: a run nobody executes is paused at once; a running one at its next step
boundary (never in the middle of a step); `resume` continues it from its checkpoints."""

from __future__ import annotations

import threading
import time

import nonstop
from nonstop import RunStatus
from nonstop.views import why
from tests.conftest import AppFactory
from tests.unit.test_durable_runs import query, wait_status


def test_a_running_run_pauses_at_its_next_step_boundary_and_resumes(
    make_app: AppFactory,
) -> None:
    app = make_app()
    inside, release = threading.Event(), threading.Event()
    done: list[int] = []

    def work(i: int) -> int:
        if i == 1:
            inside.set()
            assert release.wait(10)
        done.append(i)
        return i

    @app.agent
    async def worker(ctx: nonstop.Context) -> int:
        return sum([await ctx.step(work, i) for i in range(4)])

    with app.worker(poll_interval=0.02):
        handle = app.start(worker)
        assert inside.wait(10)
        paused = app._call(lambda rt: rt.store.request_pause(handle.run_id, "by test", time.time()))
        assert paused.status == RunStatus.RUNNING and paused.pause_requested
        assert why(paused, time.time()).endswith("; pause requested")  # what `show` says
        release.set()  # the step in flight finishes and is recorded...
        wait_status(handle, RunStatus.PAUSED)
        assert done == [0, 1]  # ...and nothing after it starts
        assert "paused on request" in (handle.get().wait_reason or "")
        assert query(app, "SELECT count(*) FROM steps WHERE run_id = ?", handle.run_id) == [(2,)]
        app._call(lambda rt: rt.store.resume_run(handle.run_id, time.time()))
        assert handle.result(10) == 6
    assert done == [0, 1, 2, 3]  # resumed from its checkpoints: no step ran twice


def test_a_sleeping_run_pauses_at_once_and_a_heartbeat_is_a_boundary(
    make_app: AppFactory,
) -> None:
    app = make_app()
    beats = threading.Event()

    @app.agent
    async def napper(ctx: nonstop.Context) -> str:
        await ctx.sleep(0.3)
        return "rested"

    @app.agent
    def looper(ctx: nonstop.SyncContext) -> str:
        for _ in range(1000):
            ctx.heartbeat("looping")
            beats.set()
            time.sleep(0.01)
        return "never paused"

    with app.worker(poll_interval=0.02):
        nap = app.start(napper)
        wait_status(nap, RunStatus.SLEEPING)
        paused = app._call(lambda rt: rt.store.request_pause(nap.run_id, "by test", time.time()))
        assert paused.status == RunStatus.PAUSED  # nobody executes it: at once
        time.sleep(0.5)  # deliberate: past its wake-up time, it must stay paused
        assert nap.status() == RunStatus.PAUSED
        app._call(lambda rt: rt.store.resume_run(nap.run_id, time.time()))
        assert nap.result(10) == "rested"

        loop = app.start(looper)
        assert beats.wait(10)
        app._call(lambda rt: rt.store.request_pause(loop.run_id, "by test", time.time()))
        wait_status(loop, RunStatus.PAUSED)


def test_a_heartbeat_inside_a_step_does_not_cut_the_step_for_a_pause(
    make_app: AppFactory,
) -> None:
    app = make_app()
    phases: list[str] = []
    asked = threading.Event()

    @app.agent
    def long_step(ctx: nonstop.SyncContext) -> str:
        def crunch() -> str:
            phases.append("start")
            for _ in range(200):  # a long step that says it is alive
                ctx.heartbeat("crunching")
                if asked.is_set():
                    break
                time.sleep(0.01)
            ctx.heartbeat("still crunching")  # the pause is known by now
            phases.append("end")
            return "crunched"

        ctx.step(crunch)
        return str(ctx.step(lambda: "after", name="after"))

    with app.worker(poll_interval=0.02):
        handle = app.start(long_step)
        deadline = time.monotonic() + 10
        while "start" not in phases:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        app._call(lambda rt: rt.store.request_pause(handle.run_id, "by test", time.time()))
        asked.set()
        wait_status(handle, RunStatus.PAUSED)
        assert phases == ["start", "end"]  # the step ran to its end and was recorded
        steps = query(app, "SELECT count(*) FROM steps WHERE run_id = ?", handle.run_id)
        assert steps == [(1,)]
        app._call(lambda rt: rt.store.resume_run(handle.run_id, time.time()))
        assert handle.result(10) == "after"
    assert phases == ["start", "end"]  # not run again after the resume
