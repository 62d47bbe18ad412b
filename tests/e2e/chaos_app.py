"""The app the chaos test serves: ten-step agents whose steps fail now and then.

    nonstop serve tests/e2e/chaos_app.py:app --db sqlite:///x.db

Every execution of a step appends a JSON line to a file (flushed and fsynced before the step
returns or raises) and then, with probability `CHAOS_APP_FAIL_RATE` (default 0.1), decided
by a random generator of this process, raises `InjectedFailure`; otherwise it returns a
value that differs on every execution (a random token), so a test can tell which execution
a recorded result came from. The error message of an injected failure names its token too.

Steps 3, 6 and 9 are tried once, step 5 retries after a wait long enough to park the run,
the others retry in memory; the run itself is retried once (`RUN_RETRY`). So a run ends
`dead` when one of its steps gives up in both of its attempts. `chaos_tools` makes the
same calls as registered tools (`ctx.tool`), the in-memory ones under a rate limit shared
by every run, so that some calls wait for their token and some runs park for it.

The handlers append what they observed after each step to a second file, on every
execution including replays, and return the list of step results they observed.

The files come from the environment, read at call time, so the test process can import
this module to start runs without setting anything:

- `CHAOS_APP_EFFECTS`: one line per execution of a step
  `{"key", "token", "failed", "started", "pid"}`;
- `CHAOS_APP_OBSERVED`: one line per step outcome a handler received
  `{"run_id", "seq", "run_attempt", "key", "token", "failed", "message", "pid"}` (`token` is
  null for a failure, `message` for a success).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nonstop
from nonstop import Restart, Retry
from nonstop.errors import StepFailed

EFFECTS_ENV = "CHAOS_APP_EFFECTS"
OBSERVED_ENV = "CHAOS_APP_OBSERVED"
FAIL_RATE_ENV = "CHAOS_APP_FAIL_RATE"

STEPS = 10
"""Steps of a run."""

FAIL_RATE = 0.1
"""Share of step executions that raise InjectedFailure (unless the environment says)."""

STEP_DELAY = 0.04
"""Each half of a step (before and after its write) takes uniform(0, this) seconds."""

IN_MEMORY_RETRY = Retry(max_attempts=3, initial=0.05, factor=2.0, max_delay=0.2)
"""Waits short enough to be spent in memory: the run stays `running` meanwhile."""

PARKED_RETRY = Retry(max_attempts=3, initial=1.2, factor=1.0, jitter=False)
"""A wait longer than the runtime keeps a run in memory: the run parks as `sleeping`."""

RUN_RETRY = Retry(max_attempts=2, initial=0.2, factor=1.0)
"""A run whose step gives up is tried once more (completed steps are kept)."""

TOOL_RATE = "8/s"
"""The rate limit of the `effect_rated` tool: below what the runs ask for, so calls queue."""

RESTART = Restart(cooldown=0.1, max_restarts=1_000_000, window="1h")
"""The restart policy of `chaos_restart`: a run its node's crash took down restarts after a
short cooldown (a `restarted` incident) and never escalates."""

_rng = random.Random()
"""This process's generator: which executions fail and how long steps take."""

Result = dict[str, Any]


class InjectedFailure(Exception):
    """The failure a step raises on purpose."""


def step_retry(seq: int) -> Retry | None:
    """The retry policy of step `seq` (None: tried once)."""
    if seq % 3 == 0:
        return None
    if seq == 5:
        return PARKED_RETRY
    return IN_MEMORY_RETRY


def tool_for(seq: int) -> str:
    """The tool `chaos_tools` calls at step `seq` (the same retry policy as `step_retry`)."""
    if step_retry(seq) is None:
        return "effect_once"
    return "effect_parked" if seq == 5 else "effect_rated"


def step_name(agent: str, seq: int) -> str:
    """The name step `seq` of a run of `agent` is recorded under."""
    return f"tool:{tool_for(seq)}" if agent == "chaos_tools" else "effect"


def max_tries(seq: int) -> int:
    """How many times step `seq` is tried within one attempt of its run."""
    policy = step_retry(seq)
    return 1 if policy is None else policy.max_attempts


def _append(env: str, record: dict[str, Any], *, durable: bool) -> None:
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(os.environ[env], "a", encoding="utf-8") as file:
        file.write(line)
        file.flush()
        if durable:
            os.fsync(file.fileno())


def _execute(key: str, started: float) -> Result:
    """One execution of a step: its line on disk, then a failure or a fresh result."""
    token = os.urandom(8).hex()
    failed = _rng.random() < float(os.environ.get(FAIL_RATE_ENV, FAIL_RATE))
    _append(
        EFFECTS_ENV,
        {"key": key, "token": token, "failed": failed, "started": started, "pid": os.getpid()},
        durable=True,
    )
    if failed:
        raise InjectedFailure(f"injected failure {token} at {key}")
    return {"key": key, "token": token}


