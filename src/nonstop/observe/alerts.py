"""Alerts: what a human must hear about, as an `alert` log event at error level.

Every alert has a `kind` (`missed_heartbeat`, `escalated`, `oom`, `cpu_limit`, `signal`,
`exit`, `loop`) and the run it concerns. While its node is shutting down, the kinds that a
cleanup burst can set off by itself (loop and cost alarms) are logged as
`alert_suppressed` at info level instead: the policy still acts, nobody is paged.
"""

from __future__ import annotations

from typing import Any

from nonstop.observe.logging import get_logger

QUIET_WHILE_DRAINING = frozenset({"loop", "cost"})

log = get_logger("nonstop.alerts")


class Alerts:
    """The alerts of one node."""

    def __init__(self) -> None:
        self.draining = False  # set when the node announces shutting_down

    def fire(self, kind: str, *, agent: str, run_id: str, **fields: Any) -> bool:
        """Raise the alert `kind`; return False when shutdown kept it quiet."""
        if self.draining and kind in QUIET_WHILE_DRAINING:
            log.info("alert_suppressed", kind=kind, agent=agent, run_id=run_id, why="shutting_down")
            return False
        log.error("alert", kind=kind, agent=agent, run_id=run_id, **fields)
        return True
