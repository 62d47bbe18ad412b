"""A three-agent pipeline: sequential, parallel with fan-in, and an event-driven hand-off.

    nonstop serve examples/pipeline.py:app --db sqlite:///examples/pipeline.db
    nonstop run editor --app examples/pipeline.py:app --db sqlite:///examples/pipeline.db \\
        --input '{"topics": ["leases", "replay", "sagas"]}'
    nonstop signal RUN_ID approval --data true --db sqlite:///examples/pipeline.db

`editor` asks `researcher` for each topic in parallel (ctx.map, fan-in in order), drafts a
digest from their notes (sequential), waits for a human's approval, then emits
`digest.approved`; `publisher` is subscribed to that topic and takes over from there.
Every LLM answer comes from a scripted stand-in, so it runs offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import nonstop
from nonstop import Retry

app = nonstop.App(
    "pipeline", os.environ.get("NONSTOP_DATABASE_URL", "sqlite:///examples/pipeline.db")
)


async def scripted_llm(prompt: str) -> str:
    """A deterministic stand-in for a model: same prompt, same answer."""
    await asyncio.sleep(0.02)
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    return f"[{digest}] " + " ".join(prompt.split()[:10])


@app.agent(retry=Retry(max_attempts=3, initial=0.5), concurrency=4)
async def researcher(ctx: nonstop.Context, topic: str) -> dict[str, str]:
    """One topic: a child run of `editor`, at most four at a time across all nodes."""
    notes = await ctx.step(scripted_llm, f"Collect notes about {topic}", name="llm.notes")
    return {"topic": topic, "notes": notes}


@app.agent(timeout="10m")
async def editor(ctx: nonstop.Context, topics: list[str]) -> dict[str, object]:
    found = await ctx.map("researcher", [{"topic": t} for t in topics], max_parallel=3)
    joined = " / ".join(item["notes"] for item in found)
    draft = await ctx.step(scripted_llm, f"Write a digest: {joined}", name="llm.draft")
    await ctx.heartbeat("drafted", topics=len(topics))
    approved = await ctx.approval(f"Publish the digest of {len(topics)} topics?", timeout="1d")
    if not approved:
        return {"published": False}
    event_id = await ctx.emit("digest.approved", {"draft": draft, "topics": topics})
    return {"published": True, "event": event_id}


@app.agent(on="digest.*")
async def publisher(ctx: nonstop.Context, draft: str, topics: list[str]) -> str:
    """Hand-off by event: runs once per approved digest, whoever emitted it."""
    issue: str = await ctx.step(scripted_llm, f"Format the newsletter: {draft}", name="llm.format")
    return issue
