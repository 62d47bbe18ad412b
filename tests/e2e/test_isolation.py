"""Isolated runs execute in child processes under kernel limits; a child's death is
explained (oom with its peak RSS, signal, exit code) and the parent carries on."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import nonstop
from nonstop import RunStatus
from nonstop.isolation import memory_limits
from tests.cli.test_cli import cli_json
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
