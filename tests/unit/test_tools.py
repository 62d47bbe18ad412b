"""Tools: durable calls by name, an allow-list per agent, and each tool's own policies
(retry, timeout, circuit breaker, a rate limit shared by every run and node)."""

from __future__ import annotations

import asyncio
import time

import pytest

import nonstop
from nonstop import CircuitBreaker, Retry, RunStatus
from tests.conftest import AppFactory
from tests.unit.test_durable_runs import query, wait_status


def test_a_tool_call_is_a_checkpointed_step_in_sync_and_async_handlers(
    make_app: AppFactory,
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.tool
    def search_web(query: str) -> list[str]:
        calls.append(query)
        return [f"{query}-1", f"{query}-2"]

    @app.agent(tools=["search_web"], retry=Retry(max_attempts=2, initial=0.01))
    async def scout(ctx: nonstop.Context, topic: str) -> list[str]:
        hits: list[str] = await ctx.tool("search_web", query=topic)
        if ctx.attempt == 1:
            raise RuntimeError("crash after the tool call")  # the retry replays it
        return hits

    @app.agent(tools=[search_web])  # the Tool object works as well as its name
    def plain(ctx: nonstop.SyncContext) -> list[str]:
        return list(ctx.tool("search_web", query="sync"))

    with app.worker(poll_interval=0.02):
        assert app.run(scout, {"topic": "agents"}) == ["agents-1", "agents-2"]
        assert app.run(plain) == ["sync-1", "sync-2"]
    assert calls == ["agents", "sync"]  # once each: the retry got the recorded result
    names = query(app, "SELECT name FROM steps ORDER BY run_id, seq")
    assert names == [("tool:search_web",), ("tool:search_web",)]
    assert search_web("direct") == ["direct-1", "direct-2"]  # still a plain function


def test_a_tool_outside_the_allow_list_is_denied_without_being_called(
    make_app: AppFactory,
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.tool
    def delete_everything() -> None:
        calls.append("oops")

    @app.tool
    def read_only() -> str:
        return "ok"

    @app.agent(tools=["read_only"])
    async def careful(ctx: nonstop.Context) -> str:
        try:
            await ctx.tool("delete_everything")
        except nonstop.ToolDenied as exc:
            return str(exc)
        return "called"

    @app.agent(retry=Retry(max_attempts=5, initial=0.01))  # no tools= at all
    async def reckless(ctx: nonstop.Context) -> None:
        await ctx.tool("delete_everything")

    with app.worker(poll_interval=0.02):
        message = app.run(careful)
        handle = app.start(reckless)
        with pytest.raises(nonstop.RunFailed, match="ToolDenied"):
            handle.result(10)
    assert message == "agent 'careful' may not call tool 'delete_everything' (its tools: read_only)"
    assert calls == []
    assert handle.get().attempt == 1  # a denial is not retried: the code decides it
    assert query(app, "SELECT count(*) FROM steps") == [(0,)]


def test_an_agent_listing_an_unregistered_tool_stops_the_worker_from_starting(
    make_app: AppFactory,
) -> None:
    app = make_app()

    @app.agent(tools=["search_web", "fetch"])
    async def scout(ctx: nonstop.Context) -> None:
        return None

    @app.tool
    def fetch() -> None:  # declared after the agent: fine
        return None

    with pytest.raises(nonstop.ConfigError, match=r"unregistered tool\(s\) search_web"):
        app.worker().__enter__()
    with pytest.raises(nonstop.ConfigError, match="needs a name of its own"):
        app.tool(fetch.fn)


def test_a_tool_has_its_own_retry_timeout_and_breaker(make_app: AppFactory) -> None:
    app = make_app()
    tries: list[str] = []

    @app.tool(retry=Retry(max_attempts=3, initial=0.01), timeout=0.2)
    async def slow(n: int) -> int:
        tries.append("slow")
        await asyncio.sleep(10 if len(tries) < 3 else 0)  # times out twice, then answers
        return n

    @app.tool(breaker=CircuitBreaker("crm", failure_threshold=2, reset_after=60))
    def crm(lead: str) -> None:
        tries.append(lead)
        raise ConnectionError("crm down")

    @app.agent(tools=["slow", "crm"], retry=Retry(max_attempts=1))
    async def agent(ctx: nonstop.Context) -> list[str]:
        outcomes = [str(await ctx.tool("slow", n=7))]
        for lead in ("a", "b", "c", "d"):
            try:
                await ctx.tool("crm", lead=lead)
            except nonstop.StepFailed as exc:
                outcomes.append(exc.type_name)
        return outcomes

    with app.worker(poll_interval=0.02):
        outcomes = app.run(agent)
    assert outcomes == ["7"] + ["builtins.ConnectionError"] * 2 + ["nonstop.errors.BreakerOpen"] * 2
    assert tries == ["slow", "slow", "slow", "a", "b"]  # the open breaker called nothing
    errors = [str(e) for (e,) in query(app, "SELECT error FROM step_attempts")]
    assert sum("timed out after 0.2s" in e for e in errors) == 2


def test_a_tool_rate_limit_holds_across_runs_and_apps(
    make_app: AppFactory, any_db_url: str
) -> None:
    calls: list[float] = []

    def build(name: str) -> nonstop.App:
        app = make_app(name)

        @app.tool(rate="5/s")
        def lookup(n: int) -> int:
            calls.append(time.monotonic())
            return n

        @app.agent(tools=["lookup"])
        async def worker(ctx: nonstop.Context, start: int) -> list[int]:
            return [await ctx.tool("lookup", n=start + i) for i in range(5)]

        return app

    first, second = build("one"), build("two")  # two nodes on one store
    with first.worker(poll_interval=0.02), second.worker(poll_interval=0.02):
        handles = [
            app.start("worker", {"start": 10 * i}) for i, app in enumerate([first, second] * 2)
        ]
        outputs = [h.result(20) for h in handles]
    assert outputs == [[10 * i + k for k in range(5)] for i in range(4)]
    calls.sort()
    # a bucket of 5 refilled at 5/s: any window of w seconds holds at most 5 + 5w calls
    for i in range(len(calls)):
        for j in range(i, len(calls)):
            assert j - i + 1 <= 5 + 5 * (calls[j] - calls[i]) + 1, (i, j)
    assert calls[-1] - calls[0] >= 2.5  # 20 calls: 5 at once, then 15 more at 5/s


def test_a_long_rate_limit_wait_parks_the_run(make_app: AppFactory) -> None:
    app = make_app()

    @app.tool(rate="1/h")
    def report() -> str:
        return "sent"

    @app.agent(tools=["report"])
    async def reporter(ctx: nonstop.Context) -> str:
        return str(await ctx.tool("report"))

    with app.worker(poll_interval=0.02):
        assert app.run(reporter) == "sent"
        second = app.start(reporter)
        wait_status(second, RunStatus.SLEEPING)
    reason = second.get().wait_reason or ""
    assert reason.startswith("step 1 (tool:report) waits for rate limit 1/h until ")
    assert query(app, "SELECT count(*) FROM steps") == [(1,)]  # nothing recorded for it


def test_callers_over_a_rate_limit_queue_up_and_the_far_ones_park(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[float] = []

    @app.tool(rate="5/s")
    def send(n: int) -> int:
        calls.append(time.monotonic())
        return n

    @app.agent(tools=["send"])
    async def notify(ctx: nonstop.Context, n: int) -> int:
        return int(await ctx.tool("send", n=n))

    parked: set[str] = set()
    with app.worker(poll_interval=0.02):
        handles = [app.start(notify, {"n": n}) for n in range(20)]
        deadline = time.monotonic() + 30
        while not all(h.status() == RunStatus.COMPLETED for h in handles):
            assert time.monotonic() < deadline
            rows = query(app, "SELECT id, wait_reason FROM runs WHERE status = 'sleeping'")
            parked |= {str(i) for i, why in rows if "waits for rate limit 5/s" in str(why)}
            time.sleep(0.01)
        assert sorted(h.result(1) for h in handles) == list(range(20))
    # a burst of 5, then 5/s: a call more than a second out parks its run (no slot held,
    # no polling) instead of waiting in memory
    assert len(parked) >= 5, parked
    calls.sort()
    assert calls[-1] - calls[0] >= 2.8 - 0.1  # 15 calls after the burst at 5/s
