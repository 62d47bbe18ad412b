"""The app the CLI tests drive: an echo, a failing agent and a long sleeper."""

from __future__ import annotations

import os

import nonstop
from nonstop import Retry

app = nonstop.App("cli-test")


@app.agent
async def echo(ctx: nonstop.Context, text: str = "hi") -> dict[str, str]:
    shout: str = await ctx.step(str.upper, text, name="upper")
    return {"text": text, "shout": shout}


@app.agent(retry=Retry(max_attempts=1))
async def broken(ctx: nonstop.Context) -> None:
    await ctx.step(str.upper, "x", name="upper")
    if os.path.exists(os.environ.get("CLI_TEST_BROKEN_FLAG", "/nonexistent")):  # noqa: ASYNC240
        raise RuntimeError("deliberate failure")


@app.agent
async def sleeper(ctx: nonstop.Context) -> str:
    await ctx.sleep("1h")
    return "woke"
