"""Process isolation: each run of an isolated agent executes in its own child process,
under kernel limits, and its death is explained rather than silent.

The parent keeps the run's lease and renews it; the child, started as
`python -m nonstop.isolation`, opens the store itself and drives the run under the same
owner id, so its checkpoints pass the lease checks. Limits are `RLIMIT_AS` (`memory_mb`)
and `RLIMIT_CPU` (`cpu_seconds`). When the child dies, the parent names the reason: `oom`
(with the peak RSS it sampled), `cpu_limit`, `signal N` or `exit code N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from nonstop.context import ISOLATED_ENV, MEMORY_EXIT

if TYPE_CHECKING:
    from nonstop.app import Agent, App

_SAMPLE_EVERY = 0.05  # seconds between RSS samples of a child


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


def explain(returncode: int, peak_rss: int, agent: Agent) -> Death:
    """Turn a child's exit status into the reason people need to read."""
    peak_mb = peak_rss / 2**20
    limit = agent.memory_mb
    if returncode == MEMORY_EXIT or (
        returncode == -signal.SIGKILL and limit is not None and peak_mb >= 0.9 * limit
    ):
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
    child = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, env={**os.environ, ISOLATED_ENV: "1"}
    )
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
    code = child.returncode
    return None if code == 0 else explain(code, peak, agent)


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
    args = parser.parse_args(argv)
    if args.memory_mb:
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
