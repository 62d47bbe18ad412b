"""The JSON API served by `nonstop serve`, exercised in-process against a real SQLite file.

The API's runtime has no executor of its own: runs are executed, when a test needs them
to be, by the App's embedded worker, which opens its own store on the same database file
(as a second node would).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Route

import nonstop
from nonstop import Retry
from nonstop.api import NodeState, create_api
from nonstop.app import Runtime
from nonstop.store import Store, open_store

with warnings.catch_warnings():
    # Starlette warns at import time when its test client runs on httpx rather than httpx2.
    warnings.filterwarnings(
        "ignore", message=r"Using `httpx` with", category=StarletteDeprecationWarning
    )
    from starlette.testclient import TestClient

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENTS = ("greet", "flaky", "tally")
FINISHED = ("completed", "dead", "cancelled")
TABLES = ("runs", "steps", "step_attempts", "incidents", "signals", "events")


@dataclass
class Control:
    """Lets a test steer the agents: make `flaky` fail or succeed, count its step."""

    fail: bool = True
    prepared: int = 0

    def prepare(self) -> str:
        self.prepared += 1
        return "prepared"


def declare_agents(app: nonstop.App, control: Control) -> None:
    async def upper(text: str) -> str:
        return text.upper()

    def exclaim(text: str) -> str:
        return text + "!"

    @app.agent
    async def greet(ctx: nonstop.Context, name: str) -> str:
        loud: str = await ctx.step(upper, name, name="upper")
        done: str = await ctx.step(exclaim, loud, name="exclaim")
        return done

    @app.agent(retry=Retry(max_attempts=1))
    async def flaky(ctx: nonstop.Context) -> str:
        await ctx.step(control.prepare, name="prepare")
        if control.fail:
            raise RuntimeError("boom")
        return "recovered"

    @app.agent(timeout=5.0)
    def tally(ctx: nonstop.SyncContext, n: int = 0) -> int:
        return n + 1


@dataclass
class Harness:
    app: nonstop.App
    runtime: Runtime
    store: Store
    state: NodeState
    api: Starlette
    client: TestClient
    db_path: Path
    control: Control = field(default_factory=Control)
    token: str | None = None

    def worker(self) -> AbstractContextManager[nonstop.App]:
        """The App's embedded worker, on its own store over the same file."""
        return self.app.worker(poll_interval=0.02, lease_ttl=3.0, grace_period=5.0)

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db_path, timeout=10.0)) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str, *params: object) -> None:
        with closing(sqlite3.connect(self.db_path, timeout=10.0)) as conn, conn:
            conn.execute(sql, params)

    def count(self, table: str = "runs") -> int:
        rows = self.query(f"SELECT count(*) FROM {table}")
        return int(rows[0][0])

    def rows_with_id(self, run_id: str) -> int:
        return int(self.query("SELECT count(*) FROM runs WHERE id = ?", run_id)[0][0])

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table: a request that must not write leaves this unchanged."""
        return {table: self.query(f"SELECT * FROM {table} ORDER BY 1, 2") for table in TABLES}

    def start(self, agent: str, run_id: str, input: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"agent": agent, "id": run_id}
        if input is not None:
            body["input"] = input
        response = self.client.post("/api/runs", json=body, headers=self.headers)
        assert response.status_code == 202, response.text

    @property
    def headers(self) -> dict[str, str]:
        return AUTH if self.token else {}

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/runs/{path_id(run_id)}", headers=self.headers)
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail

    def wait_status(self, run_id: str, *wanted: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the API until the run reaches one of `wanted` (or fail at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            detail = self.run(run_id)
            if detail["status"] in wanted:
                return detail
            assert time.monotonic() < deadline, f"run {run_id} is {detail['status']}: {detail}"
            time.sleep(0.01)


HarnessFactory = Callable[..., Harness]


def path_id(run_id: str) -> str:
    """A run id as one URL path segment for the test client (`/`, `?`, `%`, `.`, `..`).

    Encoded twice: Starlette's TestClient unquotes again the path that httpx has already
    decoded, so the app sees it decoded twice (a real server decodes once). Dots are
    encoded so that an id `.` or `..` is not taken for a dot segment."""
    return quote(quote(run_id, safe="").replace(".", "%2E"), safe="")


@pytest.fixture
def make_harness(db_url: str) -> Iterator[HarnessFactory]:
    """Build the API as the node does, over a real SQLite file; all torn down at the end."""
    with ExitStack() as stack:

        def build(
            *,
            token: str | None = None,
            state: NodeState | None = None,
            raise_server_exceptions: bool = True,
        ) -> Harness:
            app = nonstop.App("api-test", db_url)
            stack.callback(app.close)
            control = Control()
            declare_agents(app, control)
            store = open_store(db_url)
            asyncio.run(store.open())
            stack.callback(lambda: asyncio.run(store.close()))
            runtime = Runtime(app, store)
            node_state = state if state is not None else NodeState(started=True)
            api = create_api(runtime, node_state, token=token)
            client = stack.enter_context(
                TestClient(api, raise_server_exceptions=raise_server_exceptions)
            )

            def stop_executor() -> None:  # a test may give the API runtime an executor
                if runtime.executor is not None and client.portal is not None:
                    client.portal.call(runtime.stop_worker, 5.0)

            stack.callback(stop_executor)
            return Harness(
                app=app,
                runtime=runtime,
                store=store,
                state=node_state,
                api=api,
                client=client,
                db_path=Path(db_url.removeprefix("sqlite:///")),
                control=control,
                token=token,
            )

        yield build


@pytest.fixture
def harness(make_harness: HarnessFactory) -> Harness:
    return make_harness()


def assert_error(response: Any, status: int) -> str:
    """A client error: the given 4xx status and a JSON body `{"error": "<message>"}`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    message = body["error"]
    assert isinstance(message, str)
    assert message
    return message


