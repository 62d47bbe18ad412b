"""The app the crash tests serve: agents whose steps leave a line on disk before returning.

    nonstop serve tests/e2e/crash_app.py:app --db sqlite:///x.db

Every step appends a JSON line to a file (flushed and fsynced, so the line is on disk
before the step returns) and returns a value that differs on every execution (a random
token), so a test can tell whether the result a handler sees is the recorded one. The
handlers append what they observed after each step to a second file, on every execution
including replays, and return the list of step results they observed.

The files come from the environment, read at call time, so the test process can import
this module to start runs without setting anything:

- `CRASH_APP_EFFECTS`: one line per execution of an effect step
  `{"key", "token", "started", "pid"}`;
- `CRASH_APP_ATTEMPTS`: one line per execution of the flaky step
  `{"key", "n", "token", "started", "failed", "ended", "pid"}`;
- `CRASH_APP_OBSERVED`: one line per step result a handler received
  `{"kind": "result", "run_id", "seq", "expected_key", "key", "token", "pid"}`, and one
  each time a handler calls `ctx.sleep` `{"kind": "sleep", "run_id", "seq", "at", "pid"}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

import nonstop
from nonstop import Retry
from nonstop.context import INLINE_RETRY_WAIT

EFFECTS_ENV = "CRASH_APP_EFFECTS"
ATTEMPTS_ENV = "CRASH_APP_ATTEMPTS"
OBSERVED_ENV = "CRASH_APP_OBSERVED"

STEPS = 20
"""Steps of a chain run."""

FLAKY_FAILURES = 2
"""The flaky step fails this many executions (per idempotency key), then succeeds."""

FLAKY_RETRY = Retry(max_attempts=3, initial=1.5, factor=1, jitter=False)
"""1.5 s between tries: longer than the runtime keeps a run in memory, so it parks."""

INLINE_RETRY = Retry(max_attempts=3, initial=INLINE_RETRY_WAIT, factor=1, jitter=False)
"""The longest wait the runtime spends in memory: the run stays `running` meanwhile."""

SLEEP_SECONDS = 1.5

Result = dict[str, Any]


def _append(env: str, record: dict[str, Any], *, durable: bool) -> None:
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(os.environ[env], "a", encoding="utf-8") as file:
        file.write(line)
        file.flush()
        if durable:
            os.fsync(file.fileno())


def _token() -> str:
    return os.urandom(8).hex()


def _effect_line(key: str, started: float) -> Result:
    """Record one execution of an effect step on disk; return the step's result."""
    token = _token()
    _append(
        EFFECTS_ENV,
        {"key": key, "token": token, "started": started, "pid": os.getpid()},
        durable=True,
    )
    return {"key": key, "token": token, "ns": time.time_ns()}


def effect(delay: float, idempotency_key: str) -> Result:
    """A synchronous effect: some work, the write, some more work (a crash in the second
    half loses the result of an effect that did happen: the at-least-once window)."""
    started = time.time()
    time.sleep(random.uniform(0.0, delay))
    result = _effect_line(idempotency_key, started)
    time.sleep(random.uniform(0.0, delay))
    return result


async def effect_async(delay: float, idempotency_key: str) -> Result:
    """The same effect as a coroutine (runs on the node's event loop)."""
    started = time.time()
    await asyncio.sleep(random.uniform(0.0, delay))
    result = _effect_line(idempotency_key, started)
    await asyncio.sleep(random.uniform(0.0, delay))
    return result


def staggered(wait: float, idempotency_key: str) -> Result:
    """An effect that takes exactly `wait` seconds before its write."""
    started = time.time()
    time.sleep(wait)
    return _effect_line(idempotency_key, started)


def flaky(idempotency_key: str) -> Result:
    """Fails its first FLAKY_FAILURES executions for a key, counted from the attempts file
    (one execution of a key at a time: the run's lease guarantees it)."""
    started = time.time()
    path = os.environ[ATTEMPTS_ENV]
    prior = 0
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            prior = sum(1 for line in file if json.loads(line)["key"] == idempotency_key)
    failed = prior < FLAKY_FAILURES
    token = _token()
    _append(
        ATTEMPTS_ENV,
        {
            "key": idempotency_key,
            "n": prior + 1,
            "token": token,
            "started": started,
            "failed": failed,
            "ended": time.time(),
            "pid": os.getpid(),
        },
        durable=True,
    )
    if failed:
        raise ConnectionError(f"flaky: execution {prior + 1} of {idempotency_key} fails")
    return {"key": idempotency_key, "token": token, "ns": time.time_ns()}


