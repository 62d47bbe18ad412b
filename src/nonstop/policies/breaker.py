"""Circuit breaker: stop calling a dependency that keeps failing, try again later.

The decisions are pure (`admit`, `record`); the state lives in the store, so every run on
every node shares one breaker per name: closed (calls go through; consecutive failures
counted), open (calls fail fast with BreakerOpen, without calling), half-open (after
`reset_after`, up to `half_open_max` trial calls; a success closes it, a failure opens it
again).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nonstop.errors import ConfigError
from nonstop.policies.durations import Duration, seconds

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class BreakerState:
    name: str
    state: str = CLOSED
    failures: int = 0  # consecutive failures while closed
    opened_at: float | None = None
    trials: int = 0  # trial calls let through while half-open


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """`ctx.step(fn, breaker=CircuitBreaker("crm", failure_threshold=5, reset_after="1m"))`."""

    name: str
    failure_threshold: int = 5
    reset_after: Duration = 60.0
    half_open_max: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a circuit breaker needs a name")
        if self.failure_threshold < 1 or self.half_open_max < 1:
            raise ConfigError("failure_threshold and half_open_max must be at least 1")
        seconds(self.reset_after)

    def admit(self, current: BreakerState, now: float) -> tuple[bool, BreakerState]:
        """May a call go through now? Returns the decision and the state to store."""
        if current.state == CLOSED:
            return True, current
        if current.state == OPEN:
            if now - (current.opened_at or now) < seconds(self.reset_after):
                return False, current
            return True, replace(current, state=HALF_OPEN, trials=1)
        if current.trials < self.half_open_max:
            return True, replace(current, trials=current.trials + 1)
        return False, current

    def record(self, current: BreakerState, ok: bool, now: float) -> BreakerState:
        """The state after a call that went through succeeded (`ok`) or failed."""
        if ok:
            return BreakerState(self.name)
        if current.state == HALF_OPEN:
            return BreakerState(self.name, OPEN, current.failures, now, 0)
        failures = current.failures + 1
        if failures >= self.failure_threshold:
            return BreakerState(self.name, OPEN, failures, now, 0)
        return replace(current, failures=failures)