# -- starting runs ------------------------------------------------------------------------


def test_start_run_returns_202_with_id_status_and_url(harness: Harness) -> None:
    response = harness.client.post(
        "/api/runs", json={"agent": "greet", "input": {"name": "ada"}, "id": "first"}
    )
    assert response.status_code == 202
    assert response.json() == {
        "run_id": "first",
        "status": "pending",
        "created": True,
        "url": "/api/runs/first",
    }
    assert harness.rows_with_id("first") == 1
    followed = harness.client.get(response.json()["url"])
    assert followed.status_code == 200
    assert followed.json()["run_id"] == "first"
    assert followed.json()["input"] == {"name": "ada"}


def test_start_run_without_id_gets_a_fresh_id_each_time(harness: Harness) -> None:
    first = harness.client.post("/api/runs", json={"agent": "tally"})
    second = harness.client.post("/api/runs", json={"agent": "tally", "input": None})
    assert first.status_code == second.status_code == 202
    assert first.json()["run_id"] != second.json()["run_id"]
    assert harness.count() == 2
    assert harness.run(first.json()["run_id"])["input"] == {}


def test_same_id_in_body_returns_the_existing_run(harness: Harness) -> None:
    body = {"agent": "greet", "input": {"name": "ada"}, "id": "once"}
    first = harness.client.post("/api/runs", json=body)
    again = harness.client.post("/api/runs", json={**body, "input": {"name": "bob"}})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["run_id"] == "once"
    assert again.json()["created"] is False
    assert again.json()["url"] == "/api/runs/once"
    assert harness.rows_with_id("once") == 1
    assert harness.count() == 1
    assert harness.run("once")["input"] == {"name": "ada"}  # the first request's input stays


def test_idempotency_key_header_works_as_the_id(harness: Harness) -> None:
    headers = {"Idempotency-Key": "key-1"}
    body = {"agent": "greet", "input": {"name": "ada"}}
    first = harness.client.post("/api/runs", json=body, headers=headers)
    again = harness.client.post("/api/runs", json=body, headers=headers)
    assert first.status_code == 202
    assert first.json()["run_id"] == "key-1"
    assert again.status_code == 200
    assert again.json() == {**first.json(), "created": False}
    # the header and the body name the same run
    by_body = harness.client.post("/api/runs", json={**body, "id": "key-1"})
    assert by_body.status_code == 200
    assert by_body.json()["run_id"] == "key-1"
    assert harness.count() == 1


def test_id_in_body_wins_over_the_header(harness: Harness) -> None:
    response = harness.client.post(
        "/api/runs",
        json={"agent": "greet", "input": {"name": "a"}, "id": "from-body"},
        headers={"Idempotency-Key": "from-header"},
    )
    assert response.status_code == 202
    assert response.json()["run_id"] == "from-body"
    assert harness.rows_with_id("from-header") == 0


def test_concurrent_starts_with_one_id_create_one_run(harness: Harness) -> None:
    """Threads posting one id through the API race the App starting it through its own
    store on the same file: exactly one run exists and at most one request created it."""
    barrier = threading.Barrier(9)

    def post() -> tuple[int, str]:
        barrier.wait(timeout=10)
        response = harness.client.post(
            "/api/runs", json={"agent": "greet", "input": {"name": "x"}, "id": "race"}
        )
        return response.status_code, response.json()["run_id"]

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post) for _ in range(8)]
        barrier.wait(timeout=10)
        handle = harness.app.start("greet", {"name": "x"}, id="race")
        answers = [future.result(timeout=30) for future in futures]
    assert handle.run_id == "race"
    assert {run_id for _, run_id in answers} == {"race"}
    statuses = sorted(status for status, _ in answers)
    assert statuses in ([200] * 8, [200] * 7 + [202])
    assert harness.count() == 1


# -- reading runs -------------------------------------------------------------------------


