"""Real `nonstop serve` processes for end-to-end tests: start, probe, signal, kill, clean up.

A `ServeNode` is one node of an app on one database, started again as often as a test
likes (each start is a new process on a fresh port). Its stdout and stderr go to one log
file, whose tail belongs in every assertion message. A `NodePool` kills whatever is still
running when it closes, so a failing test never leaves a node behind (the `nodes` fixture
of `conftest.py`).

A `DbReader` reads a node's SQLite file on a read-only connection of its own (what is on
disk is what counts), and `diagnose` puts the database's state and the node's log tail
into an assertion message; `read_jsonl` reads the files the test apps write.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
Row = tuple[Any, ...]

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_live: set[subprocess.Popen[bytes]] = set()


def _nonstop_command() -> list[str]:
    """The venv's `nonstop` script when there is one, else `python -m nonstop`."""
    script = Path(sys.executable).with_name("nonstop")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nonstop"]


def free_port() -> int:
    """A TCP port that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy and return that; raise TimeoutError
    naming `what` (and whatever `describe` says about the state) once `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{describe()}" if describe is not None else ""
            raise TimeoutError(f"{what}: not within {timeout:g}s{detail}")
        time.sleep(interval)


class NodeError(AssertionError):
    """A serve process did not behave (exited early, never became ready, would not stop)."""


class ServeNode:
    """`nonstop serve APP --db URL --port P ARGS...`, run with cwd at the project root."""

    def __init__(
        self,
        app: str,
        db_url: str,
        log_path: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path = PROJECT_ROOT,
    ) -> None:
        self.app = app
        self.db_url = db_url
        self.log_path = log_path
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.port = 0
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0  # time.time() of the last start
        self.ready_at: float | None = None  # time.time() when the last start was seen ready

    def __repr__(self) -> str:
        return f"ServeNode({self.app!r}, pid={self.pid}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn a new serve process (the previous one must have ended)."""
        if self.running:
            raise NodeError(f"{self!r} is still running")
        self._reap()
        self.port = free_port()
        self.starts += 1
        command = [
            *_nonstop_command(),
            "serve",
            self.app,
            "--db",
            self.db_url,
            "--port",
            str(self.port),
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(command)}\n".encode())
            log.flush()
            # The child keeps its own copy of the log descriptor; ours closes right here.
            self.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _live.add(self.process)
        self.spawned_at = time.time()
        self.ready_at = None

    def probe(self, name: str = "ready") -> bool:
        """True when `/healthz/{name}` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz/{name}", timeout=1.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll the readiness probe; return the time (time.time()) it first answered 200."""

        def ready() -> bool:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise NodeError(f"serve exited ({code}) before it was ready\n{self.log_tail()}")
            return self.probe("ready")

        wait_until(
            ready,
            timeout=timeout,
            what=f"{self!r} ready",
            describe=self.log_tail,
        )
        self.ready_at = time.time()
        return self.ready_at

    def kill(self) -> float:
        """SIGKILL the process and reap it; return the time the signal was sent."""
        process = self._current()
        killed_at = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        self._reap()
        return killed_at

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM the process and wait up to `timeout` seconds for it to exit.

        Returns its exit code and how long it took; a process still alive after `timeout`
        is killed and reported as a NodeError."""
        process = self._current()
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
            self._reap()
            raise NodeError(
                f"serve did not exit within {timeout:g}s of SIGTERM\n{self.log_tail()}"
            ) from None
        took = time.monotonic() - sent
        self._reap()
        return code, took

    def close(self) -> None:
        """Kill the process if it still runs. Idempotent."""
        if self.running:
            self.kill()
        self._reap()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path}:\n" + "\n".join(tail)

    def _current(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise NodeError(f"{self!r} was not started")
        return self.process

    def _reap(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            _live.discard(self.process)
            self.process = None


class NodePool:
    """Makes ServeNodes and guarantees that none outlives the `with` block."""

    def __init__(self) -> None:
        self.nodes: list[ServeNode] = []

    def node(
        self,
        app: str,
        db_url: str,
        log_path: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> ServeNode:
        made = ServeNode(app, db_url, log_path, args=args, env=env)
        self.nodes.append(made)
        return made

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()

    def __enter__(self) -> NodePool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class DbReader:
    """Reads a node's SQLite file through a read-only connection per query, never through
    nonstop: what is on disk is what counts.

    `settled` names the statuses a run of the test is meant to end in; `describe` lists
    the runs in any other status."""

    def __init__(self, path: Path, *, settled: Sequence[str] = ("completed",)) -> None:
        self.path = path
        self.settled = tuple(settled)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """All rows `sql` returns (with `?` placeholders for `params`)."""
        uri = f"{self.path.as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            conn.execute("PRAGMA query_only = ON")
            return conn.execute(sql, params).fetchall()

    def statuses(self) -> Counter[str]:
        """How many runs are in each status."""
        counts = self.rows("SELECT status, count(*) FROM runs GROUP BY status")
        return Counter({status: count for status, count in counts})

    def held_by(self, pid: int | None) -> list[str]:
        """The ids (sorted) of the running runs leased to the node process `pid` (owner ids
        read `host:pid:start:nonce`)."""
        held = self.rows("SELECT id, lease_owner FROM runs WHERE status = 'running'")
        return sorted(run_id for run_id, owner in held if owner and owner.split(":")[1] == str(pid))

    def step_count(self) -> int:
        """How many step records there are, over all runs."""
        count: int = self.rows("SELECT count(*) FROM steps")[0][0]
        return count

    def describe(self, limit: int = 25) -> str:
        """Status counts and the first `limit` runs not yet settled, with what they wait
        for, who holds them and how many step records they have."""
        now = time.time()
        lines = [f"--- runs by status: {dict(self.statuses())}"]
        unsettled = (
            "SELECT id, status, wait_reason, wake_at, lease_owner,"
            " (SELECT count(*) FROM steps WHERE steps.run_id = runs.id) FROM runs"
            f" WHERE status NOT IN ({', '.join('?' * len(self.settled))}) ORDER BY id LIMIT ?"
        )
        for run_id, status, reason, wake_at, owner, steps in self.rows(
            unsettled, (*self.settled, limit)
        ):
            wake = "" if wake_at is None else f" wake in {wake_at - now:+.2f}s"
            lines.append(f"  {run_id}: {status} ({reason}){wake} owner={owner} steps={steps}")
        return "\n".join(lines)


def read_jsonl(path: Path, *, partial: bool = False) -> list[dict[str, Any]]:
    """The JSON lines of `path`; with `partial`, a last line still being written is left
    out (for reading while a node writes)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if partial:
        text = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in text.splitlines()]


def diagnose(node: ServeNode, db: DbReader) -> str:
    """The database's state (if it exists yet) and the end of the node's log, for an
    assertion message."""
    state = db.describe() if db.path.exists() else "--- no database yet"
    return f"{state}\n{node.log_tail()}"


@atexit.register
def _kill_leftovers() -> None:
    """Last line of defence (an interrupted test run): no serve process outlives pytest."""
    for process in list(_live):
        with contextlib.suppress(Exception):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
