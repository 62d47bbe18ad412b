"""nonstop benchmarks on SQLite: raw commit rate, durable steps, latency and crash recovery.

    .venv/bin/python bench/run.py [--quick] [--json] [--sync full|normal|both]

For each `synchronous` mode (FULL, NORMAL), on a fresh database file in a temporary
directory under bench/results/ (the same disk as the repository):

  (a) raw      bare sqlite3: one INSERT + COMMIT per row (WAL, same pragma); the baseline
  (b) seq      one run of an async agent doing N no-op durable steps
  (c) burst    M runs of 3 no-op steps, all created first, then one worker started
  (d) latency  start-to-result time of a 1-step run on an idle runtime, one run at a time
  (e) recover  M runs of 5 slow steps in a `nonstop serve` process killed with SIGKILL
               mid-way; time from launching a new `nonstop serve` to all runs completed

Progress goes to stderr; the table (Markdown) or, with --json, the results go to stdout.
Results are always written to bench/results/<timestamp>.json and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

import nonstop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import make_app

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
APP_FILE = BENCH_DIR / "bench_app.py"
MODES = ("full", "normal")

# Targets (FULL unless stated): the ratios are to the raw commit rate (a) on the same disk.
TARGET_SEQ_RATIO = 0.5
TARGET_BURST_RATIO = 1.5
TARGET_NORMAL_STEP_US = 100.0

RESULT_TIMEOUT = 120.0  # seconds any single run may take before the benchmark gives up
WATCHDOG = 600.0  # seconds without finishing a phase before every thread's stack is dumped


@dataclass(frozen=True, slots=True)
class Sizes:
    raw_rows: int = 2000
    seq_steps: int = 1000
    burst_runs: int = 1000
    burst_steps: int = 3
    latency_runs: int = 200
    latency_warmup: int = 20
    recovery_runs: int = 1000
    recovery_steps: int = 5
    recovery_delay: float = 0.5  # seconds per step before the kill
    concurrency: int = 1000


QUICK = Sizes(
    raw_rows=500,
    seq_steps=300,
    burst_runs=200,
    latency_runs=50,
    latency_warmup=5,
    recovery_runs=200,
    recovery_delay=0.3,
)


# -- small helpers ---------------------------------------------------------------------------

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


def sqlite_url(path: Path, mode: str) -> str:
    return f"sqlite:///{path}?synchronous={mode}"


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


class Probe:
    """Reads a nonstop SQLite file directly (its own connection, never through nonstop)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)

    def scalar(self, query: str, *params: Any) -> Any:
        return self.conn.execute(query, params).fetchone()[0]

    def completed(self) -> int:
        return int(self.scalar("SELECT count(*) FROM runs WHERE status = 'completed'"))

    def steps(self) -> int:
        return int(self.scalar("SELECT count(*) FROM steps"))

    def close(self) -> None:
        self.conn.close()


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


def store_commits(app: nonstop.App) -> int | None:
    """How many transactions the SQLite store's writer thread has committed so far."""
    runtime = app._runtime
    commits = getattr(runtime.store, "commits", None) if runtime is not None else None
    return commits if isinstance(commits, int) else None


def close_app(app: nonstop.App) -> None:
    """Close `app` once reads its worker left running in threads have had time to end.

    A stopped worker may leave a store read (its claim loop's `next_due`) running in a
    thread; closing the store under it has been seen to crash the interpreter (SIGSEGV)
    in about 1 of 50 closes. The pause keeps that teardown race out of the benchmark."""
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


# -- (a) raw sqlite3 --------------------------------------------------------------------------


def bench_raw(path: Path, mode: str, rows: int) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {mode.upper()}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")

        def commit_one() -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (payload) VALUES ('null')")
            conn.execute("COMMIT")

        for _ in range(min(200, rows)):  # warm-up: file growth, page cache
            commit_one()
        start = time.perf_counter()
        for _ in range(rows):
            commit_one()
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return {
        "rows": rows,
        "seconds": elapsed,
        "commits_per_s": rows / elapsed,
        "us_per_commit": elapsed / rows * 1e6,
    }


# -- (b) sequential steps ---------------------------------------------------------------------


