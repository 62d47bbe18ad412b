"""The examples work end to end (offline), as the README says."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

import nonstop
from nonstop import RunStatus
from tests.unit.test_durable_runs import query

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str, monkeypatch: pytest.MonkeyPatch, url: str) -> ModuleType:
    monkeypatch.setenv("NONSTOP_DATABASE_URL", url)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_pipeline_example_fans_out_waits_for_approval_and_hands_off(
    monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    example = load("pipeline", monkeypatch, db_url)
    app: nonstop.App = example.app
    try:
        with app.worker(poll_interval=0.02):
            handle = app.start("editor", {"topics": ["leases", "replay", "sagas", "budgets"]})
            deadline = time.monotonic() + 20
            while "approval" not in (handle.get().wait_reason or ""):  # children first
                assert time.monotonic() < deadline, handle.get().wait_reason
                time.sleep(0.02)
            assert handle.status() == RunStatus.WAITING
            assert "Publish the digest of 4 topics?" in (handle.get().wait_reason or "")
            app.signal(handle.run_id, "approval", True)
            result = handle.result(20)
            assert result["published"] is True
            deadline = time.monotonic() + 20
            while not query(
                app, "SELECT id FROM runs WHERE agent = 'publisher' AND status = 'completed'"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        children = query(app, "SELECT count(*) FROM runs WHERE parent_id = ?", handle.run_id)
        assert children == [(4,)]
        (publisher_id,) = query(app, "SELECT id FROM runs WHERE agent = 'publisher'")[0]
        assert publisher_id == f"publisher@evt:{result['event']}"
    finally:
        app.close()


def test_the_demo_example_runs_both_agents(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    example = load("demo", monkeypatch, db_url)
    app: nonstop.App = example.app
    try:
        with app.worker(poll_interval=0.02):
            research = app.start("researcher", {"topic": "leases"})
            triage = app.start("triage", {"tickets": 3, "pause": 0.05})
            assert research.result(30)["topic"] == "leases"
            assert sum(triage.result(30).values()) == 3
    finally:
        app.close()
