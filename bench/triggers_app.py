"""The app `bench/triggers.py` serves: many schedules, and agents that park at once.

    nonstop serve bench/triggers_app.py:app --db sqlite:///...

Environment, read at import (so each `nonstop serve` process picks its own):

- `BENCH_TICKS` (default 100): how many scheduled agents `tick000`, `tick001`, ... to
  declare, each with `every=BENCH_TICK_EVERY` and `catch_up="none"`. Their handler does
  nothing, so what is measured is firing, claiming and finishing.
- `BENCH_TICK_EVERY` (default `1s`): their interval (`1h` for an idle scheduler).

Two more agents are always declared, for runs the benchmark creates itself:
`sleeper` parks in `ctx.sleep("1h")` and `waiter` in `ctx.wait_for("never")`.
"""

from __future__ import annotations

import os

import nonstop

TICKS = int(os.environ.get("BENCH_TICKS", "100") or 0)
TICK_EVERY = os.environ.get("BENCH_TICK_EVERY", "1s") or "1s"
SLEEP_FOR = "1h"
SIGNAL = "never"


async def tick(ctx: nonstop.Context) -> None:
    """A scheduled run that does nothing."""


async def sleeper(ctx: nonstop.Context) -> None:
    """Parks as `sleeping` for an hour: a durable timer, no worker slot held."""
    await ctx.sleep(SLEEP_FOR)


async def waiter(ctx: nonstop.Context) -> None:
    """Parks as `waiting` for a signal nobody sends, with no deadline."""
    await ctx.wait_for(SIGNAL)


def make_app(url: str | None, ticks: int = TICKS, every: str = TICK_EVERY) -> nonstop.App:
    """An App on `url` with `ticks` scheduled agents and the `sleeper` and `waiter` agents.

    The version is fixed, so runs created by one process are never "adopted" by another."""
    app = nonstop.App("bench-triggers", url, version="bench-triggers")
    for i in range(ticks):
        app.agent(name=f"tick{i:03}", every=every, catch_up="none")(tick)
    app.agent(sleeper)
    app.agent(waiter)
    return app


# Served by bench/triggers.py; `--db` on the command line chooses the database.
app = make_app(os.environ.get("NONSTOP_DATABASE_URL"))