def bench_sequential(path: Path, mode: str, sizes: Sizes) -> dict[str, Any]:
    app = make_app(sqlite_url(path, mode))
    probe: Probe | None = None
    try:
        with app.worker(concurrency=sizes.concurrency):
            app.run("steps", {"n": 50}, timeout=RESULT_TIMEOUT)  # warm-up: caches, pages
            probe = Probe(path)
            commits_before = store_commits(app)
            start = time.perf_counter()
            handle = app.start("steps", {"n": sizes.seq_steps})
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
            first_step, last_step = probe.conn.execute(
                "SELECT min(started_at), max(finished_at) FROM steps WHERE run_id = ?",
                (handle.run_id,),
            ).fetchone()
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
        "steps": sizes.seq_steps,
        "seconds": in_run,
        "steps_per_s": sizes.seq_steps / in_run,
        "us_per_step": in_run / sizes.seq_steps * 1e6,
        "steps_only_seconds": last_step - first_step,
        "wall_seconds": wall,
        "wall_steps_per_s": sizes.seq_steps / wall,
        "commits": commits,
    }


# -- (c) a burst of concurrent runs -----------------------------------------------------------


def bench_burst(path: Path, mode: str, sizes: Sizes) -> dict[str, Any]:
    app = make_app(sqlite_url(path, mode))
    probe = Probe(path)
    total = sizes.burst_runs * sizes.burst_steps
    try:
        # Warm-up on its own worker, then create every run before the measured worker starts.
        with app.worker(concurrency=sizes.concurrency):
            app.run("steps", {"n": sizes.burst_steps}, timeout=RESULT_TIMEOUT)
        ids = [app.start("steps", {"n": sizes.burst_steps}).run_id for _ in range(sizes.burst_runs)]
        commits_before = store_commits(app)
        start = time.perf_counter()
        with app.worker(concurrency=sizes.concurrency):
            done = wait_until(
                lambda: probe.completed() >= sizes.burst_runs + 1,
                interval=0.002,
                timeout=300,
                what="the burst of runs",
            )
            commits_after = store_commits(app)
        elapsed = done - start
        marks = ",".join("?" * len(ids))
        first_claim, last_finish = probe.conn.execute(
            f"SELECT min(started_at), max(finished_at) FROM runs WHERE id IN ({marks})", ids
        ).fetchone()
    finally:
        probe.close()
        close_app(app)
    commits = (
        None if commits_before is None or commits_after is None else commits_after - commits_before
    )
    return {
        "runs": sizes.burst_runs,
        "steps_per_run": sizes.burst_steps,
        "steps": total,
        "seconds": elapsed,
        "steps_per_s": total / elapsed,
        "runs_per_s": sizes.burst_runs / elapsed,
        "store_seconds": last_finish - first_claim,
        "commits": commits,
        "steps_per_commit": None if not commits else total / commits,
    }


# -- (d) latency of one small run ------------------------------------------------------------


def bench_latency(path: Path, mode: str, sizes: Sizes) -> dict[str, Any]:
    app = make_app(sqlite_url(path, mode))
    samples: list[float] = []
    ids: list[str] = []
    try:
        with app.worker(concurrency=sizes.concurrency):
            for _ in range(sizes.latency_warmup):
                app.run("steps", {"n": 1}, timeout=RESULT_TIMEOUT)
            for _ in range(sizes.latency_runs):
                handle_start = time.perf_counter()
                handle = app.start("steps", {"n": 1})
                handle.result(timeout=RESULT_TIMEOUT)
                samples.append(time.perf_counter() - handle_start)
                ids.append(handle.run_id)
        probe = Probe(path)
        try:
            marks = ",".join("?" * len(ids))
            rows = probe.conn.execute(
                f"SELECT created_at, started_at, finished_at FROM runs WHERE id IN ({marks})",
                ids,
            ).fetchall()
        finally:
            probe.close()
    finally:
        close_app(app)
    in_store = [finished - created for created, _, finished in rows]
    to_claim = [started - created for created, started, _ in rows]
    return {
        "runs": sizes.latency_runs,
        "p50_ms": percentile(samples, 50) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
        "max_ms": max(samples) * 1000,
        "store_p50_ms": percentile(in_store, 50) * 1000,
        "store_p99_ms": percentile(in_store, 99) * 1000,
        "claim_p50_ms": percentile(to_claim, 50) * 1000,
        "note": (
            "p50/p99: app.start + RunHandle.result() as a caller sees it; store_*: the run's"
            " created_at -> finished_at in the database (no result polling)"
        ),
    }


