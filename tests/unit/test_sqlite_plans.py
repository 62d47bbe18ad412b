"""The hot SQLite queries use the index they were written for, whatever the data."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from nonstop.store import open_store
from nonstop.store.sqlite import SELECT_DUE, SELECT_NEXT_DUE


def test_claims_and_wake_ups_read_due_runs_only(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"
    store = open_store(f"sqlite:///{path}")

    async def create() -> None:
        await store.open()
        await store.close()

    asyncio.run(create())
    agents = json.dumps(["a", "b"])
    with sqlite3.connect(path) as conn:
        conn.execute("ANALYZE")  # statistics must not tempt it onto the agent index either
        params = {"now": 1.0, "agents": agents, "version": None, "fresh_from": 0.0,
                  "fresh_to": 1.0, "live": "[]", "limit": 10}  # fmt: skip
        for sql, args in ((SELECT_DUE, params), (SELECT_NEXT_DUE, (agents,))):
            plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "runs_due" in plan, plan
