"""Process isolation: each run of an isolated agent executes in its own child process,
under kernel limits, and its death is explained rather than silent.

The parent keeps the run's lease and renews it; the child, started as
`python -m nonstop.isolation`, opens the store itself and drives the run under the same
owner id, so its checkpoints pass the lease checks.

Limits: `memory_mb` is the cgroup v2 `memory.max` of a cgroup made for the child where
this process may create one (a delegated subtree, e.g. systemd `Delegate=memory`), and
`RLIMIT_AS` otherwise; `cpu_seconds` is `RLIMIT_CPU`. When the child dies, the parent
names the reason: `oom` (with the peak memory it saw), `cpu_limit`, `signal N` or
`exit code N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import hashlib
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from nonstop.context import ISOLATED_ENV, MEMORY_EXIT
from nonstop.observe.logging import get_logger

if TYPE_CHECKING:
    from nonstop.app import Agent, App

log = get_logger("nonstop.isolation")

_SAMPLE_EVERY = 0.05  # seconds between RSS samples of a child
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
_children: set[asyncio.subprocess.Process] = set()  # this process's live isolated children
_SUPERVISOR_LEAF = "nonstop-node"
"""The cgroup this process moves into so that its own cgroup may hand out the memory
controller to per-run children (cgroup v2 allows no process in an inner cgroup)."""


@dataclass(frozen=True, slots=True)
class Death:
    """Why an isolated child ended without settling its run."""

    kind: str  # "oom", "cpu_limit", "signal", "exit"
    detail: str


def app_spec(app: App) -> str:
    """How a child process imports `app`: `path/to/file.py:attr` or `module:attr`."""
    for name, module in list(sys.modules.items()):
        for attr, value in list(vars(module).items()):
            if value is app:
                path = getattr(module, "__file__", None)
                return f"{path}:{attr}" if path else f"{name}:{attr}"
    raise RuntimeError(f"cannot find {app!r} in any module: isolated agents need an importable app")


@dataclass(frozen=True, slots=True)
class Cgroup:
    """A cgroup v2 directory whose `memory` controller this process may hand out: each
    isolated run gets a child cgroup of it with `memory.max`, removed when the run ends."""

    root: Path

    def make(self, run_id: str, memory_mb: int) -> Path:
        """Create the cgroup of one child process, limited to `memory_mb` (no swap, and
        the kernel kills the whole cgroup together when it runs out). Named
        `run-{node pid}-{digest of the run id}-{random}`: never shared by two children."""
        digest = hashlib.blake2b(run_id.encode(), digest_size=6).hexdigest()
        path = self.root / f"run-{os.getpid()}-{digest}-{os.urandom(3).hex()}"
        path.mkdir()
        (path / "memory.max").write_text(str(memory_mb * 2**20))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            with contextlib.suppress(OSError):  # absent on kernels without swap accounting
                (path / name).write_text(value)
        return path

    @staticmethod
    def usage(path: Path) -> tuple[int, int]:
        """`(oom kills, peak bytes)` the kernel counted for the cgroup at `path`."""
        kills, peak = 0, 0
        with contextlib.suppress(OSError, ValueError):
            for line in (path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    kills = int(value)
        with contextlib.suppress(OSError, ValueError):
            peak = int((path / "memory.peak").read_text())  # Linux 5.19 and later
        return kills, peak

    def sweep(self) -> None:
        """Remove the run cgroups left by nodes that died (kill -9), with whatever still
        runs in them: their runs are recovered, from their checkpoints, elsewhere."""
        for path in self.root.glob("run-*-*-*"):
            pid = path.name.split("-")[1]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                self.remove(path)

    @staticmethod
    def remove(path: Path) -> None:
        """Kill whatever is left in the cgroup and remove it (best effort)."""
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
        for _ in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)  # its last process is still being reaped


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """How this node enforces `memory_mb`, and why (shown by `nonstop health`)."""

    cgroup: Cgroup | None
    detail: str

    @property
    def mechanism(self) -> str:
        return "cgroup v2 memory.max" if self.cgroup else "RLIMIT_AS"


def find_cgroup(
    mount: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> MemoryLimits:
    """Find, and prepare, a cgroup v2 subtree where children can get `memory.max`.

    The process's own cgroup qualifies when the memory controller is available in it and
    it is writable; this process then moves itself into a leaf (`nonstop-node`) and enables
    the controller for the children. Anything missing means RLIMIT_AS, with the reason."""
    try:
        own = next(
            line[3:].strip()
            for line in membership.read_text().splitlines()
            if line.startswith("0::")
        )
    except (OSError, StopIteration):
        return MemoryLimits(None, "RLIMIT_AS: no cgroup v2 membership")
    hierarchy = next(
        (m for m in (mount, mount / "unified") if (m / "cgroup.controllers").is_file()), None
    )
    if hierarchy is None:
        return MemoryLimits(None, f"RLIMIT_AS: no cgroup v2 hierarchy at {mount}")
    root = hierarchy / own.lstrip("/")
    try:
        if "memory" not in (root / "cgroup.controllers").read_text().split():
            return MemoryLimits(None, f"RLIMIT_AS: memory controller not delegated to {root}")
        if not os.access(root / "cgroup.subtree_control", os.W_OK):
            return MemoryLimits(None, f"RLIMIT_AS: {root} is not writable")
        if "memory" not in (root / "cgroup.subtree_control").read_text().split():
            _delegate_memory(root)
    except OSError as exc:
        return MemoryLimits(None, f"RLIMIT_AS: cannot delegate memory in {root}: {exc}")
    cgroup = Cgroup(root)
    cgroup.sweep()
    return MemoryLimits(cgroup, f"cgroup v2 memory.max under {root}")


def _delegate_memory(root: Path) -> None:
    """Move this process into a leaf of `root` and enable the memory controller for
    `root`'s children; on failure (other processes in `root`: EBUSY), move back."""
    leaf = root / _SUPERVISOR_LEAF
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text(str(os.getpid()))
    try:
        (root / "cgroup.subtree_control").write_text("+memory")
    except OSError:
        with contextlib.suppress(OSError):
            (root / "cgroup.procs").write_text(str(os.getpid()))
            leaf.rmdir()
        raise


