"""Node ids tell, on one host, whether a lease owner's process is still alive."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil

from nonstop.executor import node_id, owner_is_dead


def owner_of(pid: int) -> str:
    started = int(psutil.Process(pid).create_time() * 1000)
    return f"{socket.gethostname()}:{pid}:{started}:abc123"


def test_this_process_is_alive_and_unknown_hosts_are_never_judged() -> None:
    assert not owner_is_dead(node_id())
    assert not owner_is_dead(f"elsewhere:{os.getpid()}:1:abc")
    assert not owner_is_dead("not-a-node-id")


def test_a_killed_process_is_dead_even_before_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = owner_of(child.pid)
    assert not owner_is_dead(owner)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert owner_is_dead(owner)  # a zombie: killed, not yet reaped by its parent
    child.wait()
    assert owner_is_dead(owner)  # gone


def test_a_recycled_pid_is_not_the_same_owner() -> None:
    host, pid, started, nonce = owner_of(os.getpid()).split(":")
    assert owner_is_dead(f"{host}:{pid}:{int(started) - 5000}:{nonce}")
