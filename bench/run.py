"""nonstop benchmarks on SQLite and PostgreSQL: raw commit rate, durable steps, throughput,
latency and crash recovery.

    .venv/bin/python bench/run.py [--quick] [--json] [--backend sqlite|postgres|both]
                                  [--sync full|normal|both] [--postgres URL]

SQLite: for each `synchronous` mode (FULL, NORMAL), on a fresh database file in a
temporary directory under bench/results/ (the same disk as the repository):

  (a) raw      bare sqlite3: one INSERT + COMMIT per row (WAL, same pragma); the baseline
  (b) seq      one run of an async agent doing N no-op durable steps
  (c) burst    M runs of 3 no-op steps, all created first, then one worker started
  (d) latency  start-to-result time of a 1-step run on an idle runtime, one run at a time
  (e) recover  M runs of 5 slow steps in a `nonstop serve` process killed with SIGKILL
               mid-way; time from launching a new `nonstop serve` to all runs completed

PostgreSQL (`postgres.py`), each on a fresh database of the server `--postgres` names:

  (P1) raw psycopg single-row commits beside sequential durable steps
  (P2) runs of 3 no-op steps served by 1, 2 and 3 `nonstop serve` processes
  (P3) wake-up: create_run returning to the run claimed by an idle node (LISTEN/NOTIFY)

Progress goes to stderr; the tables (Markdown) or, with --json, the results go to stdout.
Results are always written to bench/results/<timestamp>.json and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import make_app
from common import (
    RESULT_TIMEOUT,
    RESULTS,
    Row,
    SQLiteProbe,
    alive,
    bench_sequential,
    check,
    check_lines,
    close_app,
    cpu_line,
    cpu_watch,
    fmt,
    machine,
    metric_table,
    node_started_at,
    pair,
    percentile,
    progress,
    quiet_logging,
    revision,
    serving,
    store_commits,
    time_commits,
    value,
    wait_until,
)

import postgres

MODES = ("full", "normal")

# Targets (FULL unless stated): the ratios are to the raw commit rate (a) on the same disk.
TARGET_SEQ_RATIO = 0.5
TARGET_BURST_RATIO = 1.5
TARGET_NORMAL_STEP_US = 100.0


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


def sqlite_url(path: Path, mode: str) -> str:
    return f"sqlite:///{path}?synchronous={mode}"


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

        return time_commits(commit_one, rows)
    finally:
        conn.close()


# -- (c) a burst of concurrent runs -----------------------------------------------------------


def bench_burst(path: Path, mode: str, sizes: Sizes) -> dict[str, Any]:
    app = make_app(sqlite_url(path, mode))
    probe = SQLiteProbe(path)
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
        first_claim, last_finish = probe.row(
            f"SELECT min(started_at), max(finished_at) FROM runs WHERE id IN ({marks})", *ids
        )
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
        probe = SQLiteProbe(path)
        try:
            marks = ",".join("?" * len(ids))
            rows = probe.rows(
                f"SELECT created_at, started_at, finished_at FROM runs WHERE id IN ({marks})",
                *ids,
            )
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
    options: dict[str, Any] = {"concurrency": sizes.concurrency}
    probe = SQLiteProbe(path)
    try:
        progress(f"{mode}: (e) first serve, {runs} runs x {steps} steps of {sizes.recovery_delay}s")
        with serving(url, [first_log], delay=sizes.recovery_delay, **options) as (first,):

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
        with serving(url, [second_log], **options) as (second,):

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
        result: dict[str, Any] = {"mode": mode.upper()}
        with cpu_watch(result):
            progress(f"{mode}: (a) raw sqlite3, {sizes.raw_rows} single-row commits")
            result["raw"] = bench_raw(workdir / "raw.db", mode, sizes.raw_rows)
            progress(f"{mode}: (b) one run of {sizes.seq_steps} no-op steps")
            path = workdir / "seq.db"
            result["sequential"] = bench_sequential(
                sqlite_url(path, mode),
                lambda: SQLiteProbe(path),
                sizes.seq_steps,
                sizes.concurrency,
            )
            progress(f"{mode}: (c) {sizes.burst_runs} runs x {sizes.burst_steps} steps at once")
            result["burst"] = bench_burst(workdir / "burst.db", mode, sizes)
            progress(f"{mode}: (d) {sizes.latency_runs} one-step runs, one at a time")
            result["latency"] = bench_latency(workdir / "latency.db", mode, sizes)
            result["recovery"] = bench_recovery(workdir / "recovery.db", mode, sizes, workdir)
        raw = result["raw"]["commits_per_s"]
        result["ratios"] = {
            "sequential_to_raw": result["sequential"]["steps_per_s"] / raw,
            "burst_to_raw": result["burst"]["steps_per_s"] / raw,
        }
        progress(f"{mode}: done")
    return result


# -- reporting -------------------------------------------------------------------------------

CHECK_SEQ = "(b) sequential steps/s vs raw commits/s, FULL"
CHECK_BURST = "(c) burst steps/s vs raw commits/s, FULL"
CHECK_NORMAL_STEP = "per-step overhead, NORMAL (us)"


def checks(modes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    full, normal = modes.get("full"), modes.get("normal")
    if full is not None:
        seq = full["ratios"]["sequential_to_raw"]
        burst = full["ratios"]["burst_to_raw"]
        found.append(check(CHECK_SEQ, seq, f">= {TARGET_SEQ_RATIO}", seq >= TARGET_SEQ_RATIO))
        found.append(
            check(CHECK_BURST, burst, f">= {TARGET_BURST_RATIO}", burst >= TARGET_BURST_RATIO)
        )
    if normal is not None:
        overhead = normal["sequential"]["us_per_step"]
        target = f"< {TARGET_NORMAL_STEP_US:g}"
        found.append(check(CHECK_NORMAL_STEP, overhead, target, overhead < TARGET_NORMAL_STEP_US))
    return found


def table(results: dict[str, Any]) -> str:
    modes: dict[str, dict[str, Any]] = results["modes"]
    names = [m for m in MODES if m in modes]

    def interrupted(r: dict[str, Any]) -> str:
        recovery = r["recovery"]
        total = recovery["runs"] * recovery["steps_per_run"]
        return f"{recovery['interrupted_runs']} ({recovery['at_kill']['steps_done']}/{total})"

    def commits(r: dict[str, Any]) -> str:
        burst = r["burst"]
        return f"{fmt(burst['commits'], 'd')} ({fmt(burst['steps_per_commit'], '.0f')})"

    rows = [
        Row("(a) raw sqlite3 commits/s", value("raw", "commits_per_s", ",.0f")),
        Row("(a) raw commit time, µs", value("raw", "us_per_commit", ".0f")),
        Row(
            "(b) sequential steps/s (run start → finish)",
            value("sequential", "steps_per_s", ",.0f"),
        ),
        Row(
            "(b) time per step, µs",
            value("sequential", "us_per_step", ".0f"),
            f"NORMAL < {TARGET_NORMAL_STEP_US:g}",
            CHECK_NORMAL_STEP,
        ),
        Row(
            "(b) ratio to (a)",
            value("ratios", "sequential_to_raw", ".2f"),
            f"FULL ≥ {TARGET_SEQ_RATIO}",
            CHECK_SEQ,
        ),
        Row(
            "(b) wall steps/s (start → completion seen)",
            value("sequential", "wall_steps_per_s", ",.0f"),
        ),
        Row("(c) burst steps/s", value("burst", "steps_per_s", ",.0f")),
        Row(
            "(c) ratio to (a)",
            value("ratios", "burst_to_raw", ".2f"),
            f"FULL ≥ {TARGET_BURST_RATIO}",
            CHECK_BURST,
        ),
        Row("(c) writer commits (steps per commit)", commits),
        Row("(d) app.run latency p50 / p99, ms", pair("latency", "p50_ms", "p99_ms")),
        Row("(d) in-store latency p50 / p99, ms", pair("latency", "store_p50_ms", "store_p99_ms")),
        Row("(e) runs interrupted (steps done of total)", interrupted),
        Row(
            "(e) restart → first run claimed, s",
            value("recovery", "seconds_to_first_claim", ".2f"),
        ),
        Row(
            "(e) restart → all runs completed, s",
            value("recovery", "seconds_to_all_completed", ".2f"),
        ),
        Row(
            "(e) first claim → all runs completed, s",
            value("recovery", "seconds_first_claim_to_all_completed", ".2f"),
        ),
    ]
    return metric_table(rows, [(m.upper(), modes[m]) for m in names], results["checks"])


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
    ]
    if results["modes"]:
        parts += ["", "SQLite:", "", table(results), ""]
        parts += [cpu_line(mode.upper(), found) for mode, found in results["modes"].items()]
        parts += ["", *check_lines(results["checks"])]
    if "postgres" in results:
        parts += ["", "PostgreSQL:", "", postgres.report(results["postgres"])]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--sync", choices=("full", "normal", "both"), default="both", help="SQLite modes"
    )
    parser.add_argument(
        "--postgres",
        default=postgres.ADMIN_URL,
        metavar="URL",
        help="a PostgreSQL server (URL of a database to connect to while creating and dropping"
        " the benchmark's own databases); default: $NONSTOP_BENCH_POSTGRES or %(default)s",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    modes = () if args.backend == "postgres" else MODES if args.sync == "both" else (args.sync,)
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
    results["checks"] = checks(results["modes"])
    if args.backend != "sqlite":
        found = postgres.run(args.postgres, quick=args.quick, required=args.backend == "postgres")
        if found is not None:
            results["postgres"] = found
    results["seconds"] = time.perf_counter() - begin
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
