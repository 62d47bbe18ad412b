"""Triggers and pipelines end to end: real `nonstop serve` processes, real SIGKILLs.

The contract under test (DESIGN.md section 3): a schedule fire's run id is
`"{agent}@{scheduled time}"`, so a time fires once however many restarts, crashes or nodes
see it, and with `catch_up="all"` every fire missed while no node ran is made up, even
past the misfire grace; a signal reaches `ctx.wait_for` whether it was sent before the
wait, during it, or while no node ran, and a wait's timeout survives restarts; a fan-out
(`ctx.map`) and a saga's compensations (`compensate=`) resume from their checkpoints after
a SIGKILL, recording each child and each compensation once.

Every claim is checked by reading the database directly (sqlite3 or psycopg): what is on
disk is what counts. Kill delays are seeded (`NONSTOP_E2E_SEED`) so a failure names its
seed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from nonstop.policies.schedule import MISFIRE_GRACE
from tests.e2e import triggers_app
from tests.e2e.serve import PROJECT_ROOT, NodePool, ServeNode, read_jsonl, wait_until

APP = "tests/e2e/triggers_app.py:app"
TICKER_APP = "tests/e2e/triggers_app.py:ticker_app"
SEED = int(os.environ.get("NONSTOP_E2E_SEED", "20251123"))
NODE_ARGS = ("--poll-interval", "0.05", "--lease-ttl", "5")
TICK = triggers_app.TICK
EPSILON = 1e-6  # seconds: scheduled times are exact multiples of TICK

Row = tuple[Any, ...]


# -- reading the database ---------------------------------------------------------------------


class Db:
    """Reads a node's database directly: a SQLite file or a PostgreSQL database.

    Queries use `?` placeholders; they become `%s` for PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite_path = url.removeprefix("sqlite:///") if url.startswith("sqlite:") else None

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        if self.sqlite_path is not None:
            if not Path(self.sqlite_path).exists():
                return []
            with contextlib.closing(sqlite3.connect(self.sqlite_path, timeout=30)) as conn:
                conn.execute("PRAGMA query_only = ON")
                return conn.execute(sql, params).fetchall()
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run's row, JSON columns decoded."""
        found = self.rows(f"SELECT {RUN_FIELDS} FROM runs WHERE id = ?", (run_id,))
        if not found:
            return None
        run = dict(zip(RUN_FIELDS.split(", "), found[0], strict=True))
        for column in ("output", "error", "input"):
            if run[column] is not None:
                run[column] = json.loads(run[column])
        return run

    def status(self, run_id: str) -> str | None:
        run = self.run(run_id)
        return None if run is None else str(run["status"])

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        """A run's step records by seq (compensations, with negative seqs, first)."""
        found = self.rows(
            "SELECT seq, name, status, payload, attempts, started_at, finished_at"
            " FROM steps WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        keys = ("seq", "name", "status", "payload", "attempts", "started_at", "finished_at")
        return [dict(zip(keys, row, strict=True)) for row in found]

    def describe(self) -> str:
        """Status counts and the unfinished runs with what they wait for."""
        if self.sqlite_path is not None and not Path(self.sqlite_path).exists():
            return "--- no database yet"
        counts: dict[str, int] = dict(
            self.rows("SELECT status, count(*) FROM runs GROUP BY status")
        )
        lines = [f"--- runs by status: {counts}"]
        for run_id, status, reason, owner in self.rows(
            "SELECT id, status, wait_reason, lease_owner FROM runs"
            " WHERE status != 'completed' ORDER BY id LIMIT 20"
        ):
            lines.append(f"  {run_id}: {status} ({reason}) owner={owner}")
        return "\n".join(lines)


RUN_FIELDS = (
    "id, agent, status, input, output, error, attempt, parent_id, scheduled_at,"
    " created_at, started_at, finished_at, wait_reason, lease_owner"
)


def diagnose(db: Db, *nodes: ServeNode) -> str:
    return "\n".join([db.describe(), *(node.log_tail(25) for node in nodes)])


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'x.db'}"


def serve_node(
    nodes: NodePool, app: str, url: str, log: Path, env: dict[str, str] | None = None
) -> ServeNode:
    return nodes.node(app, url, log, args=NODE_ARGS, env=env)


