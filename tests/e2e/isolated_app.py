"""Isolated agents for the process-isolation tests: one that works, one that eats memory,
one that exits, one that kills itself."""

from __future__ import annotations

import asyncio
import os
import signal

import nonstop
from nonstop import Restart

app = nonstop.App("isolated")
ONCE = Restart(cooldown=0, max_restarts=1)


@app.agent(isolation="process", memory_mb=1024)
async def worker(ctx: nonstop.Context, n: int = 3) -> dict[str, int]:
    total = 0
    for i in range(n):
        total += await ctx.step(int, i)
    return {"pid": os.getpid(), "total": total}


@app.agent(isolation="process", memory_mb=300, restart=ONCE)
def hog(ctx: nonstop.SyncContext) -> int:
    ctx.step(int, 1)
    chunks = []
    while True:  # allocate past the limit, 20 MB at a time
        chunks.append(bytearray(20 * 2**20))


@app.agent(isolation="process", restart=ONCE)
async def quitter(ctx: nonstop.Context) -> None:
    os._exit(3)


@app.agent(isolation="process", restart=ONCE)
async def suicidal(ctx: nonstop.Context) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.agent
async def inline(ctx: nonstop.Context) -> int:
    return os.getpid()


async def tick() -> int:
    await asyncio.sleep(0.2)
    return os.getpid()


@app.agent(isolation="process", memory_mb=1024)
async def sleeper(ctx: nonstop.Context, ticks: int = 10) -> int:
    """Works a while in its child, one short step at a time (for shutdown and node death)."""
    for _ in range(ticks):
        await ctx.step(tick)
    return ticks
