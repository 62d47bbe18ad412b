"""Tools: functions an agent calls by name (`ctx.tool`), declared once with `@app.tool`.

A tool call is a durable step (named `tool:{name}`) under the tool's own policies: its
retry, timeout, circuit breaker and rate limit, the limit shared by every run on every
node through the store. An agent may call only the tools its `tools=` list names; any
other call raises ToolDenied and never reaches the tool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nonstop.policies.breaker import CircuitBreaker
from nonstop.policies.ratelimit import Rate
from nonstop.policies.retry import Retry

RATE_KEY = "tool:{}"
"""The store's rate-limit bucket of a tool (agents' buckets are `agent:{name}`)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A registered tool and the policies every call of it goes through."""

    name: str
    fn: Callable[..., Any]
    rate: Rate | None = None
    retry: Retry | None = None
    timeout: float | None = None
    breaker: CircuitBreaker | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly (for unit tests of the tool itself)."""
        return self.fn(*args, **kwargs)
