"""nonstop benchmarks on PostgreSQL; `run.py --backend postgres|both` runs them.

Each measurement gets a fresh database on the server that `ADMIN_URL` (or `--postgres`)
names, dropped afterwards:

  (P1) raw      one psycopg connection, autocommit, one INSERT per commit (the baseline),
                beside one run of N no-op durable steps on a worker in this process
  (P2) nodes    M runs of 3 no-op steps, created first through the store, then served by
                1, 2 and 3 `nonstop serve` processes; time until all M are completed
  (P3) wakeup   one idle `nonstop serve` (poll interval 5 s): time from `create_run`
                returning to the run's claim (`started_at`), one run at a time
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench_app import make_app
from common import (
    RESULT_TIMEOUT,
    RESULTS,
    PostgresProbe,
    Row,
    alive,
    bench_sequential,
    check,
    check_lines,
    cpu_line,
    cpu_watch,
    disk_of,
    log_events,
    markdown,
    metric_table,
    node_started_at,
    pair,
    percentile,
    process_cpu,
    progress,
    serving,
    time_commits,
    value,
    wait_until,
)

from nonstop.models import Run
from nonstop.store import Store, open_store

ADMIN_URL = os.environ.get(
    "NONSTOP_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)

TARGET_SEQ_RATIO = 0.5  # (P1) sequential steps/s over raw commits/s
TARGET_WAKEUP_P50_MS = 20.0  # (P3) create_run returned -> claimed, median

CHECK_SEQ = "(P1) sequential steps/s vs raw commits/s"
CHECK_WAKEUP = "(P3) wake-up p50 (ms)"


@dataclass(frozen=True, slots=True)
class Sizes:
    raw_rows: int = 2000
    seq_steps: int = 1000
    seq_concurrency: int = 1000
    runs: int = 10_000
    steps_per_run: int = 3
    nodes: tuple[int, ...] = (1, 2, 3)
    node_concurrency: int = 100
    poll_interval: float = 0.5
    wakeup_runs: int = 200
    wakeup_warmup: int = 10
    wakeup_poll_interval: float = 5.0  # the idle node's: far longer than the wake-ups measured
    wakeup_pause: float = 0.02  # seconds between runs, so the node is idle when each is created


QUICK = Sizes(raw_rows=500, seq_steps=300, runs=1000, wakeup_runs=50, wakeup_warmup=5)


class Server:
    """The PostgreSQL server: creates and drops the benchmark's databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url_for(self, database: str) -> str:
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{database}"))

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    @contextlib.contextmanager
    def database(self, purpose: str, template: str | None = None) -> Iterator[str]:
        """A fresh database (a copy of `template`, if given), dropped on exit; yields its URL.
        A checkpoint follows its creation, so that none falls due in the measurement."""
        name = f"bench_{os.getpid()}_{purpose}"
        self.drop(name)
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        try:
            self.execute("CHECKPOINT")
            yield self.url_for(name)
        finally:
            self.drop(name)

    def drop(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def counters(self, url: str) -> tuple[int, int]:
        """(transactions committed in the database at `url`, WAL syncs of the whole server)
        so far, once no connection to that database is left (each reports its counts when
        it ends) or after 5 s."""
        name = urlsplit(url).path.lstrip("/")
        query = (
            "SELECT numbackends, xact_commit, (SELECT wal_sync FROM pg_stat_wal)"
            f" FROM pg_stat_database WHERE datname = '{name}'"
        )
        deadline = time.monotonic() + 5
        while True:
            backends, commits, syncs = self.execute(query)[0]
            if not backends or time.monotonic() > deadline:
                return int(commits), int(syncs)
            time.sleep(0.05)

    def facts(self) -> dict[str, Any]:
        names = (
            "server_version",
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "full_page_writes",
            "commit_delay",
            "shared_buffers",
            "max_connections",
            "data_directory",
        )
        found: dict[str, Any] = {name: self.execute(f"SHOW {name}")[0][0] for name in names}
        host = urlsplit(self.admin_url).hostname or "localhost"
        if host in ("127.0.0.1", "localhost", "::1") or host.startswith("/"):
            found["data_disk"] = disk_of(Path(found["data_directory"]))
        return found


# -- (P1) raw commits beside sequential steps -----------------------------------------------


def bench_raw(url: str, rows: int) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " payload text NOT NULL)"
        )

        def commit_one() -> None:
            conn.execute("INSERT INTO t (payload) VALUES ('null')")

        return time_commits(commit_one, rows)


