"""Two versions of one app side by side: canary routing, and runs of a version whose nodes
are gone adopted by the other as `on_version_change` says."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.serve import PROJECT_ROOT, NodePool, ServeNode, wait_until
from tests.e2e.test_fleet import create_runs, scalar

APP = "tests/e2e/fleet_app.py:app"
FAST = ["--poll-interval", "0.1", "--lease-ttl", "1.5"]


@pytest.fixture
def pool() -> Iterator[NodePool]:
    with NodePool() as nodes:
        yield nodes


def node(
    pool: NodePool, url: str, tmp_path: Path, version: str, *args: str, policy: str = "resume"
) -> ServeNode:
    env = {"FLEET_APP_VERSION": version, "FLEET_ON_VERSION_CHANGE": policy}
    log = tmp_path / f"{version}-{len(pool.nodes)}.log"
    return pool.node(APP, url, log, args=[*FAST, *args], env=env)


def versions_json(url: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "nonstop", "versions", "--db", url, "--json"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_canary_takes_its_share_of_new_runs(pg_url: str, pool: NodePool, tmp_path: Path) -> None:
    runs = 400
    create_runs(pg_url, runs, steps=2, pause=0.0)
    canary = node(pool, pg_url, tmp_path, "v2", "--canary", "0.25")
    canary.start()
    canary.wait_ready()  # the canary takes only its slice, whoever else is there
    stable = node(pool, pg_url, tmp_path, "v1")
    stable.start()  # registers and sees the live canary before it claims anything
    stable.wait_ready()
    wait_until(
        lambda: scalar(pg_url, "SELECT count(*) FROM runs WHERE status = 'completed'") == runs,
        timeout=120,
        what="all runs completed",
        describe=stable.log_tail,
    )
    with psycopg.connect(pg_url) as conn:
        by_version: dict[str, int] = dict(
            conn.execute("SELECT app_version, count(*) FROM runs GROUP BY 1").fetchall()
        )
        pids = conn.execute(
            "SELECT r.app_version, s.payload FROM steps s JOIN runs r ON r.id = s.run_id"
        ).fetchall()
    share = by_version.get("v2", 0) / runs
    assert set(by_version) == {"v1", "v2"} and 0.17 <= share <= 0.33, by_version
    expected_pid = {"v1": str(stable.pid), "v2": str(canary.pid)}
    assert all(json.loads(p).split(":")[0] == expected_pid[v] for v, p in pids)
    summary = {row["version"]: row for row in versions_json(pg_url)}
    assert summary["v2"]["runs"] == {"completed": by_version["v2"]}
    assert len(summary["v1"]["nodes"]) == 1 and len(summary["v2"]["nodes"]) == 1  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("policy", ["pause", "resume"])
def test_runs_of_a_dead_version_are_adopted_by_policy(
    pg_url: str, pool: NodePool, tmp_path: Path, policy: str
) -> None:
    old = node(pool, pg_url, tmp_path, "v1")
    old.start()
    old.wait_ready()
    create_runs(pg_url, 6, steps=3, pause=1.0)
    wait_until(
        lambda: (
            scalar(pg_url, "SELECT count(*) FROM steps") >= 6
            and scalar(pg_url, "SELECT count(*) FROM runs WHERE status = 'running'") == 6
        ),
        timeout=30,
        what="v1 mid-way through every run",
        describe=old.log_tail,
    )
    old.kill()
    new = node(pool, pg_url, tmp_path, "v2", policy=policy)
    new.start()
    new.wait_ready()
    if policy == "pause":
        wait_until(
            lambda: scalar(pg_url, "SELECT count(*) FROM runs WHERE status = 'paused'") == 6,
            timeout=30,
            what="runs paused",
            describe=new.log_tail,
        )
        with psycopg.connect(pg_url) as conn:
            reasons = [r for (r,) in conn.execute("SELECT wait_reason FROM runs")]
        assert all("started under version v1" in r for r in reasons), reasons
        done = subprocess.run(
            [sys.executable, "-m", "nonstop", "resume", "job-00000", "--db", pg_url],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        finished = 1
    else:
        finished = 6
    wait_until(
        lambda: scalar(pg_url, "SELECT count(*) FROM runs WHERE status = 'completed'") == finished,
        timeout=60,
        what="adopted runs completed",
        describe=new.log_tail,
    )
    with psycopg.connect(pg_url) as conn:
        kinds = [
            k for (k,) in conn.execute("SELECT kind FROM incidents WHERE kind = 'version_change'")
        ]
        steps = conn.execute("SELECT count(*), count(DISTINCT (run_id, seq)) FROM steps").fetchone()
    assert len(kinds) == 6
    assert steps is not None and steps[0] == steps[1]  # no step recorded twice
