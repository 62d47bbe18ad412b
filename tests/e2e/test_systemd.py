"""Under systemd (`Type=notify`) a node says READY, pings the watchdog and says STOPPING."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.serve import NodePool, wait_until

APP = "tests/cli/cli_app.py:app"


@pytest.fixture
def pool() -> Iterator[NodePool]:
    with NodePool() as nodes:
        yield nodes


@pytest.mark.timeout(60)
def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    pool: NodePool, tmp_path: Path, db_url: str
) -> None:
    address = str(tmp_path / "notify.sock")
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.1)

        def heard(message: str, times: int = 1) -> bool:
            """Read what arrived; True once `message` came `times` times."""
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())
            return messages.count(message) >= times

        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
        node = pool.node(APP, db_url, tmp_path / "node.log", env=env)
        node.start()
        wait_until(
            lambda: heard("READY=1"),
            timeout=30,
            what="READY=1",
            describe=node.log_tail,
        )
        wait_until(
            lambda: heard("WATCHDOG=1", 3),
            timeout=10,
            what="watchdog pings",
            describe=node.log_tail,
        )
        code, _ = node.terminate(timeout=30)
        wait_until(lambda: heard("STOPPING=1"), timeout=5, what="STOPPING=1")
    assert code == 0
    assert messages.index("READY=1") < messages.index("STOPPING=1")
