"""Rate limits written as "60/min": a token bucket's size and refill rate (pure math)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nonstop.errors import ConfigError

_PERIODS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` per `period` seconds, with bursts of up to `count`."""

    count: int
    period: float

    def __str__(self) -> str:
        per = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period, f"{self.period:g}s")
        return f"{self.count}/{per}"

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _PATTERN.match(text)
        if match is None or match.group(2) not in _PERIODS or int(match.group(1)) < 1:
            raise ConfigError(f"not a rate: {text!r} (use e.g. '60/min', '5/s', '100/h')")
        return cls(int(match.group(1)), _PERIODS[match.group(2)])

    def refill(self, tokens: float, elapsed: float) -> float:
        """Tokens in the bucket after `elapsed` seconds (never more than a full bucket)."""
        return min(float(self.count), tokens + max(elapsed, 0.0) * self.count / self.period)

    def reserve(self, tokens: float, elapsed: float, max_wait: float) -> tuple[float, float, bool]:
        """Reserve the next token of a bucket that held `tokens` `elapsed` seconds ago.

        The bucket may go negative: each reservation queues behind the ones before it and
        learns when its token is due. Returns `(new content, wait, reserved)`: reserved
        when the token is due within `max_wait` (then `wait` is the time until it is);
        otherwise nothing is taken and `wait` is how long until asking again would
        reserve one within `max_wait`."""
        held = self.refill(tokens, elapsed)
        due = max(0.0, 1.0 - held) * self.period / self.count
        if due <= max_wait:
            return held - 1.0, due, True
        return held, due - max_wait, False