def test_list_runs_filters_by_agent_and_status_newest_first(harness: Harness) -> None:
    for n in range(1, 4):
        harness.start("greet", f"g{n}", {"name": str(n)})
    harness.start("tally", "t1")
    harness.start("tally", "t2")
    cancelled = harness.client.post("/api/runs/g2/cancel")
    assert cancelled.status_code == 200

    def ids(query: str) -> list[str]:
        response = harness.client.get(f"/api/runs{query}")
        assert response.status_code == 200, response.text
        found = response.json()
        assert isinstance(found, list)
        for item in found:
            assert item["why"]  # every run says what it is doing
        return [item["run_id"] for item in found]

    assert ids("") == ["t2", "t1", "g3", "g2", "g1"]
    assert ids("?agent=greet") == ["g3", "g2", "g1"]
    assert ids("?agent=tally") == ["t2", "t1"]
    assert ids("?agent=nobody") == []
    assert ids("?status=cancelled") == ["g2"]
    assert ids("?agent=greet&status=pending") == ["g3", "g1"]
    assert ids("?status=completed") == []
    assert ids("?limit=2") == ["t2", "t1"]
    assert ids("?agent=greet&limit=1") == ["g3"]
    assert ids("?limit=0") == ["t2", "t1", "g3", "g2", "g1"]  # 0 means all
    assert ids("?agent=&status=") == ["t2", "t1", "g3", "g2", "g1"]  # empty means no filter

    pending = harness.client.get("/api/runs?agent=tally").json()[0]
    assert pending["status"] == "pending"
    assert pending["agent"] == "tally"
    assert pending["why"].startswith("pending")
    assert pending["attempt"] == 1


def test_completed_run_shows_its_steps_output_and_why(harness: Harness) -> None:
    harness.start("greet", "done", {"name": "ada"})
    assert harness.run("done")["steps"] == []
    with harness.worker():
        detail = harness.wait_status("done", *FINISHED)
    assert detail["status"] == "completed"
    assert detail["output"] == "ADA!"
    assert detail["error"] is None
    assert detail["why"].startswith("completed at ")
    assert detail["finished_at"] is not None
    steps = detail["steps"]
    assert [(s["seq"], s["name"], s["status"], s["result"]) for s in steps] == [
        (1, "upper", "completed", "ADA"),
        (2, "exclaim", "completed", "ADA!"),
    ]
    assert all(s["error"] is None and s["attempts"] == 1 for s in steps)
    assert detail["attempts"] == []
    assert detail["incidents"] == []
    # the list shows the same run the same way, without the steps
    listed = harness.client.get("/api/runs?status=completed").json()
    assert [r["run_id"] for r in listed] == ["done"]
    assert listed[0]["output"] == "ADA!"
    # a sync agent runs too
    harness.start("tally", "sync", {"n": 41})
    with harness.worker():
        assert harness.wait_status("sync", *FINISHED)["output"] == 42


# -- operator verbs -----------------------------------------------------------------------