@functools.cache
def memory_limits() -> MemoryLimits:
    """This process's way of limiting isolated children's memory (decided once)."""
    return find_cgroup()


def explain(returncode: int, peak_rss: int, agent: Agent, oom_kills: int | None = None) -> Death:
    """Turn a child's exit status into the reason people need to read.

    `oom_kills` is what the child's cgroup counted, when it had one: then that count alone
    tells an OOM kill from another SIGKILL. Without a cgroup, a SIGKILL near the limit is
    taken for the OS's OOM killer."""
    peak_mb = peak_rss / 2**20
    limit = agent.memory_mb
    if oom_kills is not None:
        killed_for_memory = oom_kills > 0
    else:
        near_limit = limit is not None and peak_mb >= 0.9 * limit
        killed_for_memory = returncode == -signal.SIGKILL and near_limit
    if returncode == MEMORY_EXIT or killed_for_memory:
        bound = f" of {limit} MB" if limit is not None else ""
        return Death("oom", f"oom: memory limit{bound} reached, peak RSS {peak_mb:.0f} MB")
    if returncode == -signal.SIGXCPU:
        return Death("cpu_limit", f"cpu_limit: more than {agent.cpu_seconds:g} CPU seconds")
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return Death("signal", f"signal {-returncode} ({name}), peak RSS {peak_mb:.0f} MB")
    return Death("exit", f"exit code {returncode}")


