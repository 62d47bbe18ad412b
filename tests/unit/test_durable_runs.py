"""Durable execution end to end inside one process: replay, retries, timeouts, cancel, DLQ."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import nonstop
from nonstop import Retry, RunStatus
from tests.conftest import AppFactory


def fast(app: nonstop.App, concurrency: int = 100) -> AbstractContextManager[nonstop.App]:
    """A worker that polls often, so tests wait milliseconds, not half-seconds."""
    return app.worker(concurrency=concurrency, poll_interval=0.02, lease_ttl=3.0)


def query(app: nonstop.App, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run SQL (with `?` placeholders) on the app's database, whichever backend it is."""
    url = app.database_url
    assert url is not None
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql, params).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        cursor = pg.execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


def wait_status(handle: nonstop.RunHandle, wanted: RunStatus, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (status := handle.status()) != wanted:
        assert time.monotonic() < deadline, f"run is {status}, expected {wanted}"
        time.sleep(0.01)


def test_async_and_sync_handlers_checkpoint_every_step(make_app: AppFactory) -> None:
    app = make_app()

    async def double(x: int) -> int:
        return 2 * x

    @app.agent
    async def fan(ctx: nonstop.Context, n: int) -> int:
        return sum([await ctx.step(double, i) for i in range(n)])

    @app.agent
    def plain(ctx: nonstop.SyncContext, word: str) -> str:
        upper: str = ctx.step(str.upper, word, name="upper")
        return ctx.step(lambda: upper + "!", name="bang")  # type: ignore[no-any-return]

    with fast(app):
        assert app.run(fan, {"n": 5}, timeout=10) == 20
        handle = app.start(plain, {"word": "hi"})
        assert handle.result(10) == "HI!"
    assert query(
        app, "SELECT seq, name FROM steps WHERE run_id = ? ORDER BY seq", handle.run_id
    ) == [(1, "upper"), (2, "bang")]
    assert handle.status() == RunStatus.COMPLETED


def test_replay_returns_recorded_results_without_executing_again(make_app: AppFactory) -> None:
    app = make_app()
    calls: Counter[str] = Counter()

    def effect(tag: str) -> str:
        calls[tag] += 1
        return f"{tag}-{time.time_ns()}"

    @app.agent
    async def napper(ctx: nonstop.Context) -> list[str]:
        first = await ctx.step(effect, "before")
        await ctx.sleep(0.05)  # parks: the handler is replayed from the top afterwards
        second = await ctx.step(effect, "after")
        await ctx.sleep(0.05)
        return [first, second]

    with fast(app):
        handle = app.start(napper)
        result = handle.result(10)
    assert calls == {"before": 1, "after": 1}
    recorded = query(
        app,
        "SELECT payload FROM steps WHERE run_id = ? AND name = 'effect' ORDER BY seq",
        handle.run_id,
    )
    assert [f'"{r}"' for r in result] == [row[0] for row in recorded]


def test_sleep_parks_the_run_without_holding_a_slot(make_app: AppFactory) -> None:
    app = make_app()
    started = threading.Event()

    @app.agent
    async def sleeper(ctx: nonstop.Context) -> str:
        await ctx.sleep("1s")
        return "rested"

    @app.agent
    async def quick(ctx: nonstop.Context) -> str:
        started.set()
        return "done"

    with fast(app, concurrency=1):
        sleepy = app.start(sleeper)
        wait_status(sleepy, RunStatus.SLEEPING)
        assert "sleeping until" in (sleepy.get().wait_reason or "")
        # with one slot, a second run still gets through while the first one sleeps
        assert app.run(quick, timeout=5) == "done"
        assert sleepy.status() == RunStatus.SLEEPING
        assert sleepy.result(10) == "rested"


def test_step_retries_with_backoff_then_records_the_final_error(make_app: AppFactory) -> None:
    app = make_app()
    tries: list[float] = []

    def flaky() -> None:
        tries.append(time.monotonic())
        raise ConnectionError(f"try {len(tries)}")

    @app.agent
    async def caller(ctx: nonstop.Context) -> str:
        try:
            await ctx.step(flaky, retry=Retry(max_attempts=3, initial=0.1, factor=2, jitter=False))
        except nonstop.StepFailed as exc:
            return f"gave up: {exc.type_name}: {exc.message}"
        return "unreachable"

    with fast(app):
        assert app.run(caller, timeout=10) == "gave up: builtins.ConnectionError: try 3"
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert len(tries) == 3 and gaps[0] >= 0.1 and gaps[1] >= 0.2
    attempts = query(
        app, "SELECT attempt, retry_at IS NOT NULL FROM step_attempts ORDER BY attempt"
    )
    assert attempts == [(1, 1), (2, 1), (3, 0)]
    assert query(app, "SELECT status, attempts FROM steps") == [("failed", 3)]


def test_a_long_retry_wait_parks_the_run_durably(make_app: AppFactory) -> None:
    app = make_app()
    tries: list[float] = []

    def once_broken() -> str:
        tries.append(time.time())
        if len(tries) == 1:
            raise TimeoutError("upstream slow")
        return "ok"

    @app.agent
    async def patient(ctx: nonstop.Context) -> str:
        return await ctx.step(  # type: ignore[no-any-return]
            once_broken, retry=Retry(max_attempts=2, initial=1.5, jitter=False)
        )

    with fast(app):
        handle = app.start(patient)
        wait_status(handle, RunStatus.SLEEPING)
        assert "retrying step 1 (once_broken)" in (handle.get().wait_reason or "")
        assert handle.result(10) == "ok"
    assert tries[1] - tries[0] >= 1.5


def test_idempotency_key_is_stable_across_retries(make_app: AppFactory) -> None:
    app = make_app()
    keys: list[str] = []

    def charge(amount: int, idempotency_key: str) -> int:
        keys.append(idempotency_key)
        if len(keys) < 3:
            raise RuntimeError("gateway hiccup")
        return amount

    @app.agent
    async def billing(ctx: nonstop.Context) -> int:
        await ctx.step(str, "warm-up")
        return await ctx.step(  # type: ignore[no-any-return]
            charge, 42, retry=Retry(max_attempts=5, initial=0.01)
        )

    with fast(app):
        handle = app.start(billing, id="order-7")
        assert handle.result(10) == 42
    assert keys == ["order-7:2"] * 3


def test_run_level_retry_then_dlq_then_replay_from_last_checkpoint(
    make_app: AppFactory,
) -> None:
    app = make_app()
    calls: Counter[str] = Counter()
    broken = threading.Event()
    broken.set()

    def prepare() -> str:
        calls["prepare"] += 1
        return "prepared"

    def publish() -> str:
        calls["publish"] += 1
        if broken.is_set():
            raise ValueError("publisher down")
        return "published"

    @app.agent(retry=Retry(max_attempts=2, initial=0.05, jitter=False))
    async def pipeline(ctx: nonstop.Context) -> list[str]:
        return [await ctx.step(prepare), await ctx.step(publish)]

    with fast(app):
        handle = app.start(pipeline, id="p1")
        with pytest.raises(nonstop.RunFailed, match="publisher down"):
            handle.result(10)
        run = handle.get()
        assert (run.status, run.attempt) == (RunStatus.DEAD, 2)
        assert calls == {"prepare": 1, "publish": 2}
        broken.clear()
        replayed = app._call(lambda rt: rt.store.replay_dead("p1", time.time()))
        assert [r.id for r in replayed] == ["p1"]
        app._runtime.executor.notify()  # type: ignore[union-attr]
        assert handle.result(10) == ["prepared", "published"]
    assert calls == {"prepare": 1, "publish": 3}
    assert handle.get().attempt == 3


def test_give_up_on_skips_run_retries(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent(retry=Retry(max_attempts=5, initial=0.01, give_up_on=(KeyError,)))
    async def picky(ctx: nonstop.Context) -> None:
        raise KeyError("no such customer")

    with fast(app):
        handle = app.start(picky)
        with pytest.raises(nonstop.RunFailed, match="KeyError"):
            handle.result(10)
    assert handle.get().attempt == 1


def test_changed_code_pauses_the_run_with_both_names(make_app: AppFactory) -> None:
    app = make_app()
    version = {"step": "fetch"}

    def fetch() -> int:
        return 1

    def fetch_v2() -> int:
        return 2

    @app.agent
    async def evolving(ctx: nonstop.Context) -> int:
        fn = fetch if version["step"] == "fetch" else fetch_v2
        value: int = await ctx.step(fn)
        await ctx.sleep(0.3)
        return value

    with fast(app):
        handle = app.start(evolving)
        wait_status(handle, RunStatus.SLEEPING)
        version["step"] = "fetch_v2"  # a deploy changed the code while the run slept
        wait_status(handle, RunStatus.PAUSED)
    reason = handle.get().wait_reason or ""
    assert "NonDeterminismError" in reason and "'fetch'" in reason and "'fetch_v2'" in reason
    assert query(app, "SELECT kind FROM incidents") == [("non_determinism",)]


def test_a_corrupt_checkpoint_pauses_instead_of_replaying(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def careful(ctx: nonstop.Context) -> int:
        value: int = await ctx.step(int, "7")
        await ctx.sleep(0.3)
        return value

    with fast(app):
        handle = app.start(careful)
        wait_status(handle, RunStatus.SLEEPING)
        query(app, "UPDATE steps SET payload = '8' WHERE seq = 1")
        wait_status(handle, RunStatus.PAUSED)
    assert "CorruptCheckpoint" in (handle.get().wait_reason or "")


def test_step_timeouts_for_async_and_sync_functions(make_app: AppFactory) -> None:
    app = make_app()

    async def hangs() -> None:
        await asyncio.sleep(30)

    def blocks() -> None:
        time.sleep(1.0)

    @app.agent
    async def impatient(ctx: nonstop.Context) -> list[str]:
        outcomes = []
        for fn in (hangs, blocks):
            try:
                await ctx.step(fn, timeout=0.1)
            except nonstop.StepFailed as exc:
                outcomes.append(exc.type_name)
        return outcomes

    with fast(app):
        started = time.monotonic()
        assert app.run(impatient, timeout=10) == ["nonstop.errors.StepTimeout"] * 2
        assert time.monotonic() - started < 0.9


def test_run_timeout_ends_the_execution(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent(timeout=0.2, retry=Retry(max_attempts=1))
    async def slowpoke(ctx: nonstop.Context) -> None:
        await asyncio.sleep(30)

    with fast(app):
        handle = app.start(slowpoke)
        with pytest.raises(nonstop.RunFailed, match="RunTimeout"):
            handle.result(10)


def test_cancel_stops_a_running_and_a_pending_run(make_app: AppFactory) -> None:
    app = make_app()
    entered = threading.Event()

    async def forever() -> None:
        entered.set()
        await asyncio.sleep(60)

    @app.agent
    async def stuck(ctx: nonstop.Context) -> None:
        await ctx.step(forever)

    with app.worker(poll_interval=0.02, lease_ttl=0.3):
        handle = app.start(stuck)
        assert entered.wait(5)
        app._call(lambda rt: rt.store.request_cancel(handle.run_id, time.time()))
        with pytest.raises(nonstop.RunCancelled):
            handle.result(5)
    app.start(stuck, id="later")  # no worker now: stays pending
    cancelled = app._call(lambda rt: rt.store.request_cancel("later", time.time()))
    assert cancelled.status == RunStatus.CANCELLED


def test_starting_one_id_twice_gives_one_run(make_app: AppFactory) -> None:
    app = make_app()
    runs = Counter[str]()

    @app.agent
    async def once(ctx: nonstop.Context, n: int) -> int:
        runs[ctx.run_id] += 1
        return n

    handles: list[nonstop.RunHandle] = []

    def start() -> None:
        handles.append(app.start(once, {"n": 1}, id="same"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {h.run_id for h in handles} == {"same"}
    with fast(app):
        assert app.start(once, {"n": 2}, id="same").result(10) == 1  # the first input wins
    assert runs == {"same": 1}
    assert query(app, "SELECT count(*) FROM runs") == [(1,)]


def test_results_must_be_json(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def sloppy(ctx: nonstop.Context) -> object:
        return {"when": object()}

    with fast(app):
        handle = app.start(sloppy)
        with pytest.raises(nonstop.RunFailed, match="not JSON-serialisable"):
            handle.result(10)
    assert handle.get().attempt == 1  # a programming error is not retried


def test_bad_requests_are_refused_before_touching_the_store(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    async def known(ctx: nonstop.Context) -> None:
        return None

    with pytest.raises(nonstop.UnknownAgent, match="unknown agent 'ghost'"):
        app.start("ghost")
    with pytest.raises(nonstop.InvalidInput):
        app.start(known, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(nonstop.InvalidInput):
        app.start(known, {"x": {1, 2}})
    with pytest.raises(nonstop.ConfigError, match="declared twice"):
        app.agent(name="known")(known.fn)


def test_heartbeats_are_recorded(make_app: AppFactory) -> None:
    app = make_app()

    @app.agent
    def beating(ctx: nonstop.SyncContext) -> None:
        ctx.heartbeat("working", items=3)
        ctx.sleep(0.05)

    with fast(app):
        handle = app.start(beating)
        handle.result(10)
    assert handle.get().heartbeat == {"status": "working", "items": 3}


def test_two_apps_on_two_files_are_independent(make_app: AppFactory, tmp_path: Path) -> None:
    first = make_app("one")
    second = make_app("two", f"sqlite:///{tmp_path / 'other.db'}")
    for app in (first, second):

        @app.agent(name="echo")
        async def echo(ctx: nonstop.Context, v: str) -> str:
            return v

    with fast(first), fast(second):
        assert first.run("echo", {"v": "1"}, timeout=5) == "1"
        assert second.run("echo", {"v": "2"}, timeout=5) == "2"
    assert query(first, "SELECT count(*) FROM runs") == [(1,)]


def test_a_step_that_gave_up_before_a_crash_is_not_tried_again(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[str] = []

    def charge() -> str:
        calls.append("charge")
        return "charged"

    @app.agent(retry=Retry(max_attempts=1))
    async def billing(ctx: nonstop.Context) -> str:
        return await ctx.step(charge)  # type: ignore[no-any-return]

    handle = app.start(billing)
    # what a node leaves when it dies between recording the final try and the step's error
    error = '{"type": "builtins.ConnectionError", "message": "declined", "traceback": ""}'
    query(
        app,
        "INSERT INTO step_attempts VALUES (?, 1, 1, 1, 'charge', ?, 1.0, 2.0, NULL)",
        handle.run_id,
        error,
    )
    with fast(app), pytest.raises(nonstop.RunFailed, match="declined"):
        handle.result(10)
    assert calls == []  # the policy allowed one try, and it was used
    assert query(app, "SELECT status, attempts FROM steps") == [("failed", 1)]