def start_runs(url: str, runs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """Start (id, agent, input) runs through an App in this process."""
    client = triggers_app.build_app(url)
    try:
        for run_id, agent, inputs in runs:
            client.start(agent, inputs, id=run_id)
    finally:
        client.close()


def nonstop_cli(*args: str) -> str:
    """Run the `nonstop` command; it must succeed. Returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "nonstop", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"nonstop {' '.join(args)} exited {done.returncode}:\n{done}"
    return done.stdout


def send_signal(url: str, run_id: str, name: str, data: object) -> None:
    nonstop_cli("signal", run_id, name, "--data", json.dumps(data), "--db", url)


def wait_status(
    db: Db,
    run_id: str,
    wanted: Sequence[str],
    *nodes: ServeNode,
    timeout: float = 30.0,
    check: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Poll until the run has one of the `wanted` statuses (and passes `check`); fail at
    once if it finishes otherwise or a node that should run has died."""

    def reached() -> dict[str, Any] | None:
        for node in nodes:
            if not node.running:
                raise AssertionError(f"serve died\n{diagnose(db, node)}")
        run = db.run(run_id)
        if run is None:
            return None
        finished = run["status"] in ("completed", "dead", "cancelled")
        if finished and run["status"] not in wanted:
            raise AssertionError(f"{run_id} ended {run['status']}: {run}\n{diagnose(db, *nodes)}")
        if run["status"] in wanted and (check is None or check(run)):
            return run
        return None

    return wait_until(
        reached,
        timeout=timeout,
        what=f"{run_id} {'/'.join(wanted)}",
        describe=lambda: diagnose(db, *nodes),
    )


def log_events(node: ServeNode, event: str) -> list[dict[str, Any]]:
    """The JSON log records `event` in a node's log, over all its starts (a line cut short
    by a SIGKILL is skipped)."""
    found = []
    for line in node.log_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


# -- 1, 2: schedule fires exactly once -------------------------------------------------------


def fire_time(run_id: str) -> float:
    """The scheduled time in a fire's run id `ticker@2026-11-23T12:13:08.500Z`."""
    agent, _, stamp = run_id.partition("@")
    assert agent == "ticker", f"not a fire of ticker: {run_id!r}"
    return datetime.fromisoformat(stamp).timestamp()


@dataclass(frozen=True)
class Fires:
    times: list[float]  # every fire's scheduled time, in order
    created: dict[float, float]  # scheduled time -> when its run was created
    executed_by: Counter[int]  # pid of the node that ran the tick -> fires
    logged_by: list[int]  # per node: fires it logged as created


def verify_fires(
    db: Db, upto: float, nodes: Sequence[ServeNode], *, first_slack: float = 0.0
) -> Fires:
    """Every fire of `ticker` in the database: one run per scheduled time, the times a
    contiguous series of TICK multiples from the first due after the schedule was first
    seen until at least `upto`, each fire up to `upto` completed once with one step
    record; no node logged creating a time twice. Raises one AssertionError listing every
    violation.

    Nodes started together may each see the schedule first, a moment apart: the stored
    anchor is the first one saved, and the first fire may come up to `first_slack`
    seconds before the first time due after it."""
    problems: list[str] = []
    runs = db.rows(
        "SELECT id, agent, status, scheduled_at, attempt, output, created_at FROM runs"
        " ORDER BY scheduled_at"
    )
    steps: dict[str, list[Row]] = {}
    for run_id, seq, name, status in db.rows(
        "SELECT run_id, seq, name, status FROM steps ORDER BY run_id, seq"
    ):
        steps.setdefault(run_id, []).append((seq, name, status))
    schedules = db.rows("SELECT anchor_at, last_fire_at FROM schedules WHERE agent = 'ticker'")
    assert len(schedules) == 1, f"schedule state rows: {schedules}"
    anchor, last_fire = schedules[0]

    ticks: list[int] = []
    created: dict[float, float] = {}
    executed_by: Counter[int] = Counter()
    for run_id, agent, status, scheduled_at, attempt, output, created_at in runs:
        t = fire_time(run_id)
        k = round(t / TICK)
        if agent != "ticker" or scheduled_at is None or abs(t - scheduled_at) > EPSILON:
            problems.append(f"{run_id}: agent {agent}, scheduled_at {scheduled_at}")
        if abs(k * TICK - t) > EPSILON:
            problems.append(f"{run_id}: {t} is not a multiple of {TICK}s")
        ticks.append(k)
        created[k * TICK] = created_at
        if t > upto and status in ("pending", "running", "sleeping"):
            continue  # fired just before the last node stopped: not expected to be done
        if status != "completed" or attempt != 1:
            problems.append(f"{run_id}: {status}, attempt {attempt}")
            continue
        recorded = steps.get(run_id, [])
        if recorded != [(1, "stamp", "completed")]:
            problems.append(f"{run_id}: step records {recorded}")
        result = json.loads(output)
        if result.get("run_id") != run_id:
            problems.append(f"{run_id}: output {result}")
        executed_by[int(result["pid"])] += 1

    duplicates = sorted(k * TICK for k, n in Counter(ticks).items() if n > 1)
    if duplicates:
        problems.append(f"scheduled times fired twice: {duplicates}")
    if not ticks:
        problems.append("no fire at all")
    else:
        first, last = min(ticks), max(ticks)
        gaps = sorted(set(range(first, last + 1)) - set(ticks))
        if gaps:
            problems.append(f"{len(gaps)} scheduled times never fired: {[k * TICK for k in gaps]}")
        if len(ticks) != last - first + 1:
            problems.append(f"{len(ticks)} fires for {last - first + 1} scheduled times")
        due_first = (math.floor(anchor / TICK) + 1) * TICK
        if not due_first - first_slack - EPSILON <= first * TICK <= due_first + EPSILON:
            problems.append(
                f"first fire {first * TICK}, but the first time due after the schedule was"
                f" seen ({anchor}) is {due_first}"
            )
        if last * TICK < math.floor(upto / TICK) * TICK - EPSILON:
            problems.append(f"last fire {last * TICK}, but {upto} has passed")
        if last_fire is None or last_fire < last * TICK - EPSILON:
            problems.append(f"schedule state says the last fire was {last_fire}")

    # a node logs `schedule_fired` only when its insert created the run
    logged_by = []
    logged: Counter[float] = Counter()
    for node in nodes:
        mine = log_events(node, "schedule_fired")
        logged_by.append(len(mine))
        logged.update(datetime.fromisoformat(r["scheduled_at"]).timestamp() for r in mine)
    twice = sorted(t for t, n in logged.items() if n > 1)
    if twice:
        problems.append(f"fires created twice according to the logs: {twice}")
    unknown = sorted(set(logged) - set(created))
    if unknown:
        problems.append(f"logged fires with no run: {unknown}")

    assert not problems, (
        f"{len(problems)} violation(s):\n" + "\n".join(problems[:30]) + f"\n{diagnose(db, *nodes)}"
    )
    return Fires(sorted(k * TICK for k in ticks), created, executed_by, logged_by)


def wait_fires_done(db: Db, upto: float, *nodes: ServeNode, timeout: float = 30.0) -> None:
    """Poll until the fire of the last scheduled time up to `upto` is completed, and every
    earlier fire too."""
    last = math.floor(upto / TICK) * TICK

    def done() -> bool:
        for node in nodes:
            if not node.running:
                raise AssertionError(f"serve died\n{diagnose(db, node)}")
        due = db.rows(
            "SELECT count(*), sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END),"
            " max(scheduled_at) FROM runs WHERE scheduled_at <= ?",
            (last + EPSILON,),
        )
        total, completed, latest = due[0]
        return bool(total) and total == completed and abs(latest - last) < EPSILON

    wait_until(
        done,
        timeout=timeout,
        what=f"every fire up to {last} completed",
        interval=0.05,
        describe=lambda: diagnose(db, *nodes),
    )


@dataclass(frozen=True)
class Kill:
    phase: str  # "startup": before the process was seen ready; "working": after
    killed: float  # when the SIGKILL was sent
    respawned: float  # when the next process was spawned
    unrecorded: int  # fires whose run existed but whose schedule state did not say so yet


KILL_PHASE = 10.0  # seconds of SIGKILLs and restarts, besides the long outage
LONG_OUTAGE = MISFIRE_GRACE + 1.5  # one outage whose first missed fires are past the grace
STARTUP_KILLS = 0.25  # share of kills made while the node starts, before it is ready
FIRE_WINDOW = 0.01  # other kills land this long after a scheduled time, at most
UNRECORDED_FIRES = (
    "SELECT count(*) FROM runs WHERE scheduled_at >"
    " coalesce((SELECT last_fire_at FROM schedules WHERE agent = 'ticker'), 0)"
)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_schedule_fires_each_time_exactly_once_across_sigkills(
    tmp_path: Path, nodes: NodePool
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    url = sqlite_url(tmp_path)
    db = Db(url)
    node = serve_node(nodes, TICKER_APP, url, tmp_path / "serve.log")

    kills: list[Kill] = []
    node.start()
    first_ready = node.wait_ready()
    phase = "working"
    phase_end = first_ready + KILL_PHASE
    while True:
        if phase == "startup":
            kill_at = node.spawned_at + rng.uniform(0.3, 1.5)
        else:
            # just after a scheduled time: while the fire is being made and recorded
            soon = node.wait_ready() + rng.uniform(0.1, 1.2)
            kill_at = math.ceil(soon / TICK) * TICK + rng.uniform(0.0, FIRE_WINDOW)
        if kill_at > phase_end:
            break
        time.sleep(max(0.0, kill_at - time.time()))  # the kill delay itself, not a sync
        assert node.running, f"serve exited on its own\n{node.log_tail()}"
        killed = node.kill()
        unrecorded = db.rows(UNRECORDED_FIRES)[0][0]
        # deliberate downtime, on top of the startup; the second one is long
        if len(kills) == 1:
            downtime = LONG_OUTAGE
            phase_end += LONG_OUTAGE
        else:
            downtime = rng.uniform(0.0, 0.6)
        time.sleep(downtime)
        node.start()
        kills.append(Kill(phase, killed, node.spawned_at, unrecorded))
        phase = "startup" if rng.random() < STARTUP_KILLS else "working"
    node.wait_ready()

    upto = time.time() + 1.0
    wait_fires_done(db, upto, node)
    code, _ = node.terminate(timeout=40)
    assert code == 0, node.log_tail()
    fires = verify_fires(db, upto, [node])

    # The fires due just after each kill were made up by a later process (none lost: a
    # process takes over a second to start, and (k, k + 1] holds two scheduled times).
    made_up = 0
    for kill in kills:
        missed = [t for t in fires.times if kill.killed < t <= kill.killed + 1.0]
        assert len(missed) == 2, f"fires in the second after {kill}: {missed}"
        assert all(fires.created[t] >= kill.respawned for t in missed), (kill, missed)
        made_up += sum(1 for t in fires.times if kill.killed < t < kill.respawned)
    late = sum(1 for t in fires.times if fires.created[t] - t > TICK)
    # catch_up="all": the fires missed by more than the grace were made up as well
    beyond = [t for t in fires.times if fires.created[t] - t > MISFIRE_GRACE]
    assert len(beyond) >= 2, f"fires made up past the grace: {beyond}"
    # `nonstop schedules` reports the same last fire
    shown = json.loads(nonstop_cli("schedules", "--app", TICKER_APP, "--db", url, "--json"))
    last_id = db.rows("SELECT id FROM runs WHERE scheduled_at = ?", (fires.times[-1],))[0][0]
    assert [(r["agent"], r["last_run"]) for r in shown] == [("ticker", last_id)], shown
    assert len(kills) >= 3, f"only {len(kills)} kills"
    print(
        f"\nseed {SEED}: {len(kills)} SIGKILLs"
        f" ({sum(k.phase == 'startup' for k in kills)} during startup,"
        f" {sum(k.unrecorded > 0 for k in kills)} between a fire's run and its record);"
        f" {len(fires.times)} fires from {fires.times[0]} to {fires.times[-1]},"
        f" {made_up} due while no process ran, {late} created over {TICK}s late,"
        f" {len(beyond)} over {MISFIRE_GRACE:g}s late;"
        f" total {time.monotonic() - began:.1f}s"
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_nodes_on_postgres_fire_each_time_once(
    pg_url: str, nodes: NodePool, tmp_path: Path
) -> None:
    began = time.monotonic()
    db = Db(pg_url)
    pair = [serve_node(nodes, TICKER_APP, pg_url, tmp_path / f"node{i}.log") for i in range(2)]
    for node in pair:
        node.start()
    ready = max(node.wait_ready() for node in pair)
    window_end = ready + 6.0

    def both_registered() -> bool:
        pids = {row[0] for row in db.rows("SELECT pid FROM nodes")}
        return pids >= {node.pid for node in pair}

    wait_until(both_registered, timeout=10, what="both nodes registered")
    # both nodes stay up and ready through the window
    while time.time() < window_end:
        for node in pair:
            assert node.running and node.probe("ready"), f"{node} went down\n{node.log_tail()}"
        time.sleep(0.25)  # how often to look, not a sync
    assert both_registered(), diagnose(db, *pair)
    upto = window_end
    wait_fires_done(db, upto, *pair)
    for node in pair:
        code, _ = node.terminate(timeout=40)
        assert code == 0, node.log_tail()
    fires = verify_fires(db, upto, pair, first_slack=TICK)

    distinct = db.rows("SELECT count(*), count(DISTINCT scheduled_at) FROM runs")[0]
    assert distinct[0] == distinct[1] == len(fires.times), distinct
    # between them the nodes created every fire once (a cancelled insert at SIGTERM may go
    # unlogged, never a doubly logged one)
    assert sum(fires.logged_by) <= len(fires.times)
    assert sum(fires.logged_by) >= len(fires.times) - 2, fires.logged_by
    assert len(fires.times) >= 6.0 / TICK, f"only {len(fires.times)} fires"
    print(
        f"\n{len(fires.times)} fires from {fires.times[0]} to {fires.times[-1]}; created per"
        f" node {fires.logged_by}; executed per node pid {dict(fires.executed_by)};"
        f" total {time.monotonic() - began:.1f}s"
    )


# -- 3: signals --------------------------------------------------------------------------------


def wait_marker(db: Db, run_id: str) -> dict[str, Any] | None:
    """The record a wait_for leaves when it starts (its deadline), if there is one."""
    return next((s for s in db.steps(run_id) if s["name"] == "wait:go"), None)


def signals_of(db: Db, run_id: str) -> list[Row]:
    return db.rows(
        "SELECT name, payload, created_at, consumed_at, consumed_seq FROM signals"
        " WHERE run_id = ? ORDER BY id",
        (run_id,),
    )


def check_received(db: Db, run_id: str, data: object) -> tuple[float, float]:
    """The run completed with `data`, taken from its one signal by its wait's outcome
    step; returns when the signal was sent and when the wait began."""
    run = db.run(run_id)
    assert run is not None and run["status"] == "completed", run
    assert run["output"] == {"got": data}, run
    steps = db.steps(run_id)
    assert [(s["seq"], s["name"], s["status"]) for s in steps] == [
        (1, "hold", "completed"),
        (2, "wait:go", "completed"),
        (3, "signal:go", "completed"),
    ], steps
    assert json.loads(steps[2]["payload"]) == data
    sent = signals_of(db, run_id)
    assert len(sent) == 1, sent
    name, payload, created_at, consumed_at, consumed_seq = sent[0]
    assert name == "go" and json.loads(payload) == data and consumed_seq == 3, sent
    assert consumed_at is not None
    return float(created_at), float(steps[1]["started_at"])


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_signal_sent_before_and_during_the_wait_reaches_it(tmp_path: Path, nodes: NodePool) -> None:
    began = time.monotonic()
    url = sqlite_url(tmp_path)
    db = Db(url)
    early_data = {"case": "early", "n": 1, "text": "tôt"}
    late_data = ["late", 2, {"nested": True}]
    start_runs(url, [("early", "waiter", {"hold_for": 3.0}), ("late", "waiter", {})])
    node = serve_node(nodes, APP, url, tmp_path / "serve.log")
    node.start()
    node.wait_ready()

    # before the wait: the run is busy in its 3 s step
    wait_status(db, "early", ["running"], node)
    assert wait_marker(db, "early") is None
    send_signal(url, "early", "go", early_data)
    assert wait_marker(db, "early") is None, "the CLI was too slow: the wait already began"
    # during the wait
    waiting = wait_status(db, "late", ["waiting"], node)
    assert 'signal "go"' in waiting["wait_reason"], waiting
    send_signal(url, "late", "go", late_data)

    wait_status(db, "early", ["completed"], node)
    wait_status(db, "late", ["completed"], node)
    sent, waited = check_received(db, "early", early_data)
    assert sent < waited, "the early signal was sent after the wait began"
    sent, waited = check_received(db, "late", late_data)
    assert sent > waited, "the late signal was sent before the wait began"
    code, _ = node.terminate(timeout=40)
    assert code == 0, node.log_tail()
    print(f"\ntotal {time.monotonic() - began:.1f}s")


WAIT_TIMEOUT = 2.0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_signal_while_down_and_wait_timeout_survive_a_sigkill(
    tmp_path: Path, nodes: NodePool
) -> None:
    began = time.monotonic()
    url = sqlite_url(tmp_path)
    db = Db(url)
    down_data = {"case": "while down"}
    default = {"timed_out": True}
    start_runs(
        url,
        [
            ("down", "waiter", {}),
            ("timeout", "waiter", {"timeout": WAIT_TIMEOUT, "default": default}),
        ],
    )
    node = serve_node(nodes, APP, url, tmp_path / "serve.log")
    node.start()
    node.wait_ready()
    wait_status(db, "down", ["waiting"], node)
    wait_status(db, "timeout", ["waiting"], node)
    killed = node.kill()
    marker = wait_marker(db, "timeout")
    assert marker is not None
    deadline = float(json.loads(marker["payload"])["until"])
    assert killed < deadline, "the node was killed after the wait's deadline"
    assert abs(deadline - marker["started_at"] - WAIT_TIMEOUT) < 0.01, marker

    send_signal(url, "down", "go", down_data)
    # deliberately down until well past the deadline
    time.sleep(max(0.0, deadline + 1.0 - time.time()))
    assert db.status("timeout") == "waiting"
    node.start()
    ready = node.wait_ready()

    wait_status(db, "down", ["completed"], node)
    timed_out = wait_status(db, "timeout", ["completed"], node)
    sent, _ = check_received(db, "down", down_data)
    assert killed < sent < node.spawned_at, "the signal was not sent while the node was down"

    assert timed_out["output"] == {"got": default}, timed_out
    steps = db.steps("timeout")
    assert [(s["seq"], s["name"]) for s in steps] == [
        (1, "hold"),
        (2, "wait:go"),
        (3, "signal:go"),
    ], steps
    assert json.loads(steps[2]["payload"]) == default
    assert signals_of(db, "timeout") == []
    assert steps[2]["finished_at"] >= deadline
    late = timed_out["finished_at"] - ready
    assert late < 1.0, f"the timed-out wait ended {late:.2f}s after the restart"
    code, _ = node.terminate(timeout=40)
    assert code == 0, node.log_tail()
    print(
        f"\ndown {node.spawned_at - killed:.2f}s; timed-out wait ended {late:.3f}s after the"
        f" restart was ready ({timed_out['finished_at'] - deadline:.2f}s past its deadline);"
        f" total {time.monotonic() - began:.1f}s"
    )


# -- 4: fan-out ------------------------------------------------------------------------------

CHILDREN = 100
CHILD_WORK = 0.15
MAX_PARALLEL = 10


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fan_out_of_100_children_survives_sigkills(tmp_path: Path, nodes: NodePool) -> None:
    began = time.monotonic()
    rng = random.Random(SEED + 4)
    url = sqlite_url(tmp_path)
    db = Db(url)
    effects = tmp_path / "effects.jsonl"
    parent = "fan"
    start_runs(
        url,
        [(parent, "fanout", {"n": CHILDREN, "work": CHILD_WORK, "max_parallel": MAX_PARALLEL})],
    )
    node = serve_node(
        nodes, APP, url, tmp_path / "serve.log", env={triggers_app.EFFECTS_ENV: str(effects)}
    )
    count_done = (
        "SELECT count(*) FROM runs WHERE parent_id = ? AND status = 'completed'",
        (parent,),
    )

    def completed_children() -> int:
        found: int = db.rows(*count_done)[0][0]
        return found

    node.start()
    node.wait_ready()
    kills: list[tuple[int, int]] = []  # (children completed, children running) at each kill
    for low, high in ((15, 35), (50, 75)):
        target = rng.randint(low, high)

        def reached(target: int = target) -> bool:
            if not node.running:
                raise AssertionError(f"serve died\n{diagnose(db, node)}")
            return completed_children() >= target

        wait_until(
            reached,
            timeout=60,
            what=f"{target} children completed",
            describe=lambda: diagnose(db, node),
        )
        time.sleep(rng.uniform(0.0, CHILD_WORK))  # the kill delay itself, not a sync
        node.kill()
        running = db.rows(
            "SELECT count(*) FROM runs WHERE parent_id = ? AND status = 'running'", (parent,)
        )[0][0]
        kills.append((completed_children(), running))
        node.start()
        node.wait_ready()
    run = wait_status(db, parent, ["completed"], node, timeout=60)
    code, _ = node.terminate(timeout=40)
    assert code == 0, node.log_tail()

    assert run["output"] == {"outputs": [{"i": i, "square": i * i} for i in range(CHILDREN)]}
    parent_steps = db.steps(parent)
    assert [(s["seq"], s["name"], s["status"]) for s in parent_steps] == [
        (1, "map:square", "completed")
    ], parent_steps
    children = db.rows(
        "SELECT id, status, attempt, input, output FROM runs WHERE parent_id = ?", (parent,)
    )
    expected = {f"{parent}/1.{i}": i for i in range(CHILDREN)}
    assert sorted(row[0] for row in children) == sorted(expected)
    assert db.rows("SELECT count(*) FROM runs")[0][0] == CHILDREN + 1
    problems = []
    for run_id, status, attempt, inputs, output in children:
        i = expected[run_id]
        if (status, attempt) != ("completed", 1) or json.loads(inputs)["i"] != i:
            problems.append(f"{run_id}: {status}, attempt {attempt}, input {inputs}")
        elif json.loads(output) != {"i": i, "square": i * i}:
            problems.append(f"{run_id}: output {output}")
    child_steps = db.rows(
        "SELECT run_id, count(*), min(seq), max(seq), min(name), min(status), max(status)"
        " FROM steps WHERE run_id LIKE ? GROUP BY run_id",
        (f"{parent}/%",),
    )
    assert len(child_steps) == CHILDREN, f"{len(child_steps)} children have step records"
    one_step = (1, 1, 1, "compute", "completed", "completed")  # count, seqs, name, statuses
    problems.extend(f"{row[0]}: steps {row[1:]}" for row in child_steps if row[1:] != one_step)
    assert not problems, "\n".join(problems[:20]) + f"\n{diagnose(db, node)}"

    # never more than max_parallel children unfinished at once, kills included
    spans = db.rows("SELECT created_at, finished_at FROM runs WHERE parent_id = ?", (parent,))
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = max(itertools.accumulate(step for _, step in edges))
    assert peak <= MAX_PARALLEL, f"{peak} children were unfinished at once"

    # each child's effect happened at least once; the kills cut some short after the
    # effect, so those ran again, yet each child's step is recorded once (checked above)
    executed = Counter(line["key"] for line in read_jsonl(effects))
    assert set(executed) == {f"{run_id}:1" for run_id in expected}
    repeated = sum(n - 1 for n in executed.values())
    assert all(running > 0 for _, running in kills), f"a kill hit no child in flight: {kills}"
    assert repeated > 0, "no kill landed in the middle of a child's step"
    print(
        f"\nseed {SEED + 4}: kills at (completed, running) children {kills}; peak {peak};"
        f" {repeated} child effects repeated after a kill; total {time.monotonic() - began:.1f}s"
    )


# -- 5: saga compensation ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_compensation_interrupted_by_sigkills_undoes_each_step_once_in_reverse(
    tmp_path: Path, nodes: NodePool
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED + 5)
    url = sqlite_url(tmp_path)
    db = Db(url)
    undo_file = tmp_path / "undo.jsonl"
    run_id = "saga-1"
    start_runs(url, [(run_id, "saga", {})])
    node = serve_node(
        nodes, APP, url, tmp_path / "serve.log", env={triggers_app.UNDO_ENV: str(undo_file)}
    )
    reverse = list(reversed(triggers_app.SAGA_STEPS))
    node.start()
    node.wait_ready()

    # a SIGKILL in the middle of each compensation: its effect is on disk, its record not
    mid_kills: list[str] = []
    for step in reverse:

        def undoing(step: str = step) -> bool:
            if not node.running:
                raise AssertionError(f"serve died\n{diagnose(db, node)}")
            lines = read_jsonl(undo_file, partial=True)
            return any(line["step"] == step and line["pid"] == node.pid for line in lines)

        wait_until(
            undoing,
            timeout=30,
            what=f"the compensation of {step} under way",
            describe=lambda: diagnose(db, node),
        )
        time.sleep(rng.uniform(0.0, triggers_app.UNDO_PAUSE / 3))  # kill delay, not a sync
        node.kill()
        names = {s["name"] for s in db.steps(run_id)}
        if f"compensate:{step}" not in names:
            mid_kills.append(step)
        assert db.status(run_id) == "running", diagnose(db, node)
        node.start()
        node.wait_ready()
    run = wait_status(db, run_id, ["dead"], node, timeout=30)
    code, _ = node.terminate(timeout=40)
    assert code == 0, node.log_tail()

    assert mid_kills == reverse, f"kills that landed mid-compensation: {mid_kills}"
    assert run["attempt"] == 1, run
    assert "confirmation refused" in json.dumps(run["error"]), run["error"]
    steps = db.steps(run_id)
    forward = [(s["seq"], s["name"], s["status"]) for s in steps if s["seq"] > 0]
    assert forward == [
        (1, "reserve", "completed"),
        (2, "charge", "completed"),
        (3, "ship", "completed"),
        (4, "confirm", "failed"),
    ], steps
    undone = [s for s in steps if s["seq"] < 0]
    # one record per compensation, newest step undone first (seq -1 is the first undo)
    by_order = sorted(undone, key=lambda s: -s["seq"])
    assert [(s["seq"], s["name"], s["status"]) for s in by_order] == [
        (-1, "compensate:ship", "completed"),
        (-2, "compensate:charge", "completed"),
        (-3, "compensate:reserve", "completed"),
    ], steps
    assert [json.loads(s["payload"]) for s in by_order] == [{"undone": s} for s in reverse]
    finished = [s["finished_at"] for s in by_order]
    assert finished == sorted(finished), f"compensations recorded out of order: {by_order}"
    confirmed = steps[-1]["finished_at"]  # the failed step: the saga was undone after it
    assert by_order[0]["started_at"] > confirmed, steps
    failed_tries = db.rows("SELECT seq, name FROM step_attempts WHERE run_id = ?", (run_id,))
    assert failed_tries == [(4, "confirm")], failed_tries

    # the side effects: each undo repeated only where a kill cut it short, in reverse order
    lines = read_jsonl(undo_file)
    effects = [line["step"] for line in lines]
    deduplicated = list(dict.fromkeys(effects))
    assert deduplicated == reverse, effects
    runs_of = [(step, len(list(group))) for step, group in itertools.groupby(effects)]
    assert runs_of == [(step, 2) for step in reverse], effects
    # every execution of a compensation had the idempotency key of its record
    for record in by_order:
        step = record["name"].removeprefix("compensate:")
        keys = {line["key"] for line in lines if line["step"] == step}
        assert keys == {f"{run_id}:{record['seq']}"}, (step, keys)
    print(
        f"\nseed {SEED + 5}: {len(mid_kills)} SIGKILLs mid-compensation; undo effects"
        f" {effects}; total {time.monotonic() - began:.1f}s"
    )