async def run_in_child(app: App, url: str, owner: str, run_id: str, agent: Agent) -> Death | None:
    """Execute the run in a child process; None when the child settled it (finished,
    parked, retrying), else why it died. Cancelling this kills the child."""
    command = [
        sys.executable, "-m", "nonstop.isolation",
        "--app", app_spec(app), "--db", url, "--owner", owner, "--run", run_id,
    ]  # fmt: skip
    if agent.memory_mb is not None:
        command += ["--memory-mb", str(agent.memory_mb)]
    if agent.cpu_seconds is not None:
        command += ["--cpu-seconds", str(agent.cpu_seconds)]
    cgroup = memory_limits().cgroup if agent.memory_mb is not None else None
    group: Path | None = None
    if cgroup is not None and agent.memory_mb is not None:
        try:
            group = cgroup.make(run_id, agent.memory_mb)
            command += ["--cgroup", str(group)]
        except OSError as exc:
            log.warning("cgroup_unavailable", run_id=run_id, error=str(exc), fallback="RLIMIT_AS")
    try:
        code, peak = await _watch(command)
    finally:
        kills, cgroup_peak = (None, 0) if group is None else Cgroup.usage(group)
        if group is not None:
            await asyncio.to_thread(Cgroup.remove, group)
    return None if code == 0 else explain(code, max(peak, cgroup_peak), agent, kills)


def drain_children() -> None:
    """Tell this process's isolated children that the node is shutting down (SIGTERM:
    they carry on, with their loop and cost alarms quiet, until done or killed)."""
    for child in list(_children):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)


async def _watch(command: list[str]) -> tuple[int, int]:
    """Start the child and wait for it, sampling its RSS; `(exit status, peak RSS)`.
    Cancelling this kills the child."""
    child = await asyncio.create_subprocess_exec(
        *command,
        "--parent",
        str(os.getpid()),
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, ISOLATED_ENV: "1"},
    )
    _children.add(child)
    peak = 0
    try:
        watched = psutil.Process(child.pid)
        while child.returncode is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, watched.memory_info().rss)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SAMPLE_EVERY):
                    await child.wait()
    except BaseException:  # cancelled (cancel, timeout, shutdown): the child goes too
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise
    finally:
        _children.discard(child)
    return child.returncode, peak


def _die_with_parent(parent: int) -> None:
    """Be killed when the node dies (kill -9 included): its runs are recovered from their
    checkpoints, and a child left running would do the same step at the same time."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request above took effect
        os._exit(3)


def _limit(kind: int, value: int) -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, value))


async def _drive_one(spec: str, url: str, owner: str, run_id: str) -> int:
    from nonstop.cli import load_app
    from nonstop.executor import Executor
    from nonstop.store import open_store
    from nonstop.store.base import Claimed

    app = load_app(spec)
    store = open_store(url, create=False)
    await store.open()
    try:
        run = await store.get_run(run_id)
        if run is None or run.lease_owner != owner:
            return 2  # nothing to do: the parent lost the run meanwhile
        history = await store.load_history(run_id)
        executor = Executor(app, store, owner=owner, concurrency=1)

        def draining() -> None:  # the parent drains: finish, but keep loop alarms quiet
            executor.alerts.draining = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, draining)
        await executor.drive_now(Claimed(run, history, recovered=False))
        return 0
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nonstop.isolation")
    parser.add_argument("--app", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--memory-mb", type=int)
    parser.add_argument("--cpu-seconds", type=float)
    parser.add_argument("--cgroup", type=Path)
    parser.add_argument("--parent", type=int)
    args = parser.parse_args(argv)
    if args.parent is not None:
        _die_with_parent(args.parent)
    entered = False
    if args.cgroup is not None:
        with contextlib.suppress(OSError):
            (args.cgroup / "cgroup.procs").write_text(str(os.getpid()))
            entered = True
    if args.memory_mb and not entered:
        _limit(resource.RLIMIT_AS, args.memory_mb * 2**20)
    if args.cpu_seconds:
        _limit(resource.RLIMIT_CPU, max(1, int(time.process_time() + args.cpu_seconds)))
    try:
        code = asyncio.run(_drive_one(args.app, args.db, args.owner, args.run))
    except MemoryError:
        os._exit(MEMORY_EXIT)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
