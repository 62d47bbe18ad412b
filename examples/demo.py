"""Demo app: two agents doing visible work offline, answered by a scripted LLM stand-in.

nonstop serve examples/demo.py:app            # or: make run
nonstop run researcher --app examples/demo.py:app --input '{"topic": "leases"}'
nonstop runs --db sqlite:///examples/demo.db
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import nonstop
from nonstop import Retry

app = nonstop.App("demo", os.environ.get("NONSTOP_DATABASE_URL", "sqlite:///examples/demo.db"))

CORPUS = {
    "durable agents": [
        "Every step is checkpointed before the agent moves on.",
        "A crash resumes from the last checkpoint, not from the start.",
        "Idempotency keys let external APIs drop duplicate calls.",
    ],
    "leases": [
        "A node owns a run through a lease it keeps renewing.",
        "When a node dies its leases expire and another node resumes the runs.",
    ],
}
LABELS = ("billing", "bug", "question", "feature")


class ScriptedLLM:
    """Deterministic replies with realistic latency, and a first try that sometimes fails
    (as real providers do) so that retries show up in `nonstop show`."""

    def __init__(self, failure_rate: float = 0.2) -> None:
        self.failure_rate = failure_rate
        self._failed_once: set[str] = set()

    async def complete(self, prompt: str, idempotency_key: str) -> str:
        await asyncio.sleep(0.05)
        digest = hashlib.sha256(prompt.encode()).digest()
        if digest[0] / 255 < self.failure_rate and idempotency_key not in self._failed_once:
            self._failed_once.add(idempotency_key)
            raise ConnectionError("scripted provider: 529 overloaded")
        words = prompt.split()
        return " ".join(words[: 12 + digest[1] % 8]) + " ..."

    async def classify(self, text: str, idempotency_key: str) -> str:
        reply = await self.complete(f"classify: {text}", idempotency_key)
        return LABELS[len(reply) % len(LABELS)]


llm = ScriptedLLM()
LLM_RETRY = Retry(max_attempts=4, initial=0.2, factor=2.0, max_delay=2.0)


@app.tool(rate="30/min", timeout="10s")
async def search(topic: str) -> list[str]:
    """A tool: agents that list it call it by name, under its rate limit and timeout."""
    await asyncio.sleep(0.02)
    return CORPUS.get(topic, [f"No notes about {topic} yet."])


def next_ticket(number: int) -> dict[str, object]:
    rng = random.Random(number)
    return {"id": number, "text": f"Ticket {number}: {rng.choice(['refund', 'crash', 'how'])}"}


@app.agent(retry=Retry(max_attempts=3, initial=1.0), timeout="5m", tools=["search"])
async def researcher(ctx: nonstop.Context, topic: str = "durable agents") -> dict[str, object]:
    """Looks a topic up, summarises it, waits (durably), then reviews its own summary."""
    notes = await ctx.tool("search", topic=topic)
    summary = await ctx.step(
        llm.complete, "Summarise: " + " ".join(notes), name="llm.summarise", retry=LLM_RETRY
    )
    await ctx.heartbeat("summarised", words=len(summary.split()))
    ctx.log.info("summary_ready", summary=summary)
    await ctx.sleep("2s")
    review = await ctx.step(llm.complete, "Review: " + summary, name="llm.review", retry=LLM_RETRY)
    return {"topic": topic, "summary": summary, "review": review}


@app.agent(retry=Retry(max_attempts=3, initial=1.0))
def triage(ctx: nonstop.SyncContext, tickets: int = 10, pause: float = 1.0) -> dict[str, int]:
    """A plain `def` agent: labels a stream of tickets, one durable step each."""
    counts: dict[str, int] = {}
    for number in range(tickets):
        ticket = ctx.step(next_ticket, number)
        label = ctx.step(llm.classify, ticket["text"], name="llm.classify", retry=LLM_RETRY)
        counts[label] = counts.get(label, 0) + 1
        ctx.heartbeat("triaged", ticket=number, label=label)
        ctx.log.info("ticket_labelled", ticket=number, label=label)
        if number < tickets - 1:
            ctx.sleep(pause)
    return counts
