"""A node whose database goes away stays up and unready, then carries on when it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from nonstop.store import NewRun, open_store
from tests.e2e.proxy import CuttableProxy
from tests.e2e.serve import NodePool, wait_until

APP = "tests/e2e/fleet_app.py:app"


@pytest.fixture
def pool() -> Iterator[NodePool]:
    with NodePool() as nodes:
        yield nodes


def through(proxy: CuttableProxy, url: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))


def start_runs(url: str, count: int, pause: float) -> None:
    async def go() -> None:
        store = open_store(url)
        await store.open()
        try:
            for i in range(count):
                await store.create_run(NewRun(f"r{i}", "job", {"steps": 5, "pause": pause}), 0)
        finally:
            await store.close()

    asyncio.run(go())


def completed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()
        return 0 if row is None else int(row[0])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_database_cut_and_restored_while_serving(
    pg_url: str, pool: NodePool, tmp_path: Path
) -> None:
    target = urlsplit(pg_url)
    with CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        node = pool.node(
            APP,
            through(proxy, pg_url),
            tmp_path / "node.log",
            args=["--poll-interval", "0.1", "--lease-ttl", "2"],
        )
        node.start()
        node.wait_ready()
        start_runs(pg_url, 20, pause=0.3)
        wait_until(
            lambda: node.probe("ready") and completed(pg_url) < 20 and completed(pg_url) >= 0,
            timeout=10,
            what="runs under way",
        )
        proxy.cut()
        wait_until(
            lambda: not node.probe("ready"),
            timeout=15,
            what="unready while cut",
            describe=node.log_tail,
        )
        assert node.probe("live") and node.running  # up, just not ready
        proxy.restore()
        node.wait_ready(timeout=30)
        wait_until(
            lambda: completed(pg_url) == 20,
            timeout=60,
            what="all runs completed",
            describe=node.log_tail,
        )
    log = node.log_text()
    assert '"event": "listen_failed"' in log  # the cut was noticed and said in one line
    assert "Traceback" not in log


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_node_started_while_the_database_is_down_waits_for_it(
    pg_url: str, pool: NodePool, tmp_path: Path
) -> None:
    target = urlsplit(pg_url)
    with CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        proxy.cut()
        node = pool.node(
            APP, through(proxy, pg_url), tmp_path / "node.log", args=["--poll-interval", "0.1"]
        )
        node.start()
        wait_until(
            lambda: "store_unavailable" in node.log_text(),
            timeout=30,
            what="the outage reported",
            describe=node.log_tail,
        )
        assert node.running and not node.probe("startup") and not node.probe("ready")
        proxy.restore()
        node.wait_ready(timeout=60)
        start_runs(pg_url, 3, pause=0.0)
        wait_until(
            lambda: completed(pg_url) == 3,
            timeout=30,
            what="runs completed",
            describe=node.log_tail,
        )
    line = next(li for li in node.log_text().splitlines() if "store_unavailable" in li)
    assert "cannot connect" in line and "Traceback" not in node.log_text()
