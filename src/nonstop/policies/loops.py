"""Loop detection: stop a run whose handler is going round in circles (pure decisions).

`max_steps` caps the durable calls (steps, tools, sleeps, waits...) one execution of a
run makes; `max_repeats` caps how often it calls one tool with the same arguments. Both
count what an execution does, not what it replays from checkpoints, so a human who
resumes a paused run gives it a fresh allowance.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nonstop.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LoopGuard:
    max_steps: int | None = None
    max_repeats: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")


NO_LOOP_LIMITS = LoopGuard()


@dataclass(slots=True)
class LoopCounter:
    """What one execution has done so far, checked against its guard."""

    guard: LoopGuard
    steps: int = 0
    calls: Counter[str] = field(default_factory=Counter)

    def step(self) -> str | None:
        """Count one executed durable call; the reason to stop, if over `max_steps`."""
        self.steps += 1
        limit = self.guard.max_steps
        if limit is not None and self.steps > limit:
            return f"max_steps {limit} reached: more than {limit} steps in one execution"
        return None

    def tool(self, name: str, args: dict[str, Any]) -> str | None:
        """Count one executed tool call; the reason to stop, if it repeats too often."""
        key = f"{name}:{json.dumps(args, sort_keys=True, default=repr)}"
        self.calls[key] += 1
        limit = self.guard.max_repeats
        if limit is not None and self.calls[key] > limit:
            return f"tool {name!r} called {self.calls[key]} times with the same arguments"
        return None
