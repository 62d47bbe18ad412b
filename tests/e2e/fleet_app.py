"""The app the multi-node tests serve: short runs whose steps say which process ran them.

nonstop serve tests/e2e/fleet_app.py:app --db postgresql://...
"""

from __future__ import annotations

import asyncio
import os
import uuid

import nonstop

app = nonstop.App(
    "fleet",
    version=os.environ.get("FLEET_APP_VERSION", "v1"),
    on_version_change=os.environ.get("FLEET_ON_VERSION_CHANGE", "resume"),
)


async def token(pause: float) -> str:
    """A value unique to this execution, tagged with the executing process."""
    await asyncio.sleep(pause)
    return f"{os.getpid()}:{uuid.uuid4().hex}"


@app.agent
async def job(ctx: nonstop.Context, steps: int = 3, pause: float = 0.0) -> dict[str, list[str]]:
    seen = [await ctx.step(token, pause) for _ in range(steps)]
    return {"seen": seen}
