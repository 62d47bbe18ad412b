"""What the SQLite (`run.py`) and PostgreSQL (`postgres.py`) benchmarks share: progress and
timing helpers, direct reads of a nonstop database, `nonstop serve` processes, the
sequential-steps measurement, and facts about the machine and the commit measured."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import math
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import structlog

import nonstop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import make_app

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
APP_FILE = BENCH_DIR / "bench_app.py"

RESULT_TIMEOUT = 120.0  # seconds any single run may take before the benchmark gives up
WATCHDOG = 600.0  # seconds without finishing a phase before every thread's stack is dumped


# -- progress and timing ---------------------------------------------------------------------

_started = time.perf_counter()


def progress(message: str) -> None:
    """One line on stderr; also re-arms the watchdog that dumps every stack if we hang."""
    print(f"[bench {time.perf_counter() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)
    faulthandler.cancel_dump_traceback_later()
    faulthandler.dump_traceback_later(WATCHDOG, file=sys.stderr)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def wait_until(check: Callable[[], bool], *, interval: float, timeout: float, what: str) -> float:
    """Call `check` every `interval` seconds until it is true; return when that was
    (perf_counter). Raise TimeoutError after `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    while True:
        if check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g}s")
        time.sleep(interval)


def time_commits(commit_one: Callable[[], None], rows: int) -> dict[str, Any]:
    """Call `commit_one` (one single-row transaction) `rows` times after min(200, rows)
    warm-up calls (file growth, caches), and give the rate."""
    for _ in range(min(200, rows)):
        commit_one()
    start = time.perf_counter()
    for _ in range(rows):
        commit_one()
    elapsed = time.perf_counter() - start
    return {
        "rows": rows,
        "seconds": elapsed,
        "commits_per_s": rows / elapsed,
        "us_per_commit": elapsed / rows * 1e6,
    }


def cpu_probe() -> float:
    """Milliseconds for a fixed pure-Python loop: shows how fast the CPU was at the time
    (on a shared VM it changes by tens of percent from minute to minute)."""
    start = time.perf_counter()
    total = 0
    for i in range(300_000):
        total += i * i
    return (time.perf_counter() - start) * 1000


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat, where there is one."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return fields[7], sum(fields[:8])
    return None


def process_cpu(pids: Iterable[int] | None = None, name: str | None = None) -> float:
    """CPU seconds (user + system) used so far by the live processes `pids`, or else by
    every live process whose name is `name`."""
    if pids is None:
        pids = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def cpu_watch(result: dict[str, Any]) -> Iterator[None]:
    """Record in `result` the CPU probe and the 1-minute load average before and after the
    block (what else kept the machine busy; the block's own processes count in the second),
    and the CPU steal (percent of all CPU time) during it."""
    result["load_before"] = os.getloadavg()[0]
    result["cpu_probe_ms_before"] = cpu_probe()
    ticks = cpu_ticks()
    yield
    result["cpu_probe_ms_after"] = cpu_probe()
    result["load_after"] = os.getloadavg()[0]
    after = cpu_ticks()
    if ticks is not None and after is not None and after[1] > ticks[1]:
        result["cpu_steal_percent"] = 100 * (after[0] - ticks[0]) / (after[1] - ticks[1])


def cpu_line(name: str, result: dict[str, Any]) -> str:
    """The CPU probe and steal recorded by `cpu_watch`, as one line of the summary."""
    steal = result.get("cpu_steal_percent")
    return (
        f"{name}: CPU probe {result['cpu_probe_ms_before']:.1f} ms before,"
        f" {result['cpu_probe_ms_after']:.1f} ms after (same loop; lower is faster)"
        + ("" if steal is None else f"; CPU steal {steal:.1f}%")
        + f"; 1-minute load average {result['load_before']:.2f} before"
    )


# -- reading a nonstop database directly -----------------------------------------------------


class Probe:
    """Reads a nonstop database on its own connection, never through nonstop. Queries are
    written with `?` placeholders, whatever the backend."""

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def row(self, query: str, *params: Any) -> tuple[Any, ...]:
        return self.rows(query, *params)[0]

    def scalar(self, query: str, *params: Any) -> Any:
        return self.row(query, *params)[0]

    def completed(self) -> int:
        return int(self.scalar("SELECT count(*) FROM runs WHERE status = 'completed'"))

    def steps(self) -> int:
        return int(self.scalar("SELECT count(*) FROM steps"))

    def close(self) -> None:
        raise NotImplementedError


class SQLiteProbe(Probe):
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()

    def close(self) -> None:
        self.conn.close()


class PostgresProbe(Probe):
    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.queries = 0  # each one a transaction of its own, counted by the server

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        self.queries += 1
        return self.conn.execute(query.replace("?", "%s"), params).fetchall()

    def close(self) -> None:
        self.conn.close()


# -- an App in this process ------------------------------------------------------------------


def store_commits(app: nonstop.App) -> int | None:
    """How many transactions the SQLite store's writer thread has committed so far."""
    runtime = app._runtime
    commits = getattr(runtime.store, "commits", None) if runtime is not None else None
    return commits if isinstance(commits, int) else None


def close_app(app: nonstop.App) -> None:
    """Close `app` once reads its worker left running in threads have had time to end.

    A stopped worker may leave a store read (its claim loop's `next_due`) running in a
    thread. Closing the SQLite store under it crashed the interpreter (SIGSEGV) in about
    1 of 50 closes until the store drained its reads before closing (commit c9dc9ed); the
    pause stays so that figures remain comparable with runs made before that."""
    time.sleep(0.2)
    app.close()


def quiet_logging() -> None:
    """Keep nonstop's per-run info logs out of the measurement (warnings still show), as
    an embedding program that configures no logging gets them."""
    logging.getLogger("nonstop").setLevel(logging.WARNING)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def bench_sequential(
    url: str, open_probe: Callable[[], Probe], steps: int, concurrency: int
) -> dict[str, Any]:
    """One run of `steps` no-op durable steps on a worker in this process, after a 50-step
    warm-up run; timed from the run's `started_at` to its `finished_at` in the store, and
    from `app.start` to the completed status seen by polling the database every 2 ms."""
    app = make_app(url)
    probe: Probe | None = None
    try:
        with app.worker(concurrency=concurrency):
            app.run("steps", {"n": 50}, timeout=RESULT_TIMEOUT)  # warm-up: caches, pages
            probe = open_probe()
            commits_before = store_commits(app)
            start = time.perf_counter()
            handle = app.start("steps", {"n": steps})
            wait_until(
                lambda: (
                    probe is not None
                    and probe.scalar("SELECT status FROM runs WHERE id = ?", handle.run_id)
                    in ("completed", "dead", "cancelled")
                ),
                interval=0.002,
                timeout=120,
                what="the sequential run",
            )
            wall = time.perf_counter() - start
            commits_after = store_commits(app)
            run = handle.get()
            first_step, last_step = probe.row(
                "SELECT min(started_at), max(finished_at) FROM steps WHERE run_id = ?",
                handle.run_id,
            )
    finally:
        if probe is not None:
            probe.close()
        close_app(app)
    if run.status != nonstop.RunStatus.COMPLETED or run.started_at is None:
        raise RuntimeError(f"sequential run ended {run.status}: {run.error}")
    assert run.finished_at is not None
    in_run = run.finished_at - run.started_at
    commits = (
        None if commits_before is None or commits_after is None else commits_after - commits_before
    )
    return {
        "steps": steps,
        "seconds": in_run,
        "steps_per_s": steps / in_run,
        "us_per_step": in_run / steps * 1e6,
        "steps_only_seconds": last_step - first_step,
        "wall_seconds": wall,
        "wall_steps_per_s": steps / wall,
        "commits": commits,
    }


# -- `nonstop serve` processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch(
    url: str, log: Path, *, concurrency: int, poll_interval: float = 0.5, delay: float = 0.0
) -> subprocess.Popen[bytes]:
    """Start `nonstop serve bench/bench_app.py:app` on `url`, logging JSON lines to `log`."""
    env = {**os.environ, "BENCH_STEP_DELAY": str(delay), "NONSTOP_DATABASE_URL": url}
    command = [
        *(sys.executable, "-m", "nonstop", "serve", f"{APP_FILE}:app"),
        *("--db", url, "--port", str(free_port())),
        *("--concurrency", str(concurrency), "--poll-interval", f"{poll_interval:g}"),
        *("--lease-ttl", "30", "--grace-period", "5"),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM `process` unless it is already dead, and reap it (SIGKILL after 30 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def serving(
    url: str, logs: Sequence[Path], **options: Any
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One `nonstop serve` process per log file, all on `url` (`options` as for `launch`);
    each is stopped on exit unless already dead."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            processes.append(launch(url, log, **options))
        yield processes
    finally:
        for process in processes:
            stop(process)


def log_events(log: Path) -> Iterator[dict[str, Any]]:
    """The JSON events a served node wrote to `log` (other lines are skipped)."""
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event


def node_started_at(log: Path) -> float | None:
    """When the served node said `node_started` (epoch seconds), from its JSON log."""
    for event in log_events(log):
        if event.get("event") == "node_started":
            with contextlib.suppress(ValueError, TypeError, KeyError):
                return datetime.fromisoformat(event["ts"]).timestamp()
    return None


def alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"nonstop serve exited with {process.returncode}: {tail}")


# -- reporting -------------------------------------------------------------------------------


def disk_of(path: Path) -> str:
    """The device, filesystem and rotational flag of the mount holding `path`."""
    with contextlib.suppress(OSError, ValueError):
        best = ("", "", "")
        for line in Path("/proc/mounts").read_text().splitlines():
            device, point, fstype = line.split()[:3]
            if str(path).startswith(point) and len(point) > len(best[1]):
                best = (device, point, fstype)
        device, point, fstype = best
        rotational = Path(f"/sys/block/{Path(device).name}/queue/rotational")
        kind = ""
        if rotational.exists():
            kind = f", rotational flag {rotational.read_text().strip()}"
        return f"{device} ({fstype}{kind}) mounted on {point}"
    return "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "disk": disk_of(RESULTS),
        "nonstop": getattr(nonstop, "__version__", None) or _package_version(),
    }


def revision() -> dict[str, Any]:
    """The commit measured, and whether src/ differed from it (uncommitted changes)."""

    def git(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            )
            return done.stdout.strip()
        return None

    changes = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "src_modified": bool(changes)}


def _package_version() -> str | None:
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("nonstop")
    return None


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def check(name: str, value: float, target: str, passed: bool) -> dict[str, Any]:
    """One target and how the run did against it."""
    return {"name": name, "value": value, "target": target, "passed": passed}


def check_lines(found: list[dict[str, Any]]) -> list[str]:
    return [
        f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['value']:.2f} (target {c['target']})"
        for c in found
    ]


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: int) -> str:
    """A Markdown table; columns 1 to `numeric` (after the label) are right-aligned."""
    align = ["---", *("---:" for _ in range(numeric)), *("---" for _ in header[numeric + 1 :])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


class Row(NamedTuple):
    """A row of a table of metrics: its label, how to get a column's cell from that
    column's results, and any target with the name of the check that gives the verdict."""

    label: str
    cell: Callable[[dict[str, Any]], str]
    target: str = ""
    check: str = ""


def value(section: str, key: str, spec: str) -> Callable[[dict[str, Any]], str]:
    """A cell showing `results[section][key]` formatted with `spec`."""
    return lambda r: fmt(r[section][key], spec)


def pair(section: str, first: str, second: str) -> Callable[[dict[str, Any]], str]:
    """A cell showing two figures of `results[section]` as `first / second`."""
    return lambda r: f"{r[section][first]:.1f} / {r[section][second]:.1f}"


def metric_table(
    rows: Sequence[Row], columns: Sequence[tuple[str, dict[str, Any]]], found: list[dict[str, Any]]
) -> str:
    """A Markdown table: a row per metric, a column per named set of results, then each
    row's target and PASS or FAIL from the checks `found`."""
    marks = {c["name"]: ("PASS" if c["passed"] else "FAIL") for c in found}
    return markdown(
        ["metric", *(name for name, _ in columns), "target", "result"],
        [
            [row.label, *(row.cell(r) for _, r in columns), row.target, marks.get(row.check, "")]
            for row in rows
        ],
        numeric=len(columns),
    )