# -- (e) recovery after SIGKILL ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(url: str, log: Path, sizes: Sizes, delay: float) -> Iterator[subprocess.Popen[bytes]]:
    """A `nonstop serve` process on `url`; SIGTERMed on exit unless already dead."""
    env = {**os.environ, "BENCH_STEP_DELAY": str(delay), "NONSTOP_DATABASE_URL": url}
    command = [
        *(sys.executable, "-m", "nonstop", "serve", f"{APP_FILE}:app"),
        *("--db", url, "--port", str(free_port())),
        *("--concurrency", str(sizes.concurrency)),
        *("--lease-ttl", "30", "--poll-interval", "0.5", "--grace-period", "5"),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def node_started_at(log: Path) -> float | None:
    """When the served node said `node_started` (epoch seconds), from its JSON log."""
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                event = json.loads(line)
                if event.get("event") == "node_started":
                    return datetime.fromisoformat(event["ts"]).timestamp()
    return None


def alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"nonstop serve exited with {process.returncode}: {tail}")


def bench_recovery(path: Path, mode: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    url = sqlite_url(path, mode)
    runs, steps = sizes.recovery_runs, sizes.recovery_steps
    seeding = make_app(url)
    try:
        for i in range(runs):
            seeding.start("slow", {"n": steps}, id=f"recover-{i:05d}")
    finally:
        close_app(seeding)
    first_log, second_log = workdir / f"serve-{mode}-1.log", workdir / f"serve-{mode}-2.log"
    probe = Probe(path)
    try:
        progress(f"{mode}: (e) first serve, {runs} runs x {steps} steps of {sizes.recovery_delay}s")
        with serving(url, first_log, sizes, sizes.recovery_delay) as first:

            def midway() -> bool:
                alive(first, first_log)
                return probe.steps() >= runs * 2  # two of five steps done, on average

            wait_until(midway, interval=0.01, timeout=120, what="the runs to get mid-way")
            first.send_signal(signal.SIGKILL)
            first.wait()  # reaped: its pid is gone, so the next node sees its leases as orphans
        at_kill = {
            "completed": probe.completed(),
            "steps_done": probe.steps(),
            "running": int(probe.scalar("SELECT count(*) FROM runs WHERE status = 'running'")),
        }
        progress(
            f"{mode}: (e) killed with {at_kill['steps_done']} steps done,"
            f" {at_kill['completed']} runs completed; restarting"
        )
        launched_wall = time.time()
        launched = time.perf_counter()
        with serving(url, second_log, sizes, 0.0) as second:

            def all_done() -> bool:
                alive(second, second_log)
                return probe.completed() >= runs

            done = wait_until(all_done, interval=0.005, timeout=300, what="recovery")
        first_claim = probe.scalar("SELECT min(at) FROM incidents WHERE kind = 'recovered'")
        recovered = int(probe.scalar("SELECT count(*) FROM incidents WHERE kind = 'recovered'"))
        last_finish = probe.scalar("SELECT max(finished_at) FROM runs")
    finally:
        probe.close()
    started = node_started_at(second_log)
    interrupted = runs - at_kill["completed"]
    remaining = runs * steps - at_kill["steps_done"]
    return {
        "runs": runs,
        "steps_per_run": steps,
        "step_delay_before_kill_s": sizes.recovery_delay,
        "at_kill": at_kill,
        "interrupted_runs": interrupted,
        "recovered_incidents": recovered,
        "seconds_to_all_completed": done - launched,
        "seconds_to_node_started": None if started is None else started - launched_wall,
        "seconds_to_first_claim": None if first_claim is None else first_claim - launched_wall,
        "seconds_launch_to_last_finish_store": last_finish - launched_wall,
        "seconds_first_claim_to_all_completed": (
            None if first_claim is None else done - launched - (first_claim - launched_wall)
        ),
        "remaining_steps": remaining,
    }


# -- one mode --------------------------------------------------------------------------------


def bench_mode(mode: str, sizes: Sizes) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"tmp-{mode}-", dir=RESULTS) as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = {"mode": mode.upper(), "cpu_probe_ms_before": cpu_probe()}
        ticks = cpu_ticks()
        progress(f"{mode}: (a) raw sqlite3, {sizes.raw_rows} single-row commits")
        result["raw"] = bench_raw(workdir / "raw.db", mode, sizes.raw_rows)
        progress(f"{mode}: (b) one run of {sizes.seq_steps} no-op steps")
        result["sequential"] = bench_sequential(workdir / "seq.db", mode, sizes)
        progress(f"{mode}: (c) {sizes.burst_runs} runs x {sizes.burst_steps} steps at once")
        result["burst"] = bench_burst(workdir / "burst.db", mode, sizes)
        progress(f"{mode}: (d) {sizes.latency_runs} one-step runs, one at a time")
        result["latency"] = bench_latency(workdir / "latency.db", mode, sizes)
        result["recovery"] = bench_recovery(workdir / "recovery.db", mode, sizes, workdir)
        result["cpu_probe_ms_after"] = cpu_probe()
        after = cpu_ticks()
        if ticks is not None and after is not None and after[1] > ticks[1]:
            result["cpu_steal_percent"] = 100 * (after[0] - ticks[0]) / (after[1] - ticks[1])
        raw = result["raw"]["commits_per_s"]
        result["ratios"] = {
            "sequential_to_raw": result["sequential"]["steps_per_s"] / raw,
            "burst_to_raw": result["burst"]["steps_per_s"] / raw,
        }
        progress(f"{mode}: done")
    return result