def _observe(run_id: str, seq: int, expected_key: str, result: Result) -> None:
    """What the handler received for step `seq` (not a step: written on every replay)."""
    _append(
        OBSERVED_ENV,
        {
            "kind": "result",
            "run_id": run_id,
            "seq": seq,
            "expected_key": expected_key,
            "key": result["key"],
            "token": result["token"],
            "pid": os.getpid(),
        },
        durable=False,
    )


async def chain_async(
    ctx: nonstop.Context, steps: int = STEPS, delay: float = 0.02
) -> dict[str, list[Result]]:
    """`steps` effect steps, alternately async and sync functions, under an async handler."""
    observed: list[Result] = []
    for seq in range(1, steps + 1):
        expected_key = ctx.idempotency_key
        fn = effect_async if seq % 2 else effect
        result: Result = await ctx.step(fn, delay, name="effect")
        _observe(ctx.run_id, seq, expected_key, result)
        observed.append(result)
    return {"observed": observed}


def chain_sync(
    ctx: nonstop.SyncContext, steps: int = STEPS, delay: float = 0.02
) -> dict[str, list[Result]]:
    """The same chain under a plain `def` handler (run in a worker thread)."""
    observed: list[Result] = []
    for seq in range(1, steps + 1):
        expected_key = ctx.idempotency_key
        fn = effect if seq % 2 else effect_async
        result: Result = ctx.step(fn, delay, name="effect")
        _observe(ctx.run_id, seq, expected_key, result)
        observed.append(result)
    return {"observed": observed}


def _observe_sleep(run_id: str, seq: int) -> None:
    """The handler is about to call ctx.sleep (on replays too: the first line is when the
    sleep began)."""
    _append(
        OBSERVED_ENV,
        {"kind": "sleep", "run_id": run_id, "seq": seq, "at": time.time(), "pid": os.getpid()},
        durable=False,
    )


async def retrier(
    ctx: nonstop.Context, stagger: float = 0.0, delay: float = 0.02
) -> dict[str, list[Result]]:
    """before (takes `stagger` s, to spread runs in time), flaky (retried 1.5 s later:
    parked), after."""
    return await _retrier(ctx, stagger, delay, FLAKY_RETRY)


async def retrier_inline(
    ctx: nonstop.Context, stagger: float = 0.0, delay: float = 0.02
) -> dict[str, list[Result]]:
    """The same with a retry wait short enough to be spent in memory."""
    return await _retrier(ctx, stagger, delay, INLINE_RETRY)


async def _retrier(
    ctx: nonstop.Context, stagger: float, delay: float, retry: Retry
) -> dict[str, list[Result]]:
    observed: list[Result] = []
    expected_key = ctx.idempotency_key
    result: Result = await ctx.step(staggered, stagger, name="before")
    _observe(ctx.run_id, 1, expected_key, result)
    observed.append(result)
    expected_key = ctx.idempotency_key
    result = await ctx.step(flaky, name="flaky", retry=retry)
    _observe(ctx.run_id, 2, expected_key, result)
    observed.append(result)
    expected_key = ctx.idempotency_key
    result = await ctx.step(effect, delay, name="after")
    _observe(ctx.run_id, 3, expected_key, result)
    observed.append(result)
    return {"observed": observed}


async def sleeper(
    ctx: nonstop.Context, stagger: float = 0.0, delay: float = 0.02
) -> dict[str, list[Result]]:
    """before (takes `stagger` s), a durable sleep of SLEEP_SECONDS, after."""
    observed: list[Result] = []
    expected_key = ctx.idempotency_key
    result: Result = await ctx.step(staggered, stagger, name="before")
    _observe(ctx.run_id, 1, expected_key, result)
    observed.append(result)
    _observe_sleep(ctx.run_id, 2)
    await ctx.sleep(SLEEP_SECONDS)
    expected_key = ctx.idempotency_key
    result = await ctx.step(effect, delay, name="after")
    _observe(ctx.run_id, 3, expected_key, result)
    observed.append(result)
    return {"observed": observed}


def build_app(database_url: str | None = None) -> nonstop.App:
    """The crash app on `database_url` (default: NONSTOP_DATABASE_URL or nonstop.db)."""
    built = nonstop.App("crash", database_url)
    built.agent(chain_async)
    built.agent(chain_sync)
    built.agent(retrier)
    built.agent(retrier_inline)
    built.agent(sleeper)
    return built


app = build_app()
