"""Supervision from the outside in: systemd's notify protocol (READY, WATCHDOG, STOPPING).

Under systemd with `Type=notify`, `NOTIFY_SOCKET` names a datagram socket: the node says
READY=1 once it serves, STOPPING=1 when it drains, and WATCHDOG=1 while its loops tick,
so `WatchdogSec=` restarts a node whose event loop is wedged rather than merely alive.
"""

from __future__ import annotations

import os
import socket

from nonstop.observe.logging import get_logger

log = get_logger("nonstop.supervisor")


class SystemdNotifier:
    """Sends sd_notify messages; does nothing when not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        # ping at half the period systemd allows, as sd_watchdog_enabled(3) advises
        self.watchdog_interval = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        """Send `message` (e.g. "READY=1"); False when there is no socket or it failed."""
        if not self.address:
            return False
        target = self.address
        if target.startswith("@"):  # abstract namespace
            target = "\0" + target[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(target)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc), message=message)
            return False
