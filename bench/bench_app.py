"""Agents the benchmarks run: steps that do nothing, so only nonstop's own cost is measured.

`bench/run.py` builds one App per database with `make_app(url)`; the recovery benchmark
serves the module-level `app` in a real `nonstop serve` process
(`nonstop serve bench/bench_app.py:app --db ...`).

`BENCH_STEP_DELAY` (seconds, default 0) makes every step of the `slow` agent sleep about
that long; it is read at each call, so a restarted process can run the remaining steps at once.
"""

from __future__ import annotations

import asyncio
import os
import random

import nonstop


async def noop() -> None:
    """A durable step that does nothing: what is left is checkpointing."""


async def pause() -> None:
    """A step that takes about `BENCH_STEP_DELAY` seconds (±50%, so runs drift apart and
    are caught at different steps), so that a run can be killed mid-way."""
    delay = float(os.environ.get("BENCH_STEP_DELAY", "0") or 0)
    if delay > 0:
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))


def make_app(url: str | None) -> nonstop.App:
    """An App on `url` with the benchmark agents `steps` and `slow`."""
    app = nonstop.App("bench", url, version="bench")

    @app.agent
    async def steps(ctx: nonstop.Context, n: int = 1) -> int:
        for _ in range(n):
            await ctx.step(noop)
        return n

    @app.agent
    async def slow(ctx: nonstop.Context, n: int = 5) -> int:
        for _ in range(n):
            await ctx.step(pause)
        return n

    return app


# Served by the recovery benchmark; `--db` on the command line chooses the database.
app = make_app(os.environ.get("NONSTOP_DATABASE_URL"))