# -- (P2) 1, 2, 3 nodes ----------------------------------------------------------------------


async def create_runs(url: str, runs: int, steps: int) -> float:
    """Create `runs` runs of the `steps` agent one after another through the store, as
    `App.start` does; return the seconds it took (the store opened and closed outside)."""
    app = make_app(url)  # validates and names the runs; never opened
    store = open_store(url)
    await store.open()
    try:
        start = time.perf_counter()
        for _ in range(runs):
            await store.create_run(app.new_run("steps", {"n": steps}, None), time.time())
        return time.perf_counter() - start
    finally:
        await store.close()


def bench_nodes(
    server: Server, url: str, count: int, sizes: Sizes, workdir: Path
) -> dict[str, Any]:
    """Serve the runs already in `url` with `count` nodes; time until all are completed."""
    logs = [workdir / f"nodes{count}-{i + 1}.log" for i in range(count)]
    commits_before, syncs_before = server.counters(url)
    probe = PostgresProbe(url)
    try:
        launched_wall = time.time()
        launched = time.perf_counter()
        options = {"concurrency": sizes.node_concurrency, "poll_interval": sizes.poll_interval}
        with serving(url, logs, **options) as processes:

            def all_done() -> bool:
                for process, log in zip(processes, logs, strict=True):
                    alive(process, log)
                return probe.completed() >= sizes.runs

            server_cpu = process_cpu(name="postgres")
            nodes_cpu = process_cpu([process.pid for process in processes])
            done = wait_until(all_done, interval=0.02, timeout=600, what=f"{count} node(s)")
            server_cpu = process_cpu(name="postgres") - server_cpu
            nodes_cpu = process_cpu([process.pid for process in processes]) - nodes_cpu
        first_claim, last_finish = probe.row("SELECT min(started_at), max(finished_at) FROM runs")
        statuses = dict(probe.rows("SELECT status, count(*) FROM runs GROUP BY status"))
        steps = probe.steps()
    finally:
        probe.close()
    commits_after, syncs_after = server.counters(url)
    commits = commits_after - commits_before - probe.queries
    total_steps = sizes.runs * sizes.steps_per_run
    if statuses != {"completed": sizes.runs} or steps != total_steps:
        raise RuntimeError(f"{count} node(s) left runs {statuses} and {steps} steps")
    wall = done - launched
    window = last_finish - first_claim
    started = [node_started_at(log) for log in logs]
    return {
        "nodes": count,
        "seconds": wall,
        "runs_per_s": sizes.runs / wall,
        "steps_per_s": total_steps / wall,
        "store_seconds": window,
        "store_runs_per_s": sizes.runs / window,
        "store_steps_per_s": total_steps / window,
        "seconds_to_first_claim": first_claim - launched_wall,
        "seconds_to_nodes_started": [None if s is None else s - launched_wall for s in started],
        "transactions": commits,
        "transactions_per_run": commits / sizes.runs,
        "wal_syncs": syncs_after - syncs_before,
        "steps_per_wal_sync": total_steps / max(1, syncs_after - syncs_before),
        "nodes_cpu_seconds": nodes_cpu,
        "nodes_cpu_ms_per_run": nodes_cpu / sizes.runs * 1000,
        "server_cpu_seconds": server_cpu,
        "server_cpu_ms_per_run": server_cpu / sizes.runs * 1000,
        "cpu_busy_percent": (nodes_cpu + server_cpu) / (wall * (os.cpu_count() or 1)) * 100,
        "runs_per_node": [
            sum(1 for event in log_events(log) if event.get("event") == "run_completed")
            for log in logs
        ],
    }


