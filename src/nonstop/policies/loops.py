"""Loop detection: stop a run whose handler is going round in circles (pure decisions).

`max_steps` caps the durable calls (steps, tools, sleeps, waits...) of a run;
`max_repeats` caps how often it calls one tool with the same arguments. Both count the
run's whole history, replayed calls included, so parking (a sleep, a wait, a restart)
resets nothing. Each time a human resumes a run paused as a loop it gets one more
allowance of the same size (`rounds`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nonstop.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LoopGuard:
    """An agent's loop limits (`@app.agent(max_steps=, max_repeats=)`); None: no limit."""

    max_steps: int | None = None
    max_repeats: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")

    @property
    def active(self) -> bool:
        return self.max_steps is not None or self.max_repeats is not None


NO_LOOP_LIMITS = LoopGuard()


@dataclass(slots=True)
class LoopCounter:
    """What a run has done so far, checked against its guard times `rounds` (1 plus the
    times it was resumed after a loop pause)."""

    guard: LoopGuard
    rounds: int = 1
    steps: int = 0
    calls: Counter[str] = field(default_factory=Counter)

    def step(self) -> str | None:
        """Count one durable call; the reason to stop, if over `max_steps`."""
        self.steps += 1
        if self.guard.max_steps is None:
            return None
        limit = self.guard.max_steps * self.rounds
        if self.steps > limit:
            return f"max_steps reached: more than {limit} durable calls"
        return None

    def tool(self, name: str, args: dict[str, Any]) -> str | None:
        """Count one tool call; the reason to stop, if it repeats too often."""
        if self.guard.max_repeats is None:
            return None
        key = f"{name}:{_canonical(args)}"
        self.calls[key] += 1
        limit = self.guard.max_repeats * self.rounds
        if self.calls[key] > limit:
            return f"tool {name!r} called {self.calls[key]} times with the same arguments"
        return None


def _canonical(args: dict[str, Any]) -> str:
    """The same text for the same arguments (key order aside)."""
    try:
        return json.dumps(args, sort_keys=True, default=repr)
    except TypeError:  # keys that do not sort together (1 and "a"): order as given
        return json.dumps(args, default=repr)
