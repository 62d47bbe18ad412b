"""Durations written as people write them: 30, 1.5, "250ms", "30s", "5m", "2h", "1d"."""

from __future__ import annotations

import re

from nonstop.errors import ConfigError

Duration = float | int | str
"""Seconds as a number, or a string with a unit (ms, s, m, h, d)."""

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def seconds(value: Duration) -> float:
    """Return `value` in seconds; raise ConfigError for anything negative or unreadable."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"duration must not be negative: {value!r}")
        return float(value)
    match = _PATTERN.match(value)
    if match is None:
        raise ConfigError(f"not a duration: {value!r} (use e.g. 30, '250ms', '5m', '2h', '1d')")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]


def optional_seconds(value: Duration | None) -> float | None:
    return None if value is None else seconds(value)
