"""Several `nonstop serve` nodes on one PostgreSQL database share the work, survive a
SIGKILL of one of them and a graceful stop of another, and never record a result twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from nonstop.store import NewRun, open_store
from tests.e2e.serve import NodePool, ServeNode, wait_until

APP = "tests/e2e/fleet_app.py:app"
RUNS = 2000
STEPS = 3


@pytest.fixture
def pool() -> Iterator[NodePool]:
    with NodePool() as nodes:
        yield nodes


def create_runs(url: str, count: int, **inputs: object) -> None:
    async def go() -> None:
        store = open_store(url)
        await store.open()
        try:
            for i in range(count):
                await store.create_run(NewRun(f"job-{i:05}", "job", dict(inputs)), 0.0)
        finally:
            await store.close()

    asyncio.run(go())


def scalar(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_nodes_share_2000_runs_through_a_kill_and_a_graceful_stop(
    pg_url: str, pool: NodePool, tmp_path: Path
) -> None:
    create_runs(pg_url, RUNS, steps=STEPS, pause=0.002)
    args = ["--poll-interval", "0.2", "--lease-ttl", "3", "--concurrency", "40"]
    nodes: list[ServeNode] = [
        pool.node(APP, pg_url, tmp_path / f"node{i}.log", args=args) for i in range(3)
    ]
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_ready()
    survivor, victim, leaver = nodes
    completed = "SELECT count(*) FROM runs WHERE status = 'completed'"

    def progress(at_least: int) -> bool:
        return scalar(pg_url, completed) >= at_least

    wait_until(
        lambda: progress(RUNS // 4), timeout=120, what="a quarter done", describe=survivor.log_tail
    )
    victim_pid = victim.pid
    victim.kill()
    wait_until(
        lambda: progress(RUNS // 2), timeout=120, what="half done", describe=survivor.log_tail
    )
    code, took = leaver.terminate(timeout=40)
    assert code == 0, leaver.log_tail()
    wait_until(lambda: progress(RUNS), timeout=180, what="all done", describe=survivor.log_tail)

    with psycopg.connect(pg_url) as conn:
        statuses: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM runs GROUP BY 1").fetchall()
        )
        assert statuses == {"completed": RUNS}
        per_run = conn.execute(
            "SELECT count(*), count(DISTINCT seq) FROM steps GROUP BY run_id"
        ).fetchall()
        assert len(per_run) == RUNS and set(per_run) == {(STEPS, STEPS)}
        recorded: dict[str, list[str]] = {}
        for run_id, payload in conn.execute("SELECT run_id, payload FROM steps ORDER BY seq"):
            recorded.setdefault(run_id, []).append(json.loads(payload))
        outputs: dict[str, str] = dict(conn.execute("SELECT id, output FROM runs").fetchall())
        recovered = conn.execute(
            "SELECT count(*) FROM incidents WHERE kind = 'recovered'"
        ).fetchone()
    # the handler of every run saw exactly the recorded results, in order
    for run_id, output in outputs.items():
        assert json.loads(output) == {"seen": recorded[run_id]}, run_id
    # every node did part of the work, and the killed node's runs were taken over
    workers = Counter(value.split(":")[0] for values in recorded.values() for value in values)
    assert len(workers) >= 3 and str(victim_pid) in workers, workers
    assert recovered is not None and recovered[0] >= 1
    print(
        f"steps per node pid: {dict(workers)}; recovered runs: {recovered[0]};"
        f" graceful stop took {took:.2f}s"
    )
