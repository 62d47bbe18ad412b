"""Schedules: when an agent is due, and which missed fires to make up after downtime.

Pure decisions, no I/O. Fire times are the same on every node (intervals are aligned to
the epoch, cron times come from the expression), so a fire's run id
`"{agent}@{scheduled time}"` is the same everywhere and a time fires once however many
nodes, restarts or crashes see it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from nonstop.errors import ConfigError
from nonstop.policies.durations import Duration, seconds

CatchUp = Literal["none", "latest", "all"]

MISFIRE_GRACE = 5.0
"""A fire found this many seconds late (or less) is on time; later ones were missed."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """`every` seconds (aligned to the epoch) or a `cron` expression in time zone `tz`."""

    every: float | None = None
    cron: str | None = None
    tz: str = "UTC"
    jitter: float = 0.0
    catch_up: CatchUp = "latest"
    max_catch_up: int = 100

    @classmethod
    def build(
        cls,
        *,
        every: Duration | None,
        cron: str | None,
        tz: str,
        jitter: Duration | None,
        catch_up: str,
        max_catch_up: int,
    ) -> Schedule:
        """Validate declared options (ConfigError names what is wrong)."""
        if (every is None) == (cron is None):
            raise ConfigError("give an agent either every= or cron=, not both")
        interval = None if every is None else seconds(every)
        if interval is not None and interval <= 0:
            raise ConfigError("every= must be a positive duration")
        if cron is not None and not croniter.is_valid(cron):
            raise ConfigError(f"not a cron expression: {cron!r}")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone: {tz!r}") from None
        if catch_up not in ("none", "latest", "all"):
            raise ConfigError(f"catch_up must be 'none', 'latest' or 'all', got {catch_up!r}")
        if max_catch_up < 1:
            raise ConfigError("max_catch_up must be at least 1")
        return cls(interval, cron, tz, seconds(jitter or 0), catch_up, max_catch_up)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        """A readable description, stored with the schedule's state."""
        when = f"every {self.every:g}s" if self.every is not None else f"cron {self.cron} {self.tz}"
        return f"{when}; catch_up={self.catch_up}"

    def next_after(self, t: float) -> float:
        """The first scheduled time strictly after `t`."""
        if self.every is not None:
            return (math.floor(t / self.every) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(t, ZoneInfo(self.tz))
        after: datetime = croniter(self.cron, start).get_next(datetime)
        return after.timestamp()

    def times_between(self, after: float, upto: float, limit: int) -> list[float]:
        """Scheduled times in (after, upto], the latest `limit` of them, in order."""
        if self.every is not None:
            first = math.floor(after / self.every) + 1
            last = math.floor(upto / self.every)
            start = max(first, last - limit + 1)
            return [k * self.every for k in range(start, last + 1)]
        # walk back from `upto`, so a long outage costs `limit` steps, not one per missed time
        assert self.cron is not None
        walker = croniter(self.cron, datetime.fromtimestamp(upto + 0.001, ZoneInfo(self.tz)))
        found: list[float] = []
        while len(found) < limit:
            t = walker.get_prev(datetime).timestamp()
            if t <= after:
                break
            found.append(t)
        return found[::-1]

    def due(self, last_fire: float | None, anchor: float, now: float) -> list[float]:
        """Scheduled times to fire now, given the last one handled (or, never fired, the
        time the schedule was first seen), applying the catch-up policy to missed ones.

        Every time up to `now` counts as handled afterwards, fired or skipped: the caller
        records `self.latest(...)` so skipped times are never considered again."""
        since = anchor if last_fire is None else last_fire
        times = self.times_between(since, now, self.max_catch_up + 1000)
        on_time = [t for t in times if now - t <= MISFIRE_GRACE]
        missed = [t for t in times if now - t > MISFIRE_GRACE]
        if not missed or self.catch_up == "none":
            return on_time
        if self.catch_up == "latest":
            return [missed[-1], *on_time]
        return [*missed[-self.max_catch_up :], *on_time]

    def latest(self, since: float, now: float) -> float | None:
        """The last scheduled time in (since, now], or None."""
        found = self.times_between(since, now, 1)
        return found[-1] if found else None

    def jitter_for(self, agent: str, t: float) -> float:
        """A delay in [0, jitter) that every node computes alike for this fire."""
        if self.jitter <= 0:
            return 0.0
        digest = hashlib.blake2b(f"{agent}@{t!r}".encode(), digest_size=8).digest()
        return int.from_bytes(digest) / 2**64 * self.jitter
