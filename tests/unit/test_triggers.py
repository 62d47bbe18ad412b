"""Triggers and pipelines in one process: signals, approvals, child runs, events,
schedules and sagas, on every backend."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import pytest

import nonstop
from nonstop import Retry, RunStatus
from nonstop.models import ScheduleState
from nonstop.policies.schedule import Schedule
from tests.conftest import AppFactory
from tests.unit.test_durable_runs import query, wait_status


def fast(app: nonstop.App) -> AbstractContextManager[nonstop.App]:
    return app.worker(poll_interval=0.02, lease_ttl=3.0)


def test_a_signal_after_the_wait_resumes_the_run(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def reviewer(ctx: nonstop.Context) -> object:
        return await ctx.wait_for("go")

    with fast(app):
        handle = app.start(reviewer)
        wait_status(handle, RunStatus.WAITING)
        assert 'waiting for signal "go"' in (handle.get().wait_reason or "")
        app.signal(handle.run_id, "go", {"ok": True})
        assert handle.result(10) == {"ok": True}


def test_a_signal_before_the_wait_is_kept(make_app: AppFactory) -> None:
    app = make_app()
    gate = threading.Event()

    def slow() -> None:
        assert gate.wait(10)

    @app.agent
    def patient(ctx: nonstop.SyncContext) -> object:
        ctx.step(slow)
        first = ctx.wait_for("data")
        second = ctx.wait_for("data", timeout=5)
        return [first, second]

    with fast(app):
        handle = app.start(patient)
        wait_status(handle, RunStatus.RUNNING)
        app.signal(handle.run_id, "data", 1)  # sent before any wait
        app.signal(handle.run_id, "data", 2)
        gate.set()
        assert handle.result(10) == [1, 2]  # kept, and consumed in order


def test_wait_for_times_out_durably_with_the_default(make_app: AppFactory) -> None:
    first = make_app()

    @first.agent(name="waiter")
    async def waiter(ctx: nonstop.Context) -> object:
        return await ctx.wait_for("never", timeout=0.6, default="gave up")

    with fast(first):
        handle = first.start("waiter")
        wait_status(handle, RunStatus.WAITING)
    first.close()  # every worker is down while the deadline passes
    time.sleep(0.7)  # deliberate: let the deadline pass while nothing runs
    second = make_app()
    second.signal(handle.run_id, "never", "too late")  # after the deadline: loses
    second.agent(name="waiter")(waiter.fn)
    with fast(second):
        assert second.start("waiter", id=handle.run_id).result(10) == "gave up"


def test_approval_shows_its_prompt_and_takes_the_answer(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def publisher(ctx: nonstop.Context) -> str:
        approved = await ctx.approval("Publish the summary?", timeout="1d")
        return "published" if approved else "dropped"

    with fast(app):
        handle = app.start(publisher)
        wait_status(handle, RunStatus.WAITING)
        reason = handle.get().wait_reason or ""
        assert 'waiting for approval "Publish the summary?"' in reason and "until" in reason
        app.signal(handle.run_id, "approval", True)
        assert handle.result(10) == "published"


def test_signals_to_unknown_or_finished_runs_are_refused(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def quick(ctx: nonstop.Context) -> int:
        return 1

    with fast(app):
        handle = app.start(quick)
        handle.result(10)
        with pytest.raises(nonstop.RunNotFound):
            app.signal("nope", "go")
        with pytest.raises(nonstop.NonstopError, match="takes no signals"):
            app.signal(handle.run_id, "go")


def test_call_and_map_run_children_and_gather_in_order(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def square(ctx: nonstop.Context, n: int) -> int:
        await ctx.sleep(0.01 * (n % 3))  # finish out of order
        return n * n

    @app.agent
    async def pipeline(ctx: nonstop.Context, count: int) -> dict[str, object]:
        one = await ctx.call("square", {"n": 7})
        many = await ctx.map("square", [{"n": i} for i in range(count)], max_parallel=4)
        return {"one": one, "many": many}

    with fast(app):
        handle = app.start(pipeline, {"count": 12})
        assert handle.result(30) == {"one": 49, "many": [i * i for i in range(12)]}
    children = query(app, "SELECT id, parent_id, status FROM runs WHERE parent_id IS NOT NULL")
    assert len(children) == 13
    assert {(p, s) for _, p, s in children} == {(handle.run_id, "completed")}


def test_a_failing_child_fails_the_parents_step(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent(retry=Retry(max_attempts=1))
    async def broken(ctx: nonstop.Context) -> None:
        raise ValueError("child exploded")

    @app.agent(retry=Retry(max_attempts=1))
    async def parent(ctx: nonstop.Context) -> str:
        try:
            await ctx.call("broken")
        except nonstop.StepFailed as exc:
            return f"caught: {exc.message}"
        return "unreachable"

    with fast(app):
        result = app.start(parent).result(10)
    assert isinstance(result, str) and result.startswith("caught: child run")
    assert "child exploded" in result


def test_events_start_each_subscriber_once(make_app: AppFactory) -> None:
    app = make_app()
    seen: list[tuple[str, str]] = []

    @app.agent(on="lead.created")
    async def enrich(ctx: nonstop.Context, email: str) -> None:
        seen.append(("enrich", email))

    @app.agent(on=["lead.*", "deal.won"])
    async def notify(ctx: nonstop.Context, email: str) -> None:
        seen.append(("notify", email))

    @app.agent
    async def intake(ctx: nonstop.Context, email: str) -> str:
        return await ctx.emit("lead.created", {"email": email})

    first = app.emit("lead.created", {"email": "a@x"}, id="evt-1")  # stored, nobody running
    assert app.emit("lead.created", {"email": "a@x"}, id="evt-1") == first  # idempotent
    with fast(app):
        handle = app.start(intake, {"email": "b@x"})
        event_id = handle.result(10)
        app.emit("lead.updated", {"email": "c@x"})
        deadline = time.monotonic() + 10
        while len(seen) < 5:
            assert time.monotonic() < deadline, seen
            time.sleep(0.02)
    assert sorted(seen) == [
        ("enrich", "a@x"), ("enrich", "b@x"),
        ("notify", "a@x"), ("notify", "b@x"), ("notify", "c@x"),
    ]  # fmt: skip
    ids = {row[0] for row in query(app, "SELECT id FROM runs")}
    assert {"enrich@evt:evt-1", f"notify@evt:{event_id}"} <= ids
    assert event_id == f"{handle.run_id}:1"  # ctx.emit is a step: its key is the event id


def test_bad_events_and_signals_are_refused(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent(on="x")
    async def sink(ctx: nonstop.Context) -> None:
        return None

    with pytest.raises(nonstop.InvalidInput):
        app.emit("x", [1])  # type: ignore[arg-type]
    with pytest.raises(nonstop.InvalidInput):
        app.emit(" ")

    @app.agent
    async def emitter(ctx: nonstop.Context, topic: str, lone: bool = False) -> str:
        try:
            await ctx.emit(topic, {"text": chr(0xD800) if lone else "ok"})
        except nonstop.InvalidInput as exc:
            return str(exc)
        return "emitted"

    with app.worker(poll_interval=0.02):  # a handler's events pass the same checks
        assert app.run(emitter, {"topic": ""}) == "an event needs a topic"
        assert "lone surrogate" in app.run(emitter, {"topic": "x", "lone": True})
    with pytest.raises(nonstop.ConfigError, match="either every= or cron="):
        app.agent(name="both", every="1m", cron="* * * * *")(sink.fn)
    with pytest.raises(nonstop.ConfigError, match="cron"):
        app.agent(name="bad", cron="every day")(sink.fn)


def test_an_interval_schedule_fires_once_per_time_across_two_workers(
    make_app: AppFactory,
) -> None:
    apps = [make_app(f"node{i}") for i in range(2)]
    for app in apps:

        @app.agent(name="tick", every="0.25s", catch_up="none")
        async def tick(ctx: nonstop.Context) -> None:
            return None

    with fast(apps[0]), fast(apps[1]):
        deadline = time.monotonic() + 15
        while len(query(apps[0], "SELECT id FROM runs WHERE status = 'completed'")) < 6:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    rows = query(apps[0], "SELECT id, scheduled_at, created_at FROM runs ORDER BY scheduled_at")
    times = [float(r[1]) for r in rows]  # type: ignore[arg-type]
    assert all(t % 0.25 == 0 for t in times)
    assert len(set(times)) == len(times)  # once per scheduled time, with two schedulers
    assert all(b - a == pytest.approx(0.25) for a, b in itertools.pairwise(times))
    assert all(str(r[0]).startswith("tick@") for r in rows)
    lateness = [float(r[2]) - float(r[1]) for r in rows]  # type: ignore[arg-type]
    assert max(lateness) < 1.0


@pytest.mark.parametrize(("policy", "expected"), [("none", 0), ("latest", 1), ("all", 3)])
def test_catch_up_after_an_outage(make_app: AppFactory, policy: str, expected: int) -> None:
    app = make_app()

    @app.agent(name="hourly", every="1h", catch_up=policy, max_catch_up=3)
    async def hourly(ctx: nonstop.Context) -> None:
        return None

    now = time.time()
    hour = 3600 * int(now // 3600)
    if now - hour < 6:  # a fire due right now would count as on time: step clear of it
        pytest.skip("too close to the top of the hour")
    outage_start = hour - 5 * 3600  # last fired five hours ago: four fires were missed
    state = ScheduleState("hourly", "every 3600s", outage_start - 1, outage_start)
    app._call(lambda rt: rt.store.save_schedule(state, now))
    with fast(app):
        deadline = time.monotonic() + 10
        while len(query(app, "SELECT id FROM runs WHERE status = 'completed'")) < expected:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # deliberate: give a wrong extra fire the chance to show
    fired = sorted(float(r[0]) for r in query(app, "SELECT scheduled_at FROM runs"))  # type: ignore[arg-type]
    missed = [hour - 3 * 3600, hour - 2 * 3600, hour - 3600, hour]
    assert fired == missed[len(missed) - expected :] if expected else fired == []


def test_schedule_policy_decisions() -> None:
    every = Schedule.build(
        every="1m", cron=None, tz="UTC", jitter="10s", catch_up="all", max_catch_up=2
    )
    assert every.due(last_fire=600, anchor=0, now=600 + 59) == []
    assert every.due(last_fire=600, anchor=0, now=660.5) == [660]  # on time
    assert every.due(last_fire=600, anchor=0, now=900.5) == [780, 840, 900]  # 2 missed + 1
    jitter = every.jitter_for("a", 660.0)
    assert 0 <= jitter < 10 and jitter == every.jitter_for("a", 660.0)
    cron = Schedule.build(
        every=None, cron="30 2 * * *", tz="Europe/Paris", jitter=None, catch_up="latest",
        max_catch_up=5,
    )  # fmt: skip
    march = datetime(2026, 3, 27, tzinfo=UTC).timestamp()
    days = [datetime.fromtimestamp(t, UTC) for t in cron.times_between(march, march + 4 * 86400, 9)]
    # 02:30 Paris does not exist on 29 March (clocks jump to 03:00): it fires once, at 03:00
    assert [d.strftime("%d %H:%M") for d in days] == [
        "27 01:30",
        "28 01:30",
        "29 01:00",
        "30 00:30",
    ]


def test_a_saga_undoes_completed_steps_in_reverse_when_the_run_dies(make_app: AppFactory) -> None:
    app = make_app()
    undone: list[str] = []

    def book(what: str) -> str:
        return f"booking-{what}"

    def cancel(booking: str) -> None:
        undone.append(booking)

    def pay() -> None:
        raise RuntimeError("card declined")

    @app.agent(retry=Retry(max_attempts=1))
    async def trip(ctx: nonstop.Context) -> None:
        await ctx.step(book, "flight", compensate=cancel)
        await ctx.step(book, "hotel", compensate=cancel)
        await ctx.step(pay)

    with fast(app):
        handle = app.start(trip)
        with pytest.raises(nonstop.RunFailed, match="card declined"):
            handle.result(10)
    assert undone == ["booking-hotel", "booking-flight"]
    rows = query(app, "SELECT seq, name FROM steps WHERE seq < 0 ORDER BY seq DESC")
    assert rows == [(-1, "compensate:book"), (-2, "compensate:book")]


def test_a_cancelled_saga_is_undone(make_app: AppFactory) -> None:
    app = make_app()
    undone: list[str] = []
    entered = threading.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.sleep(60)

    def reserve() -> str:
        return "seat-12"

    def release(seat: str) -> None:
        undone.append(seat)

    @app.agent
    async def booking(ctx: nonstop.Context) -> None:
        await ctx.step(reserve, compensate=release)
        await ctx.step(hang)

    with app.worker(poll_interval=0.02, lease_ttl=0.3):
        handle = app.start(booking)
        assert entered.wait(5)
        app._call(lambda rt: rt.store.request_cancel(handle.run_id, time.time()))
        with pytest.raises(nonstop.RunCancelled):
            handle.result(10)
    assert undone == ["seat-12"]


def test_priority_runs_are_claimed_first(make_app: AppFactory) -> None:
    app = make_app()
    order: list[str] = []

    @app.agent(priority=10)
    async def urgent(ctx: nonstop.Context) -> None:
        order.append("urgent")

    @app.agent
    async def routine(ctx: nonstop.Context) -> None:
        order.append("routine")

    for i in range(3):
        app.start(routine, id=f"r{i}")
    app.start(urgent, id="u")
    with app.worker(concurrency=1, poll_interval=0.02):
        deadline = time.monotonic() + 10
        while len(order) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert order[0] == "urgent"


def test_concurrency_caps_running_runs_across_workers(make_app: AppFactory) -> None:
    apps = [make_app(f"node{i}") for i in range(2)]
    running: list[int] = []
    peak: list[int] = []
    lock = threading.Lock()

    async def work() -> None:
        with lock:
            running.append(1)
            peak.append(len(running))
        await asyncio.sleep(0.05)
        with lock:
            running.pop()

    for app in apps:

        @app.agent(name="capped", concurrency=2)
        async def capped(ctx: nonstop.Context) -> None:
            await ctx.step(work)

    for i in range(12):
        apps[0].start("capped", id=f"c{i}")
    with fast(apps[0]), fast(apps[1]):
        deadline = time.monotonic() + 20
        while len(query(apps[0], "SELECT id FROM runs WHERE status = 'completed'")) < 12:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert max(peak) <= 2 and len(peak) == 12


def test_a_rate_limit_spaces_out_starts_and_says_why(make_app: AppFactory) -> None:
    app = make_app()
    starts: list[float] = []

    @app.agent(rate="3/s")
    async def limited(ctx: nonstop.Context) -> None:
        starts.append(time.monotonic())

    for i in range(7):
        app.start(limited, id=f"l{i}")
    with fast(app):
        deadline = time.monotonic() + 5
        while not any(
            "rate limit 3/s" in str(r[0]) for r in query(app, "SELECT wait_reason FROM runs")
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        waiting = [h for h in (app.start(limited, id=f"l{i}") for i in range(7))]
        for handle in waiting:
            handle.result(15)
    assert len(starts) == 7  # none dropped
    # a bucket of 3 refilled at 3/s: the 7th start comes at least ~1.3 s after the first
    assert starts[-1] - starts[0] >= 1.2


def test_continue_as_new_keeps_a_chain_with_bounded_history(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def forever(ctx: nonstop.Context, cycle: int = 0) -> int:
        await ctx.step(int, cycle)
        if cycle < 3:
            await ctx.continue_as_new({"cycle": cycle + 1})
        return cycle

    with fast(app):
        first = app.start(forever, id="loop")
        assert first.result(10) == {"continued_as": "loop#1"}
        deadline = time.monotonic() + 10
        while not query(app, "SELECT id FROM runs WHERE id = 'loop#3'"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert nonstop.RunHandle(app, "loop#3").result(10) == 3
    rows = query(app, "SELECT id, status FROM runs ORDER BY id")
    assert rows == [("loop", "completed"), ("loop#1", "completed"), ("loop#2", "completed"),
                    ("loop#3", "completed")]  # fmt: skip
    per_run = query(app, "SELECT run_id, count(*) FROM steps GROUP BY run_id")
    assert {count for _, count in per_run} == {1}  # each run keeps only its own history