def effect(delay: float, idempotency_key: str) -> Result:
    """A synchronous step: some work, the write, some more work (a crash in the second half
    loses the outcome of an execution that did happen: the at-least-once window)."""
    started = time.time()
    time.sleep(_rng.uniform(0.0, delay))
    try:
        return _execute(idempotency_key, started)
    finally:
        time.sleep(_rng.uniform(0.0, delay))


async def effect_async(delay: float, idempotency_key: str) -> Result:
    """The same step as a coroutine (runs on the node's event loop)."""
    started = time.time()
    await asyncio.sleep(_rng.uniform(0.0, delay))
    try:
        return _execute(idempotency_key, started)
    finally:
        await asyncio.sleep(_rng.uniform(0.0, delay))


def _observe(
    run_id: str, seq: int, run_attempt: int, key: str, result: Result | None, failure: str | None
) -> None:
    """What the handler received for step `seq` (not a step: written on every replay)."""
    _append(
        OBSERVED_ENV,
        {
            "run_id": run_id,
            "seq": seq,
            "run_attempt": run_attempt,
            "key": key if result is None else result["key"],
            "token": None if result is None else result["token"],
            "failed": result is None,
            "message": failure,
            "pid": os.getpid(),
        },
        durable=False,
    )


async def _chain(
    ctx: nonstop.Context, call: Callable[[int], Awaitable[Result]]
) -> dict[str, list[Result]]:
    """STEPS durable calls, `call(seq)` each, observed as they come back."""
    observed: list[Result] = []
    for seq in range(1, STEPS + 1):
        key = ctx.idempotency_key
        try:
            result = await call(seq)
        except StepFailed as exc:
            _observe(ctx.run_id, seq, ctx.attempt, key, None, exc.message)
            raise
        _observe(ctx.run_id, seq, ctx.attempt, key, result, None)
        observed.append(result)
    return {"observed": observed}


def _steps(ctx: nonstop.Context, delay: float) -> Callable[[int], Awaitable[Result]]:
    """Step `seq` as `ctx.step`, alternately of the async and the sync function."""

    def call(seq: int) -> Awaitable[Result]:
        fn = effect_async if seq % 2 else effect
        return ctx.step(fn, delay, name="effect", retry=step_retry(seq))

    return call


async def chaos_async(ctx: nonstop.Context, delay: float = STEP_DELAY) -> dict[str, list[Result]]:
    """STEPS steps, alternately async and sync functions, under an async handler."""
    return await _chain(ctx, _steps(ctx, delay))


def chaos_sync(ctx: nonstop.SyncContext, delay: float = STEP_DELAY) -> dict[str, list[Result]]:
    """The same chain under a plain `def` handler (run in a worker thread)."""
    observed: list[Result] = []
    for seq in range(1, STEPS + 1):
        key = ctx.idempotency_key
        fn = effect if seq % 2 else effect_async
        try:
            result: Result = ctx.step(fn, delay, name="effect", retry=step_retry(seq))
        except StepFailed as exc:
            _observe(ctx.run_id, seq, ctx.attempt, key, None, exc.message)
            raise
        _observe(ctx.run_id, seq, ctx.attempt, key, result, None)
        observed.append(result)
    return {"observed": observed}


async def chaos_restart(ctx: nonstop.Context, delay: float = STEP_DELAY) -> dict[str, list[Result]]:
    """The async chain under the RESTART policy."""
    return await _chain(ctx, _steps(ctx, delay))


async def chaos_tools(ctx: nonstop.Context, delay: float = STEP_DELAY) -> dict[str, list[Result]]:
    """The chain again, each step a call of a registered tool."""
    return await _chain(ctx, lambda seq: ctx.tool(tool_for(seq), delay=delay))


AGENTS = ("chaos_async", "chaos_sync", "chaos_restart", "chaos_tools")
RESTARTING = frozenset({"chaos_restart"})
"""The agents with a restart policy."""


def build_app(database_url: str | None = None) -> nonstop.App:
    """The chaos app on `database_url` (default: NONSTOP_DATABASE_URL or nonstop.db)."""
    built = nonstop.App("chaos", database_url)
    built.agent(retry=RUN_RETRY)(chaos_async)
    built.agent(retry=RUN_RETRY)(chaos_sync)
    built.agent(retry=RUN_RETRY, restart=RESTART)(chaos_restart)
    built.tool(name="effect_once")(effect)
    built.tool(name="effect_parked", retry=PARKED_RETRY)(effect_async)
    built.tool(name="effect_rated", retry=IN_MEMORY_RETRY, rate=TOOL_RATE)(effect_async)
    built.agent(retry=RUN_RETRY, tools=["effect_once", "effect_parked", "effect_rated"])(
        chaos_tools
    )
    return built


app = build_app()
