"""nonstop trigger benchmarks on SQLite: schedule firing, an idle scheduler, parked runs.

    .venv/bin/python bench/triggers.py [--quick] [--json] [--sync full|normal]
                                       [--only T1,T2,T3] [--concurrency N] [--history N]

Each measurement serves `bench/triggers_app.py:app` with a real `nonstop serve` process on
a fresh SQLite file in a temporary directory under bench/results/:

  (T1) fires    100 agents with every="1s": fire lateness (run created_at - scheduled_at)
                and start lateness (started_at - scheduled_at) after a warm-up, fires
                counted against 100 a second, CPU and RSS of the serve process
  (T2) idle     the same 100 schedules with every="1h", so nothing fires: CPU and RSS
  (T3) parked   10,000 runs parked in ctx.sleep("1h") and ctx.wait_for("never"): the time
                to park them all, then CPU and RSS of the serve process while they wait

`--history N` first puts N completed runs of the tick agents in T1's database, as if the
schedules had been firing for a while. Under each table a line per window says how much
CPU the rest of the machine used meanwhile: on a shared 2-core machine that moves the
latencies more than anything else.

Progress goes to stderr; a Markdown table (or, with --json, the results) to stdout. The
results are always written to bench/results/triggers-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from nonstop.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_DIR,
    REPO,
    RESULTS,
    SQLiteProbe,
    alive,
    check,
    fmt,
    free_port,
    machine,
    markdown,
    percentile,
    progress,
    revision,
    stop,
    wait_until,
)
from triggers_app import SIGNAL, SLEEP_FOR, make_app

APP_FILE = BENCH_DIR / "triggers_app.py"
MIB = 2**20

TESTS = ("T1", "T2", "T3")

# Targets, on the 2-core machine the README describes.
TARGET_FIRE_P99_MS = 250.0
TARGET_PARKED_RSS_MIB = 200.0
TARGET_PARKED_CPU_PERCENT = 2.0


@dataclass(frozen=True, slots=True)
class Sizes:
    ticks: int = 100  # scheduled agents in T1 and T2
    fire_seconds: int = 60  # T1: seconds served from the first fire
    fire_warmup: int = 5  # T1: first seconds of fires left out of every figure
    idle_seconds: float = 30.0  # T2: the measurement window
    parked: int = 10_000  # T3: runs parked, half sleeping and half waiting
    parked_seconds: float = 30.0  # T3: the measurement window once all are parked
    settle: float = 2.0  # T2, T3: seconds between startup (or parking) and the window


QUICK = Sizes(
    fire_seconds=12,
    fire_warmup=3,
    idle_seconds=6.0,
    parked=2_000,
    parked_seconds=6.0,
    settle=1.0,
)


# -- helpers ---------------------------------------------------------------------------------


def sqlite_url(path: Path, sync: str) -> str:
    return f"sqlite:///{path}?synchronous={sync}"


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine, all cores, since boot."""
    t = psutil.cpu_times()
    steal = float(getattr(t, "steal", 0.0))
    idle = float(t.idle) + float(getattr(t, "iowait", 0.0))
    total = float(sum(t))
    return total - idle - steal, steal, total


class Probe(SQLiteProbe):
    """Reads the benchmark's database on its own sqlite3 connection, never through nonstop;
    also counts the runs by status."""

    def statuses(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.rows("SELECT status, count(*) FROM runs GROUP BY 1")}


# -- a `nonstop serve` process ---------------------------------------------------------------


class Server:
    """`python -m nonstop serve bench/triggers_app.py:app` on one database, logging its
    JSON lines to a file; `env` configures the app (BENCH_TICKS, BENCH_TICK_EVERY)."""

    def __init__(
        self, url: str, log: Path, env: dict[str, str], options: Sequence[str] = ()
    ) -> None:
        self.url = url
        self.log = log
        self.port = free_port()
        self.command = [
            *(sys.executable, "-m", "nonstop", "serve", f"{APP_FILE}:app"),
            *("--db", url, "--port", str(self.port), "--grace-period", "5"),
            *options,
        ]
        environment = {**os.environ, **env, "NONSTOP_DATABASE_URL": url}
        self.launched_at = time.time()
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT
            )
        self.ps = psutil.Process(self.process.pid)

    def check(self) -> None:
        """Raise if the process has exited, with the end of its log."""
        alive(self.process, self.log)

    def wait_started(self, timeout: float = 60.0) -> float:
        """Poll the startup probe until it answers 200; return when (time.time())."""
        url = f"http://127.0.0.1:{self.port}/healthz/startup"

        def started() -> bool:
            self.check()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=1.0) as response,
            ):
                return bool(response.status == 200)
            return False

        wait_until(started, interval=0.05, timeout=timeout, what="nonstop serve to start")
        return time.time()

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        """SIGTERM the process unless it is already dead, and reap it (SIGKILL after 30 s)."""
        stop(self.process)