def test_cancel_a_pending_run(harness: Harness) -> None:
    harness.start("greet", "to-cancel", {"name": "x"})
    response = harness.client.post("/api/runs/to-cancel/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["run_id"] == "to-cancel"
    assert body["status"] == "cancelled"
    assert body["why"].startswith("cancelled at ")
    assert harness.query("SELECT status FROM runs WHERE id = 'to-cancel'") == [("cancelled",)]
    again = harness.client.post("/api/runs/to-cancel/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    # a worker never picks it up; a run started after it completes, so the worker did look
    harness.start("greet", "after", {"name": "y"})
    with harness.worker():
        harness.wait_status("after", *FINISHED)
    assert harness.run("to-cancel")["status"] == "cancelled"
    assert harness.run("to-cancel")["steps"] == []


def test_cancel_a_finished_run_leaves_it_as_it_is(harness: Harness) -> None:
    harness.start("tally", "finished")
    with harness.worker():
        harness.wait_status("finished", *FINISHED)
    before = harness.snapshot()
    response = harness.client.post("/api/runs/finished/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert harness.snapshot()["runs"] == before["runs"]


def test_pause_a_pending_run_then_resume_it(harness: Harness) -> None:
    harness.start("greet", "to-pause", {"name": "x"})
    response = harness.client.post("/api/runs/to-pause/pause")
    assert response.status_code == 200
    assert response.json()["status"] == "paused"
    assert "nonstop resume" in response.json()["why"]
    assert harness.client.post("/api/runs/to-pause/pause").json()["status"] == "paused"
    resumed = harness.client.post("/api/runs/to-pause/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "pending"
    with harness.worker():
        harness.wait_status("to-pause", *FINISHED)
    assert harness.run("to-pause")["status"] == "completed"
    before = harness.snapshot()
    message = assert_error(harness.client.post("/api/runs/to-pause/pause"), 409)
    assert "nothing to pause" in message
    assert harness.snapshot() == before


def test_resume_a_finished_run_is_409(harness: Harness) -> None:
    harness.start("greet", "not-paused", {"name": "x"})
    assert harness.client.post("/api/runs/not-paused/cancel").json()["status"] == "cancelled"
    before = harness.snapshot()
    message = assert_error(harness.client.post("/api/runs/not-paused/resume"), 409)
    assert "not-paused" in message
    assert "cancelled" in message
    assert harness.snapshot() == before


def test_resume_a_paused_run(harness: Harness) -> None:
    harness.start("greet", "parked", {"name": "zoe"})
    # The API cannot pause a run yet: park it the way a policy would, in the database.
    harness.execute(
        "UPDATE runs SET status = 'paused', due_at = NULL, wait_reason = ? WHERE id = ?",
        "paused: escalated for a test",
        "parked",
    )
    paused = harness.run("parked")
    assert paused["status"] == "paused"
    assert paused["why"] == "paused: escalated for a test"
    response = harness.client.post("/api/runs/parked/resume")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    with harness.worker():
        detail = harness.wait_status("parked", *FINISHED)
    assert detail["status"] == "completed"
    assert detail["output"] == "ZOE!"
    assert_error(harness.client.post("/api/runs/parked/resume"), 409)


def test_dead_run_is_listed_in_the_dlq_and_replayed(harness: Harness) -> None:
    harness.start("tally", "healthy")
    harness.start("flaky", "doomed")
    with harness.worker():
        dead = harness.wait_status("doomed", *FINISHED)
        harness.wait_status("healthy", *FINISHED)
    assert dead["status"] == "dead"
    assert dead["error"]["message"] == "boom"
    assert "RuntimeError" in dead["error"]["type"]
    assert "dead-letter queue" in dead["why"]
    assert [(s["name"], s["status"]) for s in dead["steps"]] == [("prepare", "completed")]
    assert harness.control.prepared == 1

    dlq = harness.client.get("/api/dlq")
    assert dlq.status_code == 200
    assert [(r["run_id"], r["status"]) for r in dlq.json()] == [("doomed", "dead")]
    assert harness.client.get("/api/dlq?limit=0").json() == dlq.json()
    assert harness.client.get("/api/runs?status=dead").json()[0]["run_id"] == "doomed"

    harness.control.fail = False
    replayed = harness.client.post("/api/dlq/doomed/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["run_id"] == "doomed"
    assert replayed.json()["status"] == "pending"
    assert replayed.json()["attempt"] == 2
    assert replayed.json()["error"] is None
    assert harness.client.get("/api/dlq").json() == []
    # replaying it again while it is pending is a conflict, and changes nothing
    before = harness.snapshot()
    assert "not dead" in assert_error(harness.client.post("/api/dlq/doomed/replay"), 409)
    assert harness.snapshot() == before

    with harness.worker():
        detail = harness.wait_status("doomed", *FINISHED)
    assert detail["status"] == "completed"
    assert detail["output"] == "recovered"
    assert detail["attempt"] == 2
    assert harness.control.prepared == 1  # resumed from its checkpoint: not prepared twice
    assert_error(harness.client.post("/api/dlq/doomed/replay"), 409)
    assert_error(harness.client.post("/api/dlq/healthy/replay"), 409)
    assert harness.run("healthy")["status"] == "completed"


def test_list_agents(harness: Harness) -> None:
    response = harness.client.get("/api/agents")
    assert response.status_code == 200
    agents = {a["name"]: a for a in response.json()}
    assert set(agents) == set(AGENTS)
    assert agents["greet"] == {
        "name": "greet",
        "kind": "async",
        "timeout": None,
        "retry": {"max_attempts": 3},
        "tools": [],
        "isolation": "inline",
        "heartbeat_timeout": None,
        "max_steps": None,
        "max_repeats": None,
    }
    assert agents["flaky"]["retry"] == {"max_attempts": 1}
    assert agents["tally"]["kind"] == "sync"
    assert agents["tally"]["timeout"] == 5.0


def test_index_names_the_app_and_its_agents(harness: Harness) -> None:
    response = harness.client.get("/")
    assert response.status_code == 200
    assert response.json() == {
        "app": "api-test",
        "agents": sorted(AGENTS),
        "api": "/openapi.json",
    }


# -- probes -------------------------------------------------------------------------------


def probe(harness: Harness, name: str) -> tuple[int, dict[str, Any]]:
    response = harness.client.get(f"/healthz/{name}")
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    if response.status_code == 200:
        assert body == {"status": "ok"}
    else:
        assert response.status_code == 503
        assert body["status"] == "fail"
        assert isinstance(body["reason"], str)
        assert body["reason"]
    return response.status_code, body


def test_probes_of_a_started_node(harness: Harness) -> None:
    assert probe(harness, "startup")[0] == 200
    assert probe(harness, "ready")[0] == 200
    # This runtime executes nothing: a started node without an executor is not live.
    assert probe(harness, "live") == (503, {"status": "fail", "reason": "no executor"})


def test_probes_of_a_starting_node(make_harness: HarnessFactory) -> None:
    harness = make_harness(state=NodeState(started=False))
    assert probe(harness, "startup") == (503, {"status": "fail", "reason": "starting"})
    assert probe(harness, "ready") == (503, {"status": "fail", "reason": "starting"})
    assert probe(harness, "live")[0] == 200  # liveness must not kill a node still starting
    harness.state.started = True  # the node flips its state: the probes follow
    assert probe(harness, "startup")[0] == 200
    assert probe(harness, "ready")[0] == 200


def test_probes_of_a_draining_node(make_harness: HarnessFactory) -> None:
    harness = make_harness(state=NodeState(started=True, draining=True))
    assert probe(harness, "ready") == (503, {"status": "fail", "reason": "draining"})
    assert probe(harness, "startup")[0] == 200
    harness.state.draining = False
    assert probe(harness, "ready")[0] == 200
    harness.state.draining = True
    assert probe(harness, "ready")[1]["reason"] == "draining"


def test_liveness_follows_the_executor_loop(harness: Harness) -> None:
    # Like the node: the executor runs on the event loop that serves the API.
    portal = harness.client.portal
    assert portal is not None
    portal.call(functools.partial(harness.runtime.start_worker, poll_interval=0.02))
    assert probe(harness, "live")[0] == 200
    harness.state.live_within = -1.0  # any silence is now too long
    status, body = probe(harness, "live")
    assert status == 503
    assert body["reason"].startswith("executor loop silent for")
    harness.state.live_within = 10.0
    assert probe(harness, "live")[0] == 200
    # a run started through the API is executed by this executor, woken at once
    harness.start("greet", "local", {"name": "lo"})
    assert harness.wait_status("local", *FINISHED)["output"] == "LO!"


def test_readiness_fails_when_the_store_is_unreachable(harness: Harness) -> None:
    asyncio.run(harness.store.close())
    status, body = probe(harness, "ready")
    assert status == 503
    assert body["reason"].startswith("store unreachable")


def test_store_failure_is_a_503_not_a_client_error(make_harness: HarnessFactory) -> None:
    harness = make_harness(raise_server_exceptions=False)
    asyncio.run(harness.store.close())
    for method, url in [("POST", "/api/runs"), ("GET", "/api/runs"), ("GET", "/api/runs/x")]:
        response = harness.client.request(method, url, json={"agent": "tally"})
        assert response.status_code == 503, (method, url, response.text)
        assert isinstance(response.json()["error"], str)
    assert harness.count() == 0


# -- OpenAPI ------------------------------------------------------------------------------


def test_openapi_document(harness: Harness) -> None:
    response = harness.client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    paths = doc["paths"]
    assert set(paths["/api/runs"]) == {"get", "post"}
    assert "requestBody" in paths["/api/runs"]["post"]
    # every API route served is documented, with the methods it serves
    served: dict[str, set[str]] = {}
    for route in harness.api.routes:
        assert isinstance(route, Route)
        if route.path in ("/", "/openapi.json"):
            continue
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        served.setdefault(route.path.replace(":path}", "}"), set()).update(methods)
    for path, methods in served.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, methods)
    # each operation has responses, and every $ref points at a defined schema
    schemas = doc["components"]["schemas"]
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for operations in paths.values():
        for operation in operations.values():
            assert operation["responses"]
    collect(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas
    assert schemas["Error"]["required"] == ["error"]


# -- bad input ----------------------------------------------------------------------------

BAD_STARTS: list[tuple[str, bytes, int]] = [
    ("malformed JSON", b'{"agent": "greet",', 400),
    ("not UTF-8", b'{"agent": "gr\xe9et"}', 400),
    ("whitespace only", b"   ", 400),
    ("JSON array", b'[{"agent": "greet"}]', 400),
    ("JSON string", b'"greet"', 400),
    ("JSON null", b"null", 400),
    ("JSON number", b"42", 400),
    (
        "integer too long to parse",
        b'{"agent": "greet", "input": {"n": 1' + b"0" * 5000 + b"}}",
        400,
    ),
    ("missing agent", b'{"input": {"name": "x"}}', 422),
    ("empty object", b"{}", 422),
    ("empty body", b"", 422),
    ("agent not a string", b'{"agent": ["greet"]}', 422),
    ("agent null", b'{"agent": null}', 422),
    ("unknown agent", b'{"agent": "nobody"}', 422),
    ("agent in another case", b'{"agent": "GREET"}', 422),
    ("input a list", b'{"agent": "greet", "input": [1, 2]}', 422),
    ("input a string", b'{"agent": "greet", "input": "name"}', 422),
    ("input a number", b'{"agent": "greet", "input": 3}', 422),
    ("input with NaN", b'{"agent": "greet", "input": {"name": NaN}}', 422),
    ("input with Infinity", b'{"agent": "greet", "input": {"x": [-Infinity]}}', 422),
    ("id a number", b'{"agent": "greet", "id": 7}', 422),
    ("id an object", b'{"agent": "greet", "id": {"a": 1}}', 422),
    ("id blank", b'{"agent": "greet", "id": "   "}', 422),
]


@pytest.mark.parametrize(
    ("body", "status"),
    [pytest.param(body, status, id=name) for name, body, status in BAD_STARTS],
)
def test_bad_start_requests_are_4xx_and_write_nothing(
    harness: Harness, body: bytes, status: int
) -> None:
    harness.start("greet", "existing", {"name": "x"})
    before = harness.snapshot()
    response = harness.client.post(
        "/api/runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, status)
    assert harness.snapshot() == before


def test_unknown_agent_error_names_the_known_ones(harness: Harness) -> None:
    message = assert_error(harness.client.post("/api/runs", json={"agent": "nobody"}), 422)
    assert "nobody" in message
    assert "greet" in message
    assert harness.count() == 0


BAD_REQUESTS: list[tuple[str, str, str, int]] = [
    ("get unknown run", "GET", "/api/runs/nope", 404),
    ("get unknown run with slash", "GET", "/api/runs/no/such/run", 404),
    ("cancel unknown run", "POST", "/api/runs/nope/cancel", 404),
    ("resume unknown run", "POST", "/api/runs/nope/resume", 404),
    ("pause unknown run", "POST", "/api/runs/nope/pause", 404),
    ("replay unknown run", "POST", "/api/dlq/nope/replay", 404),
    ("bad status filter", "GET", "/api/runs?status=bogus", 400),
    ("status filter in capitals", "GET", "/api/runs?status=PENDING", 400),
    ("negative limit", "GET", "/api/runs?limit=-1", 400),
    ("limit not a number", "GET", "/api/runs?limit=abc", 400),
    ("limit a float", "GET", "/api/runs?limit=1.5", 400),
    ("empty limit", "GET", "/api/runs?limit=", 400),
    ("negative dlq limit", "GET", "/api/dlq?limit=-1", 400),
    ("dlq limit not a number", "GET", "/api/dlq?limit=abc", 400),
    ("unknown route", "GET", "/nope", 404),
    ("unknown api route", "GET", "/api/nope", 404),
    ("unknown probe", "GET", "/healthz/nope", 404),
    ("unknown verb on a run", "POST", "/api/runs/existing/explode", 405),
    ("delete the runs", "DELETE", "/api/runs", 405),
    ("put a run", "PUT", "/api/runs/existing", 405),
    ("get a replay", "GET", "/api/dlq/existing/replay", 405),
    ("post the agents", "POST", "/api/agents", 405),
    ("post the dlq", "POST", "/api/dlq", 405),
    ("patch a probe", "PATCH", "/healthz/ready", 405),
]


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [pytest.param(method, url, status, id=name) for name, method, url, status in BAD_REQUESTS],
)
def test_bad_requests_are_4xx_json_and_write_nothing(
    harness: Harness, method: str, url: str, status: int
) -> None:
    harness.start("greet", "existing", {"name": "x"})
    before = harness.snapshot()
    response = harness.client.request(method, url)
    assert_error(response, status)
    assert harness.snapshot() == before


def test_not_found_errors_name_the_run(harness: Harness) -> None:
    for method, url in [
        ("GET", "/api/runs/a%2Fb%3Fc"),
        ("POST", "/api/runs/a%2Fb%3Fc/cancel"),
        ("POST", "/api/runs/a%2Fb%3Fc/resume"),
        ("POST", "/api/dlq/a%2Fb%3Fc/replay"),
    ]:
        message = assert_error(harness.client.request(method, url), 404)
        assert "a/b?c" in message
    assert harness.count() == 0


def test_run_ids_with_slashes_and_unicode_are_addressable(harness: Harness) -> None:
    ids = ["a/b", "x/cancel", "y/resume/", "日本語/🙂", "sp ace", "50%", "q?x#y", ".", ".."]
    for run_id in ids:
        harness.start("greet", run_id, {"name": "x"})
    for run_id in ids:
        assert harness.run(run_id)["run_id"] == run_id
    assert harness.rows_with_id("x") == 0  # "x/cancel" started a run, cancelled nothing
    cancelled = harness.client.post(f"/api/runs/{path_id('x/cancel')}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["run_id"] == "x/cancel"
    assert cancelled.json()["status"] == "cancelled"
    assert harness.run("a/b")["status"] == "pending"
    assert harness.count() == len(ids)


# -- auth ---------------------------------------------------------------------------------

PROTECTED: list[tuple[str, str]] = [
    ("GET", "/"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/existing"),
    ("POST", "/api/runs/existing/cancel"),
    ("POST", "/api/runs/existing/resume"),
    ("GET", "/api/dlq"),
    ("POST", "/api/dlq/existing/replay"),
    ("GET", "/api/agents"),
    ("GET", "/api/nope"),
]
AUTHORISED_STATUS = [200, 200, 200, 200, 409, 200, 409, 200, 404]
WRONG_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer secretx"},
    {"Authorization": "Bearer secre"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"X-Api-Token": TOKEN},
]


def test_api_needs_the_bearer_token(make_harness: HarnessFactory) -> None:
    harness = make_harness(token=TOKEN)
    harness.start("greet", "existing", {"name": "x"})
    before = harness.snapshot()
    for headers in WRONG_CREDENTIALS:
        for method, url in PROTECTED:
            response = harness.client.request(method, url, headers=headers)
            assert_error(response, 401)
        start = harness.client.post("/api/runs", json={"agent": "greet"}, headers=headers)
        assert_error(start, 401)
    assert harness.snapshot() == before
    for (method, url), status in zip(PROTECTED, AUTHORISED_STATUS, strict=True):
        response = harness.client.request(method, url, headers=AUTH)
        assert response.status_code == status, (method, url, response.text)
    lower = harness.client.get("/api/runs", headers={"Authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200  # the scheme is case-insensitive
    started = harness.client.post("/api/runs", json={"agent": "tally", "id": "t"}, headers=AUTH)
    assert started.status_code == 202


def test_probes_and_openapi_stay_open_with_a_token(make_harness: HarnessFactory) -> None:
    harness = make_harness(token=TOKEN)
    for name in ("startup", "ready"):
        assert harness.client.get(f"/healthz/{name}").status_code == 200
    assert harness.client.get("/healthz/live").status_code == 503  # no executor: see above
    response = harness.client.get("/openapi.json", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 200
    assert "/api/runs" in response.json()["paths"]


def test_without_a_token_the_api_is_open(harness: Harness) -> None:
    assert harness.client.get("/api/runs").status_code == 200
    response = harness.client.get("/api/runs", headers={"Authorization": "Bearer whatever"})
    assert response.status_code == 200


# -- random input -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: Python's json reads and writes them
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
tricky_ids = st.lists(
    st.sampled_from(["/", ".", "..", "%", "%2F", "?", "#", "&", " ", "\x00", "é", "日本", "🙂"])
    | st.text(max_size=4),
    max_size=6,
).map("".join)
run_ids = st.text(max_size=30) | tricky_ids
agents = st.sampled_from(AGENTS) | st.text(max_size=10) | json_values
inputs = st.dictionaries(st.text(max_size=10), json_values, max_size=4) | json_values
start_bodies = st.fixed_dictionaries(
    {"agent": agents}, optional={"input": inputs, "id": run_ids | json_values}
)
raw_bodies = (
    start_bodies.map(lambda body: json.dumps(body).encode())
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=40)
)
idempotency_keys = st.none() | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20
)


def test_random_start_requests_never_fail_with_500(make_harness: HarnessFactory) -> None:
    """Whatever is posted: never a 500, always a JSON answer, and a row is written exactly
    when the answer says a run was created."""
    harness = make_harness(raise_server_exceptions=False)
    client = harness.client

    @settings(max_examples=100, deadline=None, database=None)
    @given(raw=raw_bodies, key=idempotency_keys, probe_id=run_ids)
    def check(raw: bytes, key: str | None, probe_id: str) -> None:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        before = harness.count()
        response = client.post("/api/runs", content=raw, headers=headers)
        assert response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        after = harness.count()
        try:
            sent: Any = json.loads(raw) if raw else {}  # an empty body reads as {}
        except ValueError:
            sent = None
        if not isinstance(sent, dict):
            assert response.status_code == 400
        elif sent.get("agent") not in AGENTS:
            assert response.status_code == 422
        if response.status_code in (200, 202):
            created = response.status_code == 202
            assert body["created"] is created
            assert body["status"] == "pending"  # nothing executes runs here
            assert after == before + (1 if created else 0)
            run_id = body["run_id"]
            assert isinstance(run_id, str)
            assert run_id.strip()
            if "\n" not in run_id:  # see test_run_id_with_a_newline_is_addressable
                assert harness.run(run_id)["run_id"] == run_id
        else:
            assert 400 <= response.status_code < 500
            assert isinstance(body["error"], str)
            assert after == before
        # any id on any verb: a JSON answer, never a 500
        for method, url in [
            ("GET", f"/api/runs/{path_id(probe_id)}"),
            ("POST", f"/api/runs/{path_id(probe_id)}/resume"),
            ("POST", f"/api/dlq/{path_id(probe_id)}/replay"),
        ]:
            answer = client.request(method, url)
            assert answer.status_code < 500, (method, url, answer.text)
            assert isinstance(answer.json(), dict)

    check()


# -- known defects (strict xfail: each passes once its bug is fixed) ----------------------


def test_lone_surrogate_in_run_id_is_a_4xx(make_harness: HarnessFactory) -> None:
    harness = make_harness(raise_server_exceptions=False)
    response = harness.client.post("/api/runs", content=b'{"agent": "greet", "id": "\\ud800"}')
    assert_error(response, 422)
    assert harness.count() == 0


def test_lone_surrogate_in_input_does_not_break_reads(make_harness: HarnessFactory) -> None:
    harness = make_harness(raise_server_exceptions=False)
    response = harness.client.post(
        "/api/runs", content=b'{"agent": "greet", "id": "s", "input": {"name": "\\udfff"}}'
    )
    assert response.status_code in (202, 422)
    assert harness.client.get("/api/runs").status_code == 200
    assert harness.client.get("/api/runs/s").status_code in (200, 404)


def test_deeply_nested_body_is_a_4xx(make_harness: HarnessFactory) -> None:
    harness = make_harness(raise_server_exceptions=False)
    deep = b'{"agent": "greet", "input": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    assert_error(harness.client.post("/api/runs", content=deep), 400)
    assert harness.count() == 0


@pytest.mark.parametrize("path", ["/api/runs", "/api/dlq"])
def test_huge_limit_is_not_a_500(make_harness: HarnessFactory, path: str) -> None:
    harness = make_harness(raise_server_exceptions=False)
    response = harness.client.get(f"{path}?limit={2**63}")
    assert response.status_code in (200, 400), response.text


def test_non_ascii_bearer_token_is_401(make_harness: HarnessFactory) -> None:
    harness = make_harness(token=TOKEN, raise_server_exceptions=False)
    response = harness.client.get("/api/runs", headers={"Authorization": b"Bearer s\xe9cret"})
    assert_error(response, 401)


@pytest.mark.parametrize("run_id", ["", 0, False])
def test_falsy_id_is_rejected_not_ignored(make_harness: HarnessFactory, run_id: object) -> None:
    harness = make_harness(raise_server_exceptions=False)
    response = harness.client.post("/api/runs", json={"agent": "tally", "id": run_id})
    assert_error(response, 422)
    assert harness.count() == 0


# (ids with "%" are checked against a real server in tests/cli: the test client decodes
# paths twice)
@pytest.mark.parametrize("run_id", ["a?b", "a#b", "a b/c"])
def test_url_of_a_started_run_leads_to_it(make_harness: HarnessFactory, run_id: str) -> None:
    harness = make_harness(raise_server_exceptions=False)
    response = harness.client.post("/api/runs", json={"agent": "tally", "id": run_id})
    assert response.status_code == 202
    followed = harness.client.get(response.json()["url"])
    assert followed.status_code == 200
    assert followed.json()["run_id"] == run_id


def test_resume_a_pending_run_is_409(make_harness: HarnessFactory) -> None:
    harness = make_harness(raise_server_exceptions=False)
    harness.start("greet", "waiting", {"name": "x"})
    before = harness.snapshot()
    response = harness.client.post("/api/runs/waiting/resume")
    assert harness.snapshot() == before
    assert_error(response, 409)


def test_control_characters_never_address_a_run(make_harness: HarnessFactory) -> None:
    harness = make_harness(raise_server_exceptions=False)
    for bad in ("line\nbreak", "tab\there", "nul\x00"):
        assert_error(harness.client.post("/api/runs", json={"agent": "greet", "id": bad}), 422)
    harness.start("greet", "plain", {"name": "y"})
    before = harness.snapshot()
    # a trailing newline must not address another run, nor cancel it
    assert_error(harness.client.get("/api/runs/" + path_id("plain\n")), 404)
    assert_error(harness.client.post("/api/runs/plain/cancel" + path_id("\n")), 404)
    assert harness.snapshot() == before


def test_signals_and_events_over_http(make_harness: HarnessFactory) -> None:
    harness = make_harness(raise_server_exceptions=False)
    harness.start("greet", "s1", {"name": "x"})
    response = harness.client.post("/api/runs/s1/signal/go", json={"ok": True})
    assert response.status_code == 200 and response.json()["signal"] == "go"
    assert harness.query("SELECT name, payload FROM signals") == [("go", '{"ok":true}')]
    assert_error(harness.client.post("/api/runs/nope/signal/go", json=1), 404)
    assert_error(harness.client.post("/api/runs/s1/signal/go", content=b"{bad"), 400)
    created = harness.client.post(
        "/api/events/lead.created", json={"email": "a@x"}, headers={"Idempotency-Key": "e1"}
    )
    assert created.status_code == 202 and created.json()["event_id"] == "e1"
    again = harness.client.post(
        "/api/events/lead.created", json={"email": "a@x"}, headers={"Idempotency-Key": "e1"}
    )
    assert again.status_code == 200 and again.json()["created"] is False
    assert harness.count("events") == 1
    assert_error(harness.client.post("/api/events/x", json=[1]), 400)