def bench_scaling(server: Server, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    with server.database("seed") as seed_url:
        progress(f"postgres: (P2) creating {sizes.runs} runs through the store")
        created = asyncio.run(create_runs(seed_url, sizes.runs, sizes.steps_per_run))
        seed = urlsplit(seed_url).path.lstrip("/")
        by_nodes = []
        for count in sizes.nodes:
            with server.database(f"nodes{count}", template=seed) as url:
                progress(f"postgres: (P2) {count} node(s) serving {sizes.runs} runs")
                by_nodes.append(bench_nodes(server, url, count, sizes, workdir))
    one = by_nodes[0]
    for found in by_nodes:
        found["scaling"] = found["runs_per_s"] / one["runs_per_s"]
        found["store_scaling"] = found["store_runs_per_s"] / one["store_runs_per_s"]
    return {
        "runs": sizes.runs,
        "steps_per_run": sizes.steps_per_run,
        "create_seconds": created,
        "create_runs_per_s": sizes.runs / created,
        "by_nodes": by_nodes,
    }


# -- (P3) wake-up latency --------------------------------------------------------------------


async def finished(store: Store, run_id: str) -> Run:
    """The run once finished, read every 2 ms."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        run = await store.get_run(run_id)
        if run is not None and run.status.finished:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} not finished after {RESULT_TIMEOUT:g}s")
        await asyncio.sleep(0.002)


async def wakeups(url: str, sizes: Sizes) -> list[tuple[float, float]]:
    """(create_run returned -> claimed, created_at -> claimed) in seconds, for each 1-step
    run created after the warm-up, one at a time."""
    app = make_app(url)
    store = open_store(url)
    await store.open()
    samples = []
    try:
        for i in range(sizes.wakeup_warmup + sizes.wakeup_runs):
            await asyncio.sleep(sizes.wakeup_pause)
            new = app.new_run("steps", {"n": 1}, None)
            await store.create_run(new, time.time())
            returned = time.time()
            run = await finished(store, new.id)
            if run.started_at is None:
                raise RuntimeError(f"run {run.id} ended {run.status} without a claim")
            if i >= sizes.wakeup_warmup:
                samples.append((run.started_at - returned, run.started_at - run.created_at))
    finally:
        await store.close()
    return samples


def bench_wakeup(server: Server, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    log = workdir / "wakeup.log"
    with (
        server.database("wakeup") as url,
        serving(
            url, [log], concurrency=sizes.node_concurrency, poll_interval=sizes.wakeup_poll_interval
        ) as (node,),
    ):

        def started() -> bool:
            alive(node, log)
            return node_started_at(log) is not None

        wait_until(started, interval=0.01, timeout=60, what="the node to start")
        samples = asyncio.run(wakeups(url, sizes))
    pickup = [returned for returned, _ in samples]
    in_store = [created for _, created in samples]
    return {
        "runs": len(samples),
        "node_poll_interval_s": sizes.wakeup_poll_interval,
        "p50_ms": percentile(pickup, 50) * 1000,
        "p99_ms": percentile(pickup, 99) * 1000,
        "mean_ms": statistics.fmean(pickup) * 1000,
        "max_ms": max(pickup) * 1000,
        "min_ms": min(pickup) * 1000,
        "store_p50_ms": percentile(in_store, 50) * 1000,
        "store_p99_ms": percentile(in_store, 99) * 1000,
        "note": (
            "p50/p99: create_run returned in this process -> started_at written by the node's"
            " claim; store_*: the run's created_at -> started_at"
        ),
    }


# -- all of it -------------------------------------------------------------------------------


def run(admin_url: str, *, quick: bool, required: bool) -> dict[str, Any]:
    """Every PostgreSQL measurement. Without a server: an error if `required`, else the
    reason it was skipped."""
    server = Server(admin_url)
    try:
        facts = server.facts()
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = f"no PostgreSQL server at {admin_url}: {first_line}"
        if required:
            raise SystemExit(f"bench: {reason}") from None
        progress(f"postgres: skipped, {reason}")
        return {"skipped": reason}
    sizes = QUICK if quick else Sizes()
    result: dict[str, Any] = {"server": facts, "sizes": asdict(sizes)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tmp-postgres-", dir=RESULTS) as tmp:
        workdir = Path(tmp)
        with cpu_watch(result):
            with server.database("raw") as url:
                progress(f"postgres: (P1) raw psycopg, {sizes.raw_rows} single-row commits")
                result["raw"] = bench_raw(url, sizes.raw_rows)
            with server.database("seq") as url:
                progress(f"postgres: (P1) one run of {sizes.seq_steps} no-op steps")
                result["sequential"] = bench_sequential(
                    url, lambda: PostgresProbe(url), sizes.seq_steps, sizes.seq_concurrency
                )
            result["scaling"] = bench_scaling(server, sizes, workdir)
            progress(f"postgres: (P3) {sizes.wakeup_runs} wake-ups of an idle node")
            result["wakeup"] = bench_wakeup(server, sizes, workdir)
    ratio = result["sequential"]["steps_per_s"] / result["raw"]["commits_per_s"]
    result["ratios"] = {"sequential_to_raw": ratio}
    p50 = result["wakeup"]["p50_ms"]
    result["checks"] = [
        check(CHECK_SEQ, ratio, f">= {TARGET_SEQ_RATIO}", ratio >= TARGET_SEQ_RATIO),
        check(CHECK_WAKEUP, p50, f"< {TARGET_WAKEUP_P50_MS:g}", p50 < TARGET_WAKEUP_P50_MS),
    ]
    progress("postgres: done")
    return result


# -- reporting -------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    """The PostgreSQL tables (Markdown) and what they were measured on."""
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    scaling = result["scaling"]
    main = metric_table(
        [
            Row("(P1) raw psycopg commits/s", value("raw", "commits_per_s", ",.0f")),
            Row("(P1) raw commit time, µs", value("raw", "us_per_commit", ".0f")),
            Row(
                "(P1) sequential steps/s (run start → finish)",
                value("sequential", "steps_per_s", ",.0f"),
            ),
            Row("(P1) time per step, µs", value("sequential", "us_per_step", ".0f")),
            Row(
                "(P1) ratio to raw",
                value("ratios", "sequential_to_raw", ".2f"),
                f"≥ {TARGET_SEQ_RATIO}",
                CHECK_SEQ,
            ),
            Row(
                "(P1) wall steps/s (start → completion seen)",
                value("sequential", "wall_steps_per_s", ",.0f"),
            ),
            Row(
                f"(P2) creating {scaling['runs']:,} runs through the store, runs/s",
                value("scaling", "create_runs_per_s", ",.0f"),
            ),
            Row(
                "(P3) wake-up p50 / p99, ms (create_run returned → claimed)",
                pair("wakeup", "p50_ms", "p99_ms"),
                f"p50 < {TARGET_WAKEUP_P50_MS:g}",
                CHECK_WAKEUP,
            ),
            Row(
                "(P3) in-store p50 / p99, ms (created_at → started_at)",
                pair("wakeup", "store_p50_ms", "store_p99_ms"),
            ),
            Row("(P3) slowest wake-up, ms", value("wakeup", "max_ms", ".1f")),
        ],
        [("PostgreSQL", result)],
        result["checks"],
    )
    by_nodes = scaling["by_nodes"]
    throughput = markdown(
        [
            "nodes",
            "launch → all completed, s",
            "runs/s",
            "steps/s",
            "scaling",
            "first claim → last finish, s",
            "runs/s in that window",
            "scaling in that window",
        ],
        [
            [
                str(found["nodes"]),
                f"{found['seconds']:.2f}",
                f"{found['runs_per_s']:,.0f}",
                f"{found['steps_per_s']:,.0f}",
                f"{found['scaling']:.2f}",
                f"{found['store_seconds']:.2f}",
                f"{found['store_runs_per_s']:,.0f}",
                f"{found['store_scaling']:.2f}",
            ]
            for found in by_nodes
        ],
        numeric=7,
    )
    costs = markdown(
        [
            "nodes",
            "transactions per run",
            "steps per WAL sync",
            "node CPU per run, ms",
            "server CPU per run, ms",
            "CPU busy",
            "runs per node",
        ],
        [
            [
                str(found["nodes"]),
                f"{found['transactions_per_run']:.1f}",
                f"{found['steps_per_wal_sync']:.1f}",
                f"{found['nodes_cpu_ms_per_run']:.2f}",
                f"{found['server_cpu_ms_per_run']:.2f}",
                f"{found['cpu_busy_percent']:.0f} %",
                " / ".join(f"{n:,}" for n in found["runs_per_node"]),
            ]
            for found in by_nodes
        ],
        numeric=5,
    )
    server = result["server"]
    facts = (
        f"server: PostgreSQL {server['server_version']}, synchronous_commit"
        f" {server['synchronous_commit']}, fsync {server['fsync']} ({server['wal_sync_method']}),"
        f" shared_buffers {server['shared_buffers']}"
        + (f"; data on {server['data_disk']}" if "data_disk" in server else "")
    )
    return "\n".join(
        [
            main,
            "",
            f"(P2) {scaling['runs']:,} runs x {scaling['steps_per_run']} no-op steps:",
            "",
            throughput,
            "",
            costs,
            "",
            facts,
            cpu_line("PostgreSQL", result),
            "",
            *check_lines(result["checks"]),
        ]
    )