# -- reporting -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    disk = "unknown"
    with contextlib.suppress(OSError):
        best = ("", "", "")
        for line in Path("/proc/mounts").read_text().splitlines():
            device, point, fstype = line.split()[:3]
            if str(RESULTS).startswith(point) and len(point) > len(best[1]):
                best = (device, point, fstype)
        device, point, fstype = best
        rotational = Path(f"/sys/block/{Path(device).name}/queue/rotational")
        kind = ""
        if rotational.exists():
            kind = f", rotational flag {rotational.read_text().strip()}"
        disk = f"{device} ({fstype}{kind}) mounted on {point}"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "disk": disk,
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


def checks(modes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    full, normal = modes.get("full"), modes.get("normal")
    if full is not None:
        seq = full["ratios"]["sequential_to_raw"]
        burst = full["ratios"]["burst_to_raw"]
        found.append(
            {
                "name": "(b) sequential steps/s vs raw commits/s, FULL",
                "value": seq,
                "target": f">= {TARGET_SEQ_RATIO}",
                "passed": seq >= TARGET_SEQ_RATIO,
            }
        )
        found.append(
            {
                "name": "(c) burst steps/s vs raw commits/s, FULL",
                "value": burst,
                "target": f">= {TARGET_BURST_RATIO}",
                "passed": burst >= TARGET_BURST_RATIO,
            }
        )
    if normal is not None:
        overhead = normal["sequential"]["us_per_step"]
        found.append(
            {
                "name": "per-step overhead, NORMAL (us)",
                "value": overhead,
                "target": f"< {TARGET_NORMAL_STEP_US:g}",
                "passed": overhead < TARGET_NORMAL_STEP_US,
            }
        )
    return found


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> str:
    modes: dict[str, dict[str, Any]] = results["modes"]
    names = [m for m in MODES if m in modes]
    marks = {c["name"]: ("PASS" if c["passed"] else "FAIL") for c in results["checks"]}

    def mark(name: str) -> str:
        return marks.get(name, "")

    rows: list[tuple[str, Callable[[dict[str, Any]], str], str, str]] = [
        ("(a) raw sqlite3 commits/s", lambda r: _fmt(r["raw"]["commits_per_s"], ",.0f"), "", ""),
        ("(a) raw commit time, µs", lambda r: _fmt(r["raw"]["us_per_commit"], ".0f"), "", ""),
        (
            "(b) sequential steps/s (run start → finish)",
            lambda r: _fmt(r["sequential"]["steps_per_s"], ",.0f"),
            "",
            "",
        ),
        (
            "(b) time per step, µs",
            lambda r: _fmt(r["sequential"]["us_per_step"], ".0f"),
            f"NORMAL < {TARGET_NORMAL_STEP_US:g}",
            mark("per-step overhead, NORMAL (us)"),
        ),
        (
            "(b) ratio to (a)",
            lambda r: _fmt(r["ratios"]["sequential_to_raw"], ".2f"),
            f"FULL ≥ {TARGET_SEQ_RATIO}",
            mark("(b) sequential steps/s vs raw commits/s, FULL"),
        ),
        (
            "(b) wall steps/s (start → completion seen)",
            lambda r: _fmt(r["sequential"]["wall_steps_per_s"], ",.0f"),
            "",
            "",
        ),
        (
            "(c) burst steps/s",
            lambda r: _fmt(r["burst"]["steps_per_s"], ",.0f"),
            "",
            "",
        ),
        (
            "(c) ratio to (a)",
            lambda r: _fmt(r["ratios"]["burst_to_raw"], ".2f"),
            f"FULL ≥ {TARGET_BURST_RATIO}",
            mark("(c) burst steps/s vs raw commits/s, FULL"),
        ),
        (
            "(c) writer commits (steps per commit)",
            lambda r: (
                f"{_fmt(r['burst']['commits'], 'd')}"
                f" ({_fmt(r['burst']['steps_per_commit'], '.0f')})"
            ),
            "",
            "",
        ),
        (
            "(d) app.run latency p50 / p99, ms",
            lambda r: f"{r['latency']['p50_ms']:.1f} / {r['latency']['p99_ms']:.1f}",
            "",
            "",
        ),
        (
            "(d) in-store latency p50 / p99, ms",
            lambda r: f"{r['latency']['store_p50_ms']:.1f} / {r['latency']['store_p99_ms']:.1f}",
            "",
            "",
        ),
        (
            "(e) runs interrupted (steps done of total)",
            lambda r: (
                f"{r['recovery']['interrupted_runs']}"
                f" ({r['recovery']['at_kill']['steps_done']}/"
                f"{r['recovery']['runs'] * r['recovery']['steps_per_run']})"
            ),
            "",
            "",
        ),
        (
            "(e) restart → first run claimed, s",
            lambda r: _fmt(r["recovery"]["seconds_to_first_claim"], ".2f"),
            "",
            "",
        ),
        (
            "(e) restart → all runs completed, s",
            lambda r: _fmt(r["recovery"]["seconds_to_all_completed"], ".2f"),
            "",
            "",
        ),
        (
            "(e) first claim → all runs completed, s",
            lambda r: _fmt(r["recovery"]["seconds_first_claim_to_all_completed"], ".2f"),
            "",
            "",
        ),
    ]
    header = ["metric", *(m.upper() for m in names), "target", "result"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *("---:" for _ in names), "---", "---"]) + "|",
    ]
    for label, cell, target, verdict in rows:
        values = [cell(modes[m]) for m in names]
        lines.append("| " + " | ".join([label, *values, target, verdict]) + " |")
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    info = results["machine"]
    parts = [
        f"nonstop benchmarks, {results['started_at']}  ({'quick' if results['quick'] else 'full'}"
        f" run, {results['seconds']:.0f}s)",
        f"machine: {info['cpus']} CPUs, Python {info['python']}, SQLite {info['sqlite']},"
        f" {info['platform']}",
        f"disk: {info['disk']}",
        f"commit: {results['revision']['commit']}"
        + (" (src/ had uncommitted changes)" if results["revision"]["src_modified"] else ""),
        "",
        table(results),
        "",
    ]
    for mode, found in results["modes"].items():
        steal = found.get("cpu_steal_percent")
        parts.append(
            f"{mode.upper()}: CPU probe {found['cpu_probe_ms_before']:.1f} ms before,"
            f" {found['cpu_probe_ms_after']:.1f} ms after (same loop; lower is faster)"
            + ("" if steal is None else f"; CPU steal {steal:.1f}%")
        )
    parts.append("")
    for check in results["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        parts.append(f"{verdict}  {check['name']}: {check['value']:.2f} (target {check['target']})")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--sync", choices=("full", "normal", "both"), default="both")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    modes = MODES if args.sync == "both" else (args.sync,)
    quiet_logging()
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "quick": args.quick,
        "sizes": asdict(sizes),
        "machine": machine(),
        "revision": revision(),
        "modes": {},
    }
    begin = time.perf_counter()
    for mode in modes:
        results["modes"][mode] = bench_mode(mode, sizes)
    results["seconds"] = time.perf_counter() - begin
    results["checks"] = checks(results["modes"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(text + "\n")
    (RESULTS / "latest.json").write_text(text + "\n")
    progress(f"results written to {RESULTS / (stamp + '.json')}")
    print(text if args.json else summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
