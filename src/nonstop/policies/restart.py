"""Restart policy: how a stuck or crashing run is restarted, and when to stop trying."""

from __future__ import annotations

from dataclasses import dataclass

from nonstop.errors import ConfigError
from nonstop.policies.durations import Duration, seconds


@dataclass(frozen=True, slots=True)
class Restart:
    """Restart a run that stopped beating or crashed its node, from its last checkpoint,
    after `cooldown`; after `max_restarts` within `window`, stop trying: the run is paused
    (`escalated`) for a human, who continues it with `nonstop resume`."""

    cooldown: Duration = "5m"
    max_restarts: int = 3
    window: Duration = "1h"

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ConfigError("Restart.max_restarts must not be negative")
        seconds(self.cooldown)
        seconds(self.window)

    def decide(self, recent_restarts: int) -> bool:
        """True to restart once more, given the restarts already made within the window."""
        return recent_restarts < self.max_restarts
