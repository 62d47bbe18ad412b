"""Isolated runs execute in child processes under kernel limits; a child's death is
explained (oom with its peak RSS, signal, exit code) and the parent carries on."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import nonstop
from nonstop import RunStatus
from nonstop.isolation import memory_limits
from tests.cli.test_cli import cli_json
from tests.e2e.serve import DbReader, NodePool, ServeNode, diagnose, wait_until
from tests.unit.test_durable_runs import query, wait_status


@pytest.fixture
def app(db_url: str) -> Iterator[nonstop.App]:
    from tests.e2e.isolated_app import app as isolated

    isolated.database_url = db_url
    yield isolated
    isolated.close()


@pytest.mark.timeout(120)
def test_isolated_runs_work_and_deaths_are_explained(
    app: nonstop.App, caplog: pytest.LogCaptureFixture
) -> None:
    with app.worker(poll_interval=0.02):
        done = app.start("worker", {"n": 4}).result(60)
        assert done["total"] == 6 and done["pid"] != os.getpid()  # ran in a child
        health = cli_json(
            "health", "--app", "tests.e2e.isolated_app:app", "--db", str(app.database_url)
        )
        (node,) = health["nodes"]  # it says how this node limits memory, and why
        assert node["memory_limits"] == memory_limits().detail and node["state"] == "serving"
        assert node["memory_limits"].startswith(("cgroup v2 memory.max under", "RLIMIT_AS: "))
        hog = app.start("hog")
        quitter = app.start("quitter")
        suicidal = app.start("suicidal")
        for handle in (hog, quitter, suicidal):
            wait_status(handle, RunStatus.PAUSED, timeout=60)  # restarted once, escalated
        assert app.start("inline").result(10) == os.getpid()  # the parent is fine
    reasons = {h.run_id: h.get().wait_reason or "" for h in (hog, quitter, suicidal)}
    assert "oom: memory limit of 300 MB reached" in reasons[hog.run_id]
    assert "exit code 3" in reasons[quitter.run_id]
    assert "signal 9 (SIGKILL)" in reasons[suicidal.run_id]
    kinds = query(app, "SELECT run_id, kind, detail FROM incidents ORDER BY id")
    oom = [d for r, k, d in kinds if r == hog.run_id and k == "oom"]
    assert len(oom) == 2 and "peak RSS" in str(oom[0])  # each death recorded
    assert any(k == "escalated" for r, k, _ in kinds if r == hog.run_id)
    steps = query(app, "SELECT count(*) FROM steps WHERE run_id = ?", hog.run_id)
    assert steps == [(1,)]  # the checkpoint before the hog's death was kept, not repeated
    assert "oom" in caplog.text  # and it is in the logs, never a silent death


APP = "tests.e2e.isolated_app:app"


def isolated_child(node: ServeNode) -> psutil.Process:
    """The node's child process executing an isolated run (waits for it to appear)."""
    assert node.pid is not None
    found: list[psutil.Process] = []

    def spawned() -> bool:
        found[:] = [
            c
            for c in psutil.Process(node.pid).children()
            if "nonstop.isolation" in " ".join(c.cmdline())
        ]
        return bool(found)

    wait_until(spawned, timeout=30, what="an isolated child process", describe=node.log_tail)
    return found[0]


def serve_sleeper(
    tmp_path: Path, nodes: NodePool, run_id: str, ticks: int, *args: str
) -> tuple[ServeNode, DbReader, psutil.Process]:
    """A ready `serve` of the isolated app, a `sleeper` run of `ticks` steps, and its child
    process once some ticks are recorded."""
    url = f"sqlite:///{tmp_path / 'isolated.db'}"
    db = DbReader(tmp_path / "isolated.db")
    node = nodes.node(APP, url, tmp_path / "node.log", args=args)
    node.start()
    node.wait_ready()
    started = cli_json("run", "sleeper", "--app", APP, "--db", url, "--id", run_id,
                       "--input", json.dumps({"ticks": ticks}))  # fmt: skip
    assert started["run_id"] == run_id
    child = isolated_child(node)
    wait_until(lambda: db.step_count() >= 3, timeout=30, what="some ticks recorded")
    return node, db, child


def wait_for_one(node: ServeNode, db: DbReader, status: str) -> None:
    wait_until(
        lambda: db.statuses()[status] == 1,
        timeout=60,
        what=f"the run {status}",
        describe=lambda: diagnose(node, db),
    )


def ticks_recorded(db: DbReader, run_id: str) -> list[int]:
    return sorted(seq for (seq,) in db.rows("SELECT seq FROM steps WHERE run_id = ?", (run_id,)))


@pytest.mark.timeout(120)
def test_an_isolated_child_dies_with_its_node_and_its_run_resumes_once(
    tmp_path: Path, nodes: NodePool
) -> None:
    node, db, child = serve_sleeper(tmp_path, nodes, "long", 40, "--poll-interval", "0.05")
    node.kill()  # kill -9: no chance to stop the child itself
    # the kernel kills the orphan (it would otherwise go on checkpointing under a lease
    # that a restarted node takes over: the same step twice, at the same time)
    gone, _ = psutil.wait_procs([child], timeout=5)
    assert gone, f"the isolated child outlived its node\n{diagnose(node, db)}"
    node.start()
    node.wait_ready()
    wait_for_one(node, db, "completed")
    assert ticks_recorded(db, "long") == list(range(1, 41))  # every tick once, none lost


@pytest.mark.timeout(120)
def test_a_draining_node_lets_its_isolated_children_finish(tmp_path: Path, nodes: NodePool) -> None:
    node, db, child = serve_sleeper(tmp_path, nodes, "drained", 10, "--grace-period", "30")
    code, took = node.terminate(timeout=40)
    assert code == 0, diagnose(node, db)
    assert not child.is_running()
    # the child got the node's SIGTERM as "draining", not as a death: it finished the run
    assert db.rows("SELECT status FROM runs WHERE id = 'drained'") == [("completed",)], diagnose(
        node, db
    )
    kinds = [kind for (kind,) in db.rows("SELECT kind FROM incidents")]
    assert "signal" not in kinds and '"alert"' not in node.log_text(), diagnose(node, db)
    assert took < 30


@pytest.mark.timeout(120)
def test_a_pause_survives_a_kill_and_resume_finishes_the_run_once(
    tmp_path: Path, nodes: NodePool
) -> None:
    node, db, _ = serve_sleeper(tmp_path, nodes, "held", 30, "--poll-interval", "0.05")
    url = node.db_url
    asked = cli_json("pause", "held", "--db", url)
    assert asked["status"] in ("running", "paused")  # running: flagged for the boundary
    node.kill()  # before or after the boundary: the request is in the store either way
    node.start()
    node.wait_ready()
    wait_for_one(node, db, "paused")
    held = db.step_count()
    assert held < 30 and "paused on request" in str(db.rows("SELECT wait_reason FROM runs"))
    assert cli_json("resume", "held", "--db", url)["status"] == "pending"
    wait_for_one(node, db, "completed")
    assert ticks_recorded(db, "held") == list(range(1, 31))  # every tick once
