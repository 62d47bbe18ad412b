"""Retry policy: how many tries, how long to wait between them, what never to retry."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from nonstop.errors import ConfigError, StepFailed
from nonstop.policies.durations import Duration, seconds


@dataclass(frozen=True, slots=True)
class Retry:
    """Exponential backoff with full jitter.

    The wait before try n+1 is `min(max_delay, initial * factor**(n-1))` seconds, and with
    `jitter` a uniform random value between 0 and that ("full jitter", which spreads a
    thundering herd of retries evenly). `give_up_on` lists exception types that are never
    retried. `max_attempts` counts the first try: `Retry(max_attempts=1)` never retries.
    """

    max_attempts: int = 3
    initial: Duration = 1.0
    factor: float = 2.0
    max_delay: Duration = 300.0
    jitter: bool = True
    give_up_on: Sequence[type[BaseException]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("Retry.max_attempts must be at least 1")
        if self.factor < 1:
            raise ConfigError("Retry.factor must be at least 1")
        seconds(self.initial)
        seconds(self.max_delay)

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after `failed_attempts` failures before the next try."""
        base = seconds(self.initial) * self.factor ** max(failed_attempts - 1, 0)
        capped = min(seconds(self.max_delay), base)
        if not self.jitter:
            return capped
        return (rng or random).uniform(0.0, capped)

    def should_retry(self, exc: BaseException, failed_attempts: int) -> bool:
        """True when another try is allowed after `failed_attempts` failures ending in `exc`."""
        if failed_attempts >= self.max_attempts:
            return False
        return not gives_up(exc, self.give_up_on)


NO_RETRY = Retry(max_attempts=1, initial=0, jitter=False)


def gives_up(exc: BaseException, kinds: Sequence[type[BaseException]]) -> bool:
    """True when `exc` (or, for a replayed step error, its original type) is in `kinds`."""
    if not kinds:
        return False
    if isinstance(exc, tuple(kinds)):
        return True
    if isinstance(exc, StepFailed):
        if isinstance(exc.__cause__, tuple(kinds)):
            return True
        names = {f"{k.__module__}.{k.__qualname__}" for k in kinds}
        return exc.type_name in names
    return False
