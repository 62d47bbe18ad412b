"""The apps the trigger tests serve: a schedule, a signal wait, a fan-out and a saga.

    nonstop serve tests/e2e/triggers_app.py:ticker_app --db sqlite:///x.db
    nonstop serve tests/e2e/triggers_app.py:app --db sqlite:///x.db

Two apps, so that the schedule fires only where a test wants it: `ticker_app` holds the
scheduled agent alone, `app` the agents started by hand (`waiter`, `fanout` with its
child agent `square`, `saga`).

Side effects go to files named by the environment, read at call time (the test process
imports this module to start runs without setting anything):

- `TRIGGERS_APP_EFFECTS`: one line per execution of a fan-out child's step
  `{"key", "i", "pid"}`;
- `TRIGGERS_APP_UNDO`: one line per execution of a saga compensation
  `{"step", "key", "pid", "at"}`, flushed and fsynced before the compensation sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import nonstop
from nonstop import Retry

EFFECTS_ENV = "TRIGGERS_APP_EFFECTS"
UNDO_ENV = "TRIGGERS_APP_UNDO"

TICK = 0.5
"""Seconds between fires of `ticker`."""

TICK_WORK = 0.05
"""How long a tick's step takes: fires are in flight when a node is killed."""

SAGA_STEPS = ("reserve", "charge", "ship")
"""The saga's compensable steps, in execution order (undone in reverse)."""

UNDO_PAUSE = 0.5
"""How long each compensation takes after its side effect is on disk."""

ONCE = Retry(max_attempts=1)
"""No run-level retry: a failure is final at once."""

Result = dict[str, Any]


def _append(env: str, record: Result) -> None:
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(os.environ[env], "a", encoding="utf-8") as file:
        file.write(line)
        file.flush()
        os.fsync(file.fileno())


# -- the schedule ---------------------------------------------------------------------------


async def stamp() -> Result:
    """Which process executed the tick, and when."""
    await asyncio.sleep(TICK_WORK)
    return {"pid": os.getpid(), "at": time.time()}


async def ticker(ctx: nonstop.Context) -> Result:
    """Fires every TICK seconds; one step per fire."""
    stamped: Result = await ctx.step(stamp)
    return {"run_id": ctx.run_id, **stamped}


def build_ticker_app(database_url: str | None = None) -> nonstop.App:
    """`ticker` every 0.5 s, every missed fire made up after downtime."""
    built = nonstop.App("triggers-ticker", database_url)
    built.agent(every=TICK, catch_up="all", max_catch_up=100_000, retry=ONCE)(ticker)
    return built


# -- signals --------------------------------------------------------------------------------


async def hold(seconds: float) -> float:
    """A step that takes `seconds`: keeps a run busy before its wait."""
    await asyncio.sleep(seconds)
    return seconds


async def waiter(
    ctx: nonstop.Context,
    hold_for: float = 0.0,
    timeout: float | None = None,
    default: Any = None,
) -> Result:
    """A step of `hold_for` seconds, then a durable wait for the signal `go`."""
    await ctx.step(hold, hold_for)
    got = await ctx.wait_for("go", timeout=timeout, default=default)
    return {"got": got}


# -- fan-out --------------------------------------------------------------------------------


async def compute(i: int, work: float, idempotency_key: str) -> int:
    """A child's work: a line on disk, then `work` seconds (a kill in that window repeats
    the effect on recovery), then i squared."""
    _append(EFFECTS_ENV, {"key": idempotency_key, "i": i, "pid": os.getpid()})
    await asyncio.sleep(work)
    return i * i


async def square(ctx: nonstop.Context, i: int, work: float = 0.0) -> Result:
    """One child of the fan-out."""
    value: int = await ctx.step(compute, i, work)
    return {"i": i, "square": value}


async def fanout(
    ctx: nonstop.Context, n: int = 100, work: float = 0.0, max_parallel: int = 10
) -> Result:
    """`square` over range(n) as child runs, `max_parallel` at a time."""
    inputs: list[dict[str, Any]] = [{"i": i, "work": work} for i in range(n)]
    outputs = await ctx.map("square", inputs, max_parallel=max_parallel)
    return {"outputs": outputs}


# -- saga -----------------------------------------------------------------------------------


def do(step: str) -> Result:
    """A compensable step: its result names it, for its compensation."""
    return {"step": step}


def undo(result: Result, idempotency_key: str = "") -> Result:
    """Undo one saga step: the side effect goes to disk first, then the compensation takes
    UNDO_PAUSE seconds more (a kill in that window loses the record, not the effect)."""
    _append(
        UNDO_ENV,
        {"step": result["step"], "key": idempotency_key, "pid": os.getpid(), "at": time.time()},
    )
    time.sleep(UNDO_PAUSE)
    return {"undone": result["step"]}


class ConfirmFailed(RuntimeError):
    """The saga's last step always fails."""


def confirm() -> None:
    raise ConfirmFailed("confirmation refused")


async def saga(ctx: nonstop.Context) -> Result:
    """Three compensable steps, then one that fails: the saga is undone in reverse."""
    done = [await ctx.step(do, step, name=step, compensate=undo) for step in SAGA_STEPS]
    await ctx.step(confirm)
    return {"done": done}


def build_app(database_url: str | None = None) -> nonstop.App:
    """The hand-started agents on `database_url` (default: NONSTOP_DATABASE_URL)."""
    built = nonstop.App("triggers", database_url)
    built.agent(retry=ONCE)(waiter)
    built.agent(retry=ONCE)(square)
    built.agent(retry=ONCE)(fanout)
    built.agent(retry=ONCE)(saga)
    return built


ticker_app = build_ticker_app()
app = build_app()
