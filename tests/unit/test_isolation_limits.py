"""How isolated runs' memory is limited: a delegated cgroup v2 subtree when there is one
(exercised here on a directory laid out like cgroupfs), RLIMIT_AS otherwise, with why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nonstop
from nonstop.isolation import Cgroup, explain, find_cgroup


def fake_cgroupfs(tmp_path: Path, controllers: str = "cpu io memory pids") -> tuple[Path, Path]:
    """A cgroupfs mount with this process in /app.service, and its /proc/self/cgroup."""
    mount = tmp_path / "cgroup"
    own = mount / "app.service"
    own.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/app.service\n")
    return mount, membership


def test_a_delegated_subtree_gets_the_memory_controller_for_per_run_cgroups(
    tmp_path: Path,
) -> None:
    mount, membership = fake_cgroupfs(tmp_path)
    limits = find_cgroup(mount, membership)
    own = mount / "app.service"
    assert limits.cgroup == Cgroup(own) and limits.mechanism == "cgroup v2 memory.max"
    assert limits.detail == f"cgroup v2 memory.max under {own}"
    # this process left for a leaf, so that its cgroup may enable memory for children
    assert (own / "nonstop-node" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+memory"

    run = limits.cgroup.make("report@2026-11-23T06:00:00Z", 64)
    assert run.parent == own and run.name.startswith(f"run-{os.getpid()}-")
    assert limits.cgroup.make("report@2026-11-23T06:00:00Z", 64) != run  # never shared
    assert (run / "memory.max").read_text() == str(64 * 2**20)
    assert (run / "memory.swap.max").read_text() == "0"
    assert (run / "memory.oom.group").read_text() == "1"
    (run / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (run / "memory.peak").write_text(str(70 * 2**20))
    assert Cgroup.usage(run) == (1, 70 * 2**20)
    Cgroup.remove(run)  # a plain directory here: it cannot go, and that is no error
    assert (run / "cgroup.kill").read_text() == "1"  # whatever was left is killed first


def test_run_cgroups_left_by_a_dead_node_are_swept(tmp_path: Path) -> None:
    mount, membership = fake_cgroupfs(tmp_path)
    own = mount / "app.service"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = own / f"run-{dead.pid}-abc123-0f0f0f", own / f"run-{os.getpid()}-abc123-0e0e0e"
    stale.mkdir(parents=True)
    live.mkdir()
    find_cgroup(mount, membership)
    assert (stale / "cgroup.kill").read_text() == "1"  # its leftovers were killed
    assert not (live / "cgroup.kill").exists()  # a live node's runs are left alone


def test_without_a_usable_cgroup_v2_the_reason_is_given(tmp_path: Path) -> None:
    mount, membership = fake_cgroupfs(tmp_path, controllers="cpu pids")
    assert find_cgroup(mount, membership).detail == (
        f"RLIMIT_AS: memory controller not delegated to {mount / 'app.service'}"
    )
    membership.write_text("4:memory:/app.service\n")  # cgroup v1 only
    limits = find_cgroup(mount, membership)
    assert limits.cgroup is None and limits.mechanism == "RLIMIT_AS"
    assert limits.detail == "RLIMIT_AS: no cgroup v2 membership"
    membership.write_text("0::/app.service\n")
    (mount / "cgroup.controllers").unlink()
    assert find_cgroup(mount, membership).detail == f"RLIMIT_AS: no cgroup v2 hierarchy at {mount}"


def test_a_kernel_oom_kill_counted_by_the_cgroup_is_an_oom() -> None:
    app = nonstop.App("limits", "sqlite:///unused.db")

    @app.agent(isolation="process", memory_mb=64)
    def hungry(ctx: nonstop.SyncContext) -> None:
        return None

    # SIGKILLed far below the limit by RSS (page cache counted by the cgroup): the
    # cgroup's oom_kill count is what tells
    death = explain(-signal.SIGKILL, 10 * 2**20, hungry, oom_kills=1)
    assert death.kind == "oom" and "memory limit of 64 MB" in death.detail
    assert explain(-signal.SIGKILL, 10 * 2**20, hungry).kind == "signal"
    # near the limit: without a cgroup that is taken for the OOM killer; with one, only
    # the kernel's count says so (its peak includes page cache)
    assert explain(-signal.SIGKILL, 63 * 2**20, hungry).kind == "oom"
    assert explain(-signal.SIGKILL, 63 * 2**20, hungry, oom_kills=0).kind == "signal"
