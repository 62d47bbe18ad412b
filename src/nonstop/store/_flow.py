"""Flow limits at claim time, shared by the backends: how many more runs of an agent a
claim may take, given what is running and what its rate bucket holds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nonstop.store.base import FlowLimit

BUCKET_KEY = "agent:{}"


@dataclass(slots=True)
class Allowance:
    agent: str
    left: float  # runs this claim may still take (math.inf: no limit)
    tokens: float | None  # the rate bucket after refill, when rate-limited
    reason: str | None  # why none may be taken, for the runs left pending


def allowance(
    limit: FlowLimit, running: int, bucket: tuple[float, float] | None, now: float
) -> Allowance:
    """What a claim at `now` may take of `limit.agent`, from its running count and its
    rate bucket `(tokens, updated_at)` (None: never used, so full)."""
    left = math.inf
    reason = None
    if limit.concurrency is not None:
        left = max(limit.concurrency - running, 0)
        if left == 0:
            reason = f"concurrency limit {limit.concurrency} of agent {limit.agent} reached"
    tokens = None
    if limit.rate is not None:
        held, at = bucket if bucket is not None else (float(limit.rate.count), now)
        tokens = limit.rate.refill(held, now - at)
        left = min(left, math.floor(tokens))
        if reason is None and left == 0:
            reason = f"rate limit {limit.rate} of agent {limit.agent} reached"
    return Allowance(limit.agent, left, tokens, reason)