@contextlib.contextmanager
def serving(
    url: str, log: Path, env: dict[str, str], options: Sequence[str] = ()
) -> Iterator[Server]:
    server = Server(url, log, env, options)
    try:
        yield server
    finally:
        server.stop()


def measure(server: Server, until: float) -> dict[str, Any]:
    """CPU and memory of `server` from now until the wall-clock time `until`: CPU time
    (user + system) over wall time as % of one core, RSS sampled every second. Also what
    the rest of the machine did meanwhile, to tell a busy machine from a busy server."""
    load_before = os.getloadavg()[0]
    machine_before = machine_cpu()
    start, cpu_start = time.perf_counter(), server.cpu_seconds()
    samples: list[int] = []
    while True:
        server.check()
        samples.append(server.rss())
        left = until - time.time()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
    cpu_end, end = server.cpu_seconds(), time.perf_counter()
    machine_after = machine_cpu()
    samples.append(server.rss())
    wall = end - start
    used = cpu_end - cpu_start
    busy, steal, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
    return {
        "seconds": wall,
        "cpu_seconds": used,
        "cpu_percent": 100 * used / wall,
        "rss_mib_start": samples[0] / MIB,
        "rss_mib_end": samples[-1] / MIB,
        "rss_mib_max": max(samples) / MIB,
        "threads": server.ps.num_threads(),
        # everything else on the machine (this script included), in % of one core
        "others_cpu_percent": max(0.0, 100 * (busy - used) / wall),
        "steal_percent": 100 * steal / total if total > 0 else 0.0,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def sleep_until(server: Server, when: float) -> None:
    while (left := when - time.time()) > 0:
        server.check()
        time.sleep(min(0.5, left))


# -- (T1) 100 schedules firing every second --------------------------------------------------


def seed_history(url: str, path: Path, ticks: int, count: int) -> None:
    """Put `count` completed runs of the tick agents in a fresh database, as if the
    schedules had been firing for a while: nonstop creates the schema, then plain SQL
    inserts the rows (nonstop has no verb that writes a finished run)."""

    async def migrate() -> None:
        store = open_store(url, create=True)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    past = time.time() - 86_400
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO runs (id, agent, status, input, output, priority, created_at,"
            " updated_at, started_at, finished_at, scheduled_at)"
            " VALUES (?, ?, 'completed', '{}', 'null', 0, ?, ?, ?, ?, ?)",
            (
                (f"tick{i % ticks:03}@seed-{i}", f"tick{i % ticks:03}", *([past + i / ticks] * 5))
                for i in range(count)
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


FIRED = "id NOT LIKE '%@seed-%'"  # runs the node fired, not the history put in first


def bench_fires(workdir: Path, sync: str, sizes: Sizes, history: int = 0) -> dict[str, Any]:
    path = workdir / "fires.db"
    url = sqlite_url(path, sync)
    if history:
        seed_history(url, path, sizes.ticks, history)
        progress(f"T1: {history:,} completed runs of the tick agents put in the database first")
    env = {"BENCH_TICKS": str(sizes.ticks), "BENCH_TICK_EVERY": "1s"}
    with serving(url, workdir / "fires.log", env) as server:
        started = server.wait_started()
        probe = Probe(path)  # the file exists once the node has started
        try:

            def first_fire() -> float | None:
                server.check()
                found = probe.scalar(f"SELECT min(scheduled_at) FROM runs WHERE {FIRED}")
                return None if found is None else float(found)

            wait_until(lambda: first_fire() is not None, interval=0.05, timeout=30, what="a fire")
            first = first_fire()
            assert first is not None
            begin, end = first + sizes.fire_warmup, first + sizes.fire_seconds
            progress(
                f"T1: first fire {first - started:+.2f}s after startup; measuring fires from"
                f" +{sizes.fire_warmup}s to +{sizes.fire_seconds}s"
            )
            sleep_until(server, begin)
            usage = measure(server, end)
            sleep_until(server, end + 2.0)  # the last second's fires get created and claimed
            rows = probe.rows(
                "SELECT scheduled_at, created_at, started_at, status, agent FROM runs"
                f" WHERE scheduled_at >= ? AND scheduled_at < ? AND {FIRED}",
                begin,
                end,
            )
            statuses = probe.statuses()
        finally:
            probe.close()
    seconds = round(end - begin)
    expected = sizes.ticks * seconds
    if not rows:
        raise RuntimeError("no fire in the measurement window")
    fire_ms = [(created - at) * 1000 for at, created, *_ in rows]
    start_ms = [(claimed - at) * 1000 for at, _, claimed, *_ in rows if claimed is not None]
    per_second = Counter(round(at) for at, *_ in rows)
    # how lateness moves during the window, and between the first and last agent declared
    span = min(10, seconds // 2)

    def p99_between(low: float, high: float) -> float | None:
        found = [(created - at) * 1000 for at, created, *_ in rows if low <= at < high]
        return percentile(found, 99) if found else None

    def p50_of(agent: str) -> float | None:
        found = [(created - at) * 1000 for at, created, _, _, name in rows if name == agent]
        return percentile(found, 50) if found else None

    first_agent, last_agent = "tick000", f"tick{sizes.ticks - 1:03}"
    worst: dict[int, float] = {}
    for at, created, *_ in rows:
        second = round(at - begin)
        worst[second] = max(worst.get(second, 0.0), (created - at) * 1000)
    return {
        "ticks": sizes.ticks,
        "history_runs": history,
        "startup_to_first_fire_s": first - started,
        "window_seconds": seconds,
        "fires": len(rows),
        "expected": expected,
        "missing": expected - len(rows),
        "fires_per_second_min": min(per_second.values()),
        "fires_per_second_max": max(per_second.values()),
        "not_started": sum(1 for _, _, claimed, *_ in rows if claimed is None),
        "not_completed": sum(1 for _, _, _, status, _ in rows if status != "completed"),
        "fire_p50_ms": percentile(fire_ms, 50),
        "fire_p90_ms": percentile(fire_ms, 90),
        "fire_p99_ms": percentile(fire_ms, 99),
        "fire_max_ms": max(fire_ms),
        "fire_min_ms": min(fire_ms),
        "trend_span_s": span,
        "fire_p99_ms_first_span": p99_between(begin, begin + span),
        "fire_p99_ms_last_span": p99_between(end - span, end),
        "fire_max_ms_by_second": [round(worst[k], 1) for k in sorted(worst)],
        "fire_p50_ms_first_agent": p50_of(first_agent),
        "fire_p50_ms_last_agent": p50_of(last_agent),
        "start_p50_ms": percentile(start_ms, 50),
        "start_p99_ms": percentile(start_ms, 99),
        "start_max_ms": max(start_ms),
        "statuses_at_end": statuses,
        "usage": usage,
    }


# -- (T2) 100 schedules, nothing due ---------------------------------------------------------


def bench_idle(workdir: Path, sync: str, sizes: Sizes) -> dict[str, Any]:
    path = workdir / "idle.db"
    env = {"BENCH_TICKS": str(sizes.ticks), "BENCH_TICK_EVERY": "1h"}
    with serving(sqlite_url(path, sync), workdir / "idle.log", env) as server:
        started = server.wait_started()
        sleep_until(server, started + sizes.settle)
        usage = measure(server, time.time() + sizes.idle_seconds)
    probe = Probe(path)
    try:
        runs = int(probe.scalar("SELECT count(*) FROM runs"))
        schedules = int(probe.scalar("SELECT count(*) FROM schedules"))
    finally:
        probe.close()
    return {"ticks": sizes.ticks, "runs_created": runs, "schedules": schedules, "usage": usage}


# -- (T3) 10,000 parked runs -----------------------------------------------------------------


def parked_ids(count: int) -> list[tuple[str, str]]:
    """(agent, run id) of `count` runs, sleepers and waiters alternating."""
    half = count // 2
    found: list[tuple[str, str]] = []
    for i in range(half):
        found += [("sleeper", f"sleep-{i:05d}"), ("waiter", f"wait-{i:05d}")]
    return found


async def create_runs(url: str, runs: list[tuple[str, str]]) -> None:
    """Create `runs` (pending) through nonstop's store, all awaited together so that they
    share a few group commits."""
    app = make_app(url, ticks=0)
    store = open_store(url, create=True)
    await store.open()
    try:
        news = [app.new_run(agent, None, run_id) for agent, run_id in runs]
        await asyncio.gather(*(store.create_run(new, time.time()) for new in news))
    finally:
        await store.close()


def bench_parked(workdir: Path, sync: str, sizes: Sizes, concurrency: int) -> dict[str, Any]:
    path = workdir / "parked.db"
    url = sqlite_url(path, sync)
    runs = parked_ids(sizes.parked)
    total = len(runs)
    begin = time.perf_counter()
    asyncio.run(create_runs(url, runs))
    created_s = time.perf_counter() - begin
    progress(f"T3: {total} runs created in {created_s:.2f}s; serving until all are parked")
    probe = Probe(path)
    env = {"BENCH_TICKS": "0"}
    options = ["--concurrency", str(concurrency)]
    try:
        with serving(url, workdir / "parked.log", env, options) as server:
            peak = [server.rss()]

            def all_parked() -> bool:
                server.check()
                peak.append(server.rss())
                parked = probe.scalar(
                    "SELECT count(*) FROM runs WHERE status IN ('sleeping', 'waiting')"
                )
                return int(parked) >= total

            wait_until(all_parked, interval=0.1, timeout=600, what="all runs parked")
            parked_at = time.time()
            first_claim, last_park = probe.rows(
                "SELECT min(started_at), max(updated_at) FROM runs"
            )[0]
            progress(
                f"T3: all parked {parked_at - server.launched_at:.2f}s after launch;"
                f" measuring {sizes.parked_seconds:g}s"
            )
            sleep_until(server, parked_at + sizes.settle)
            usage = measure(server, time.time() + sizes.parked_seconds)
            statuses = probe.statuses()
    finally:
        probe.close()
    return {
        "runs": total,
        "concurrency": concurrency,
        "sleep": SLEEP_FOR,
        "wait_for": SIGNAL,
        "create_seconds": created_s,
        "launch_to_all_parked_s": parked_at - server.launched_at,
        "first_claim_to_last_park_s": last_park - first_claim,
        "launch_to_first_claim_s": first_claim - server.launched_at,
        "rss_mib_max_while_parking": max(peak) / MIB,
        "statuses_at_end": statuses,
        "usage": usage,
    }


# -- reporting -------------------------------------------------------------------------------


def checks(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    fires = results.get("fires")
    if fires is not None:
        p99 = fires["fire_p99_ms"]
        found["fire_p99"] = check(
            "T1 fire lateness p99 (ms)", p99, f"< {TARGET_FIRE_P99_MS:g}", p99 < TARGET_FIRE_P99_MS
        )
        found["fire_count"] = check(
            "T1 fires in the window",
            fires["fires"],
            f"= {fires['expected']}",
            fires["missing"] == 0,
        )
    parked = results.get("parked")
    if parked is not None:
        rss = parked["usage"]["rss_mib_max"]
        cpu = parked["usage"]["cpu_percent"]
        found["parked_rss"] = check(
            "T3 serve RSS while parked (MiB)",
            rss,
            f"< {TARGET_PARKED_RSS_MIB:g}",
            rss < TARGET_PARKED_RSS_MIB,
        )
        found["parked_cpu"] = check(
            "T3 serve CPU while parked (% of one core)",
            cpu,
            f"< {TARGET_PARKED_CPU_PERCENT:g}",
            cpu < TARGET_PARKED_CPU_PERCENT,
        )
    return found


def table(results: dict[str, Any]) -> str:
    verdicts = {key: ("PASS" if c["passed"] else "FAIL") for key, c in results["checks"].items()}
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, cell: str, target: str = "", key: str = "") -> None:
        rows.append((label, cell, target, verdicts.get(key, "")))

    fires = results.get("fires")
    if fires is not None:
        n = fires["ticks"]
        if fires["history_runs"]:
            add("(T1) completed runs in the database before serving", f"{fires['history_runs']:,}")
        add(
            f"(T1) fires / expected ({n} x {fires['window_seconds']} s)",
            f"{fires['fires']:,} / {fires['expected']:,}",
            "all",
            "fire_count",
        )
        add(
            "(T1) fire lateness p50 / p99 / max, ms",
            f"{fires['fire_p50_ms']:.1f} / {fires['fire_p99_ms']:.1f} / {fires['fire_max_ms']:.1f}",
            f"p99 < {TARGET_FIRE_P99_MS:g}",
            "fire_p99",
        )
        add(
            f"(T1) fire lateness p99, first → last {fires['trend_span_s']} s of the window, ms",
            f"{fmt(fires['fire_p99_ms_first_span'], '.1f')} →"
            f" {fmt(fires['fire_p99_ms_last_span'], '.1f')}",
        )
        add(
            f"(T1) fire lateness p50, tick000 / tick{n - 1:03} (first / last declared), ms",
            f"{fmt(fires['fire_p50_ms_first_agent'], '.1f')} /"
            f" {fmt(fires['fire_p50_ms_last_agent'], '.1f')}",
        )
        add(
            "(T1) start lateness p50 / p99, ms",
            f"{fires['start_p50_ms']:.1f} / {fires['start_p99_ms']:.1f}",
        )
        usage = fires["usage"]
        add("(T1) serve CPU, % of one core", f"{usage['cpu_percent']:.1f}")
        add(
            "(T1) serve RSS, MiB (window start → end)",
            f"{usage['rss_mib_start']:.1f} → {usage['rss_mib_end']:.1f}",
        )
    idle = results.get("idle")
    if idle is not None:
        usage = idle["usage"]
        add(
            f"(T2) idle CPU, {idle['ticks']} hourly schedules, % of one core",
            f"{usage['cpu_percent']:.2f}",
        )
        add("(T2) idle RSS, MiB", f"{usage['rss_mib_max']:.1f}")
    parked = results.get("parked")
    if parked is not None:
        usage = parked["usage"]
        add(
            f"(T3) time to park {parked['runs']:,} runs, s (launch → all parked)",
            f"{parked['launch_to_all_parked_s']:.2f}",
        )
        add("(T3) first claim → last park, s", f"{parked['first_claim_to_last_park_s']:.2f}")
        add("(T3) RSS while parking (peak), MiB", f"{parked['rss_mib_max_while_parking']:.1f}")
        add(
            "(T3) RSS while parked, MiB",
            f"{usage['rss_mib_max']:.1f}",
            f"< {TARGET_PARKED_RSS_MIB:g}",
            "parked_rss",
        )
        add(
            "(T3) CPU while parked, % of one core",
            f"{usage['cpu_percent']:.2f}",
            f"< {TARGET_PARKED_CPU_PERCENT:g}",
            "parked_cpu",
        )
    return markdown(["metric", "value", "target", "result"], rows, numeric=1)


def summary(results: dict[str, Any]) -> str:
    info = results["machine"]
    revision_info = results["revision"]
    parts = [
        f"nonstop trigger benchmarks, {results['started_at']}"
        f" ({'quick' if results['quick'] else 'full'} run, {results['seconds']:.0f}s,"
        f" synchronous={results['sync'].upper()})",
        f"machine: {info['cpus']} CPUs, Python {info['python']}, SQLite {info['sqlite']},"
        f" {info['platform']}",
        f"commit: {revision_info['commit']}"
        + (" (src/ had uncommitted changes)" if revision_info["src_modified"] else ""),
        "",
        table(results),
        "",
    ]
    for key, name in (("fires", "T1"), ("idle", "T2"), ("parked", "T3")):
        if key in results:
            u = results[key]["usage"]
            parts.append(
                f"{name} window: other processes {u['others_cpu_percent']:.0f}% of one core,"
                f" steal {u['steal_percent']:.1f}%, load average {u['load_before']:.2f}"
                f" → {u['load_after']:.2f}"
            )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="short windows, for a smoke test")
    parser.add_argument("--sync", choices=("full", "normal"), default="full", help="SQLite mode")
    parser.add_argument(
        "--only", default=",".join(TESTS), help="which measurements, e.g. T1,T3 (default: all)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="T3: --concurrency of nonstop serve"
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="T1: first put N completed runs of the tick agents in the database (default 0)",
    )
    args = parser.parse_args(argv)
    chosen = {name.strip().upper() for name in args.only.split(",") if name.strip()}
    if not chosen <= set(TESTS):
        parser.error(f"--only takes {', '.join(TESTS)}")
    sizes = QUICK if args.quick else Sizes()
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/triggers.py", *sys.argv[1:]]),
        "quick": args.quick,
        "sync": args.sync,
        "sizes": asdict(sizes),
        "machine": machine(),
        "revision": revision(),
    }
    begin = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tmp-triggers-", dir=RESULTS) as tmp:
        workdir = Path(tmp)
        if "T1" in chosen:
            progress(f"T1: {sizes.ticks} schedules every 1s, {sizes.fire_seconds}s served")
            results["fires"] = bench_fires(workdir, args.sync, sizes, args.history)
        if "T2" in chosen:
            progress(f"T2: {sizes.ticks} schedules every 1h, {sizes.idle_seconds:g}s idle")
            results["idle"] = bench_idle(workdir, args.sync, sizes)
        if "T3" in chosen:
            progress(f"T3: {sizes.parked} runs to park (--concurrency {args.concurrency})")
            results["parked"] = bench_parked(workdir, args.sync, sizes, args.concurrency)
    results["seconds"] = time.perf_counter() - begin
    results["checks"] = checks(results)
    text = json.dumps(results, indent=2)
    out = RESULTS / f"triggers-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(text + "\n")
    progress(f"results written to {out}")
    print(text if args.json else summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
