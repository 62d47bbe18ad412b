"""Chaos: a real `nonstop serve` on SQLite takes a steady stream of runs for about two
minutes while it is SIGKILLed at random and restarted, and a tenth of step executions fail.

The workload (`chaos_app.py`): runs of ten steps under async and sync handlers, one agent
with a restart policy, one whose steps are registered tools (most of them under a shared
rate limit, so calls queue for tokens); most steps retry, some park between tries, some
are tried once, and each run is retried once; so some runs end `dead`. A tenth of the
runs are waiting when the first node starts, the rest are started at a steady pace by an
App in this process during the first nine tenths of the chaos. Meanwhile the node is
SIGKILLed at random intervals (seeded by `NONSTOP_E2E_SEED`, so a failure names its seed)
and started again at once. Then the kills stop, the last node finishes the runs and stops
gracefully, and the test reads the database (through a read-only sqlite3 connection) and
the app's files:

- every run is `completed` or `dead`, and every dead run carries the error that ended it;
- every run's step records are numbered 1..n without gaps or duplicates; a completed run
  has all ten, completed, and its output is those results in order (the handler folds what
  it received into its output); a dead run's last record is the failed step;
- step tries and run attempts add up: each run attempt that failed has one step that gave
  up after exactly as many tries as its policy allows, and the run's attempt counter shows
  how many attempts failed;
- every recorded outcome came from an execution of that step (by the token it carries),
  no step executed again once its outcome was recorded, and every execution whose outcome
  was not recorded ran in a process that was SIGKILLed (the at-least-once window);
- what a handler received for a step, replays included, is what was recorded;
- the incident log accounts for every kill: each run a kill left leased to the dead process
  has exactly one `recovered` incident before it is next orphaned, runs with a restart
  policy have a `restarted` incident for their recoveries, and there is nothing else.

Which runs a kill "hit" is read from the database after the process is dead and before its
successor starts: the runs still leased to it then are exactly those it held at the moment
of the kill (a read just before the signal would race with runs finishing).

`NONSTOP_CHAOS_SECONDS` (default 120) sets the length of the chaos; the number of runs
follows it (four a second).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import nonstop
from tests.e2e import chaos_app
from tests.e2e.serve import DbReader, NodePool, Row, ServeNode, diagnose, read_jsonl, wait_until

APP = "tests/e2e/chaos_app.py:app"
SEED = int(os.environ.get("NONSTOP_E2E_SEED", "20251123"))
CHAOS_SECONDS = float(os.environ.get("NONSTOP_CHAOS_SECONDS", "120"))
RUNS_PER_SECOND = 4.0
RUNS = max(30, round(RUNS_PER_SECOND * CHAOS_SECONDS))
BACKLOG = RUNS // 10  # runs waiting before the first node starts
FEED_SHARE = 0.9  # the other runs are started during this share of the chaos
KILL_GAP = (1.0, 6.0)  # seconds from a node's start to its SIGKILL
STEP_DELAY = 0.08  # each half of a step takes uniform(0, this) seconds
CONCURRENCY = 16
DRAIN_TIMEOUT = 60.0  # for the runs left when the kills stop
NODE_ARGS = (
    "--poll-interval",
    "0.05",
    "--lease-ttl",
    "10",
    "--concurrency",
    str(CONCURRENCY),
)
TIMEOUT = round(CHAOS_SECONDS) + 90  # the chaos, the drain and the checks take ~15 s more
SLACK = 0.05  # seconds: a clock read on either side of a commit

Line = dict[str, Any]

INJECTED = re.compile(r"injected failure ([0-9a-f]{16}) at (\S+)")
INJECTED_TYPE = ".InjectedFailure"
STEP_FAILED_TYPE = "nonstop.errors.StepFailed"


# -- the world of the test: files, database, nodes ------------------------------------------


@dataclass(frozen=True)
class World:
    """The files of the test: the database and the app's side-effect files."""

    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "chaos.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def effects(self) -> Path:
        return self.root / "effects.jsonl"

    @property
    def observed(self) -> Path:
        return self.root / "observed.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "serve.log"

    def env(self) -> dict[str, str]:
        return {
            chaos_app.EFFECTS_ENV: str(self.effects),
            chaos_app.OBSERVED_ENV: str(self.observed),
            chaos_app.FAIL_RATE_ENV: str(chaos_app.FAIL_RATE),
        }


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def db(world: World) -> DbReader:
    return DbReader(world.db_path, settled=("completed", "dead"))


# -- the stream of runs and the kills ----------------------------------------------------------


class Feeder:
    """Starts the test's runs through an App of this process: the first `backlog` at once,
    the others one by one at a steady pace once `pace` says when."""

    def __init__(self, client: nonstop.App, specs: Sequence[tuple[str, str]], backlog: int) -> None:
        self.client = client
        self.specs = list(specs)
        self.backlog = backlog
        self.created = 0
        self.start = self.interval = 0.0
        while self.created < backlog:
            self._create()

    def pace(self, start: float, seconds: float) -> None:
        """Spread the other runs evenly over `seconds` from `start`."""
        self.start = start
        self.interval = seconds / max(len(self.specs) - self.backlog, 1)

    def due(self, index: int) -> float:
        return self.start + (index - self.backlog + 1) * self.interval

    def _create(self) -> None:
        run_id, agent = self.specs[self.created]
        self.client.start(agent, {"delay": STEP_DELAY}, id=run_id)
        self.created += 1

    def feed_until(self, until: float) -> None:
        """Start the runs due by `until`, each at its time; return at `until` (the pauses
        are the pace of the stream and the kill interval, not a wait for anything)."""
        while self.created < len(self.specs) and self.due(self.created) <= until:
            pause = self.due(self.created) - time.time()
            if pause > 0:
                time.sleep(pause)
            self._create()
        pause = until - time.time()
        if pause > 0:
            time.sleep(pause)


@dataclass(frozen=True)
class Kill:
    at: float  # time.time() when SIGKILL was sent
    pid: int
    uptime: float  # seconds since the process was spawned
    ready: bool  # it had answered its readiness probe (checked just before the kill)
    orphans: tuple[str, ...]  # runs left leased to it: those it held at the kill


def run_specs() -> list[tuple[str, str]]:
    """(run id, agent) of every run, agents in turn."""
    specs = []
    for i in range(RUNS):
        agent = chaos_app.AGENTS[i % len(chaos_app.AGENTS)]
        specs.append((f"{agent}-{i:04d}", agent))
    return specs


def wait_all_finished(node: ServeNode, db: DbReader, count: int) -> None:
    """Poll until `count` runs are completed or dead; fail at once if one is paused or
    cancelled or the node dies."""

    def done() -> bool:
        if not node.running:
            raise AssertionError(f"serve died\n{diagnose(node, db)}")
        statuses = db.statuses()
        stuck = {s: n for s, n in statuses.items() if s in ("paused", "cancelled")}
        assert not stuck, f"runs ended {stuck}\n{diagnose(node, db)}"
        return statuses["completed"] + statuses["dead"] == count

    wait_until(
        done,
        timeout=DRAIN_TIMEOUT,
        what=f"{count} runs completed or dead",
        interval=0.1,
        describe=lambda: diagnose(node, db),
    )


# -- what the finished test must find on disk ---------------------------------------------------


@dataclass
class Report:
    """What verify found, and every violation of the contract."""

    problems: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    retried_runs: int = 0  # completed on their second attempt
    executions: int = 0  # lines in the effects file
    injected: int = 0  # executions that raised InjectedFailure
    step_retries: int = 0  # failed tries recorded in step_attempts
    duplicates: int = 0  # successful executions beyond the recorded one (same key)
    lost_failures: int = 0  # failed executions whose try was not recorded
    observations: int = 0
    orphaned: int = 0  # (kill, run) pairs: a run left leased to a killed process
    recovered: int = 0  # `recovered` incidents
    restarted: int = 0  # `restarted` incidents

    def add(self, problem: str) -> None:
        self.problems.append(problem)


def injected(message: object, key: str) -> str | None:
    """The token of the injected failure `message` describes, if it is one at `key`."""
    found = INJECTED.search(str(message))
    return found.group(1) if found is not None and found.group(2) == key else None


def verify(world: World, db: DbReader, runs: dict[str, str], kills: Sequence[Kill]) -> Report:
    """Check every invariant over the finished runs (run id -> agent); the report lists
    every violation found."""
    report = Report()
    run_rows = {
        row[0]: row
        for row in db.rows(
            "SELECT id, agent, status, output, error, attempt, lease_owner FROM runs"
        )
    }
    if set(run_rows) != set(runs):
        missing, extra = set(runs) - set(run_rows), set(run_rows) - set(runs)
        report.add(f"runs missing {sorted(missing)[:10]}, unexpected {sorted(extra)[:10]}")
    steps: dict[str, list[Row]] = defaultdict(list)
    for row in db.rows(
        "SELECT run_id, seq, name, status, payload, attempts, finished_at FROM steps"
        " ORDER BY run_id, seq"
    ):
        steps[row[0]].append(row)
    tries: dict[tuple[str, int], dict[int, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in db.rows(
        "SELECT run_id, seq, run_attempt, attempt, name, error, retry_at FROM step_attempts"
        " ORDER BY run_id, seq, run_attempt, attempt"
    ):
        tries[(row[0], row[1])][row[2]].append(row)
    report.step_retries = sum(len(t) for by_run in tries.values() for t in by_run.values())

    executions: dict[str, list[Line]] = defaultdict(list)
    effects = read_jsonl(world.effects)
    for line in effects:
        executions[line["key"]].append(line)
    report.executions = len(effects)
    report.injected = sum(1 for line in effects if line["failed"])

    recorded: dict[str, str] = {}  # key -> token of the recorded success
    failed_records: dict[str, str] = {}  # key -> message of the recorded final failure
    tried_tokens: dict[str, set[str]] = defaultdict(set)  # key -> tokens of recorded tries
    for run_id in runs:
        found = run_rows.get(run_id)
        if found is None:
            continue
        check_run(report, found, steps[run_id], tries, recorded, failed_records, tried_tokens)
    check_effects(report, executions, steps, recorded, failed_records, tried_tokens, kills)
    check_observations(report, world, run_rows, recorded, failed_records, executions)
    check_incidents(report, db, runs, kills)
    return report


def check_run(
    report: Report,
    run: Row,
    records: list[Row],
    tries: dict[tuple[str, int], dict[int, list[Row]]],
    recorded: dict[str, str],
    failed_records: dict[str, str],
    tried_tokens: dict[str, set[str]],
) -> None:
    """One run: its status, error or output, step records, tries and attempts."""
    run_id, agent, status, output, error, attempt, owner = run
    report.statuses[status] += 1
    if owner is not None:
        report.add(f"{run_id}: {status} but still leased to {owner}")
    seqs = [r[1] for r in records]
    if seqs != list(range(1, len(seqs) + 1)):
        report.add(f"{run_id}: step seqs {seqs}")
    results: list[dict[str, Any]] = []
    for _, seq, name, step_status, payload, _, _ in records:
        key = f"{run_id}:{seq}"
        value = json.loads(payload)
        if name != chaos_app.step_name(agent, seq):
            report.add(f"{run_id}: step {seq} is named {name!r}")
        if step_status == "completed":
            if value.get("key") != key:
                report.add(f"{run_id}: step {seq} got idempotency key {value.get('key')}")
            recorded[key] = str(value.get("token"))
            results.append(value)
        elif step_status == "failed" and seq == len(records):
            if (
                not str(value.get("type", "")).endswith(INJECTED_TYPE)
                or injected(value.get("message"), key) is None
            ):
                report.add(f"{run_id}: step {seq} failed with {value}, not an injected failure")
            failed_records[key] = str(value.get("message"))
        else:
            report.add(f"{run_id}: step {seq} of {len(records)} is {step_status}")

    if status == "completed":
        if error is not None:
            report.add(f"{run_id}: completed with error {error}")
        if len(results) != chaos_app.STEPS or len(records) != chaos_app.STEPS:
            report.add(f"{run_id}: completed with {len(results)} of {len(records)} steps completed")
        if output is None or json.loads(output) != {"observed": results}:
            report.add(
                f"{run_id}: the output is not the recorded step results in order:"
                f" {output} != {results}"
            )
        report.retried_runs += attempt > 1
    elif status == "dead":
        reason = {} if error is None else json.loads(error)
        last = f"{run_id}:{len(records)}"
        if not reason.get("type") or not reason.get("message"):
            report.add(f"{run_id}: dead without a reason: error {error}")
        elif last not in failed_records or failed_records[last] not in str(reason["message"]):
            report.add(
                f"{run_id}: dead with {reason.get('type')}: {reason.get('message')!r}, not"
                f" the failure of its last step {failed_records.get(last)!r}"
            )
        elif reason["type"] != STEP_FAILED_TYPE:
            report.add(f"{run_id}: dead with error type {reason['type']}")
        if output is not None:
            report.add(f"{run_id}: dead with output {output}")
        if attempt != chaos_app.RUN_RETRY.max_attempts:
            allowed = chaos_app.RUN_RETRY.max_attempts
            report.add(f"{run_id}: dead after {attempt} attempts, not {allowed}")
    else:
        report.add(f"{run_id}: {status}, neither completed nor dead")
        return

    # Tries: within one run attempt numbered 1..n; each but the last schedules a retry; a
    # step gives up after exactly its policy's tries, else a success follows in that attempt.
    gave_up: list[int] = []  # the run attempts that failed, by the step that gave up
    by_seq = {r[1]: r for r in records}
    for seq in range(1, chaos_app.STEPS + 1):
        key, limit = f"{run_id}:{seq}", chaos_app.max_tries(seq)
        record = by_seq.get(seq)
        succeeded_after = 0  # failed tries before the recorded success, in its attempt
        for run_attempt, rows in sorted(tries.get((run_id, seq), {}).items()):
            numbers = [r[3] for r in rows]
            if numbers != list(range(1, len(rows) + 1)):
                report.add(f"{key}: tries of run attempt {run_attempt} numbered {numbers}")
            for row in rows:
                reason = json.loads(row[5])
                token = injected(reason.get("message"), key)
                if token is None or not str(reason.get("type")).endswith(INJECTED_TYPE):
                    report.add(f"{key}: try {row[3]} failed with {reason.get('message')!r}")
                elif token in tried_tokens[key]:
                    report.add(f"{key}: the failure {token} is recorded twice")
                else:
                    tried_tokens[key].add(token)
            if any(r[6] is None for r in rows[:-1]):
                report.add(f"{key}: a try before the last of attempt {run_attempt} gave up")
            if run_attempt > attempt:
                report.add(f"{key}: tries in run attempt {run_attempt} of {attempt}")
            if rows[-1][6] is None:  # gave up
                gave_up.append(run_attempt)
                if len(rows) != limit:
                    report.add(
                        f"{key}: gave up in run attempt {run_attempt} after {len(rows)} tries,"
                        f" its policy allows {limit}"
                    )
            elif succeeded_after:
                report.add(f"{key}: tries left hanging in two run attempts")
            else:
                succeeded_after = len(rows)
        if record is None:
            continue
        attempts = record[5]
        if record[3] == "completed":
            if attempts != succeeded_after + 1 or attempts > limit:
                report.add(
                    f"{key}: completed after {attempts} tries, with {succeeded_after} failed"
                    f" ones recorded before it (policy: {limit})"
                )
        elif attempts != limit or succeeded_after:
            report.add(f"{key}: failed after {attempts} tries (policy: {limit})")
        elif injected(failed_records.get(key), key) not in tried_tokens[key]:
            report.add(f"{key}: the recorded failure is not its last recorded try")
    expected = attempt - 1 if status == "completed" else attempt
    if sorted(gave_up) != list(range(1, expected + 1)):
        report.add(
            f"{run_id}: {status} at attempt {attempt}, but steps gave up in run attempts"
            f" {sorted(gave_up)}"
        )


def check_effects(
    report: Report,
    executions: dict[str, list[Line]],
    steps: dict[str, list[Row]],
    recorded: dict[str, str],
    failed_records: dict[str, str],
    tried_tokens: dict[str, set[str]],
    kills: Sequence[Kill],
) -> None:
    """The executions on disk, de-duplicated by idempotency key, against the records."""
    killed = {kill.pid for kill in kills}
    finished_at = {f"{r[0]}:{r[1]}": r[6] for rows in steps.values() for r in rows}
    if set(executions) != set(finished_at):
        missing = set(finished_at) - set(executions)
        extra = set(executions) - set(finished_at)
        report.add(
            f"executed keys != recorded keys: missing {sorted(missing)[:10]},"
            f" unrecorded {sorted(extra)[:10]}"
        )
    for key, lines in executions.items():
        successes = {line["token"]: line for line in lines if not line["failed"]}
        failures = {line["token"]: line for line in lines if line["failed"]}
        if len(successes) + len(failures) != len(lines):
            report.add(f"{key}: two executions share a token")
        if key in recorded and recorded[key] not in successes:
            report.add(f"{key}: the recorded result {recorded[key]} comes from no execution")
        if key in failed_records and injected(failed_records[key], key) not in failures:
            report.add(f"{key}: the recorded failure comes from no execution")
        if not tried_tokens[key] <= failures.keys():
            report.add(f"{key}: recorded tries {tried_tokens[key] - failures.keys()} never ran")
        if key in finished_at:
            late = [line for line in lines if line["started"] > finished_at[key] + SLACK]
            if late:
                report.add(
                    f"{key}: executed again after its outcome was recorded at"
                    f" {finished_at[key]:.3f}: {late}"
                )
        for token, line in successes.items():
            if token == recorded.get(key):
                continue
            report.duplicates += 1
            if line["pid"] not in killed:
                report.add(f"{key}: a result of pid {line['pid']} (never killed) was lost")
        for token, line in failures.items():
            if token in tried_tokens[key]:
                continue
            report.lost_failures += 1
            if line["pid"] not in killed:
                report.add(f"{key}: a failure in pid {line['pid']} (never killed) went unrecorded")


def check_observations(
    report: Report,
    world: World,
    run_rows: dict[str, Row],
    recorded: dict[str, str],
    failed_records: dict[str, str],
    executions: dict[str, list[Line]],
) -> None:
    """The handlers never received an outcome other than the recorded one, replays
    included; a failure they received was an execution's."""
    seen: set[str] = set()
    observations = read_jsonl(world.observed)
    report.observations = len(observations)
    for obs in observations:
        key = f"{obs['run_id']}:{obs['seq']}"
        if obs["key"] != key:
            report.add(f"{key}: the handler's idempotency key was {obs['key']}")
        seen.add(key)
        if not obs["failed"]:
            if obs["token"] != recorded.get(key):
                report.add(
                    f"{key}: the handler received {obs['token']} but the record holds"
                    f" {recorded.get(key)} (pid {obs['pid']})"
                )
            continue
        token = injected(obs["message"], key)
        if token not in {line["token"] for line in executions.get(key, []) if line["failed"]}:
            report.add(f"{key}: the handler received a failure no execution raised: {obs}")
        final = run_rows.get(obs["run_id"])
        if (
            key in failed_records
            and final is not None
            and obs["run_attempt"] == final[5]
            and obs["message"] != failed_records[key]
        ):
            report.add(
                f"{key}: the handler received {obs['message']!r} but the record holds"
                f" {failed_records[key]!r}"
            )
    unseen = (set(recorded) | set(failed_records)) - seen
    if unseen:
        report.add(f"recorded steps no handler received: {sorted(unseen)[:10]}")


def check_incidents(
    report: Report, db: DbReader, runs: dict[str, str], kills: Sequence[Kill]
) -> None:
    """Every run a kill orphaned was recovered once before it was orphaned again; runs with
    a restart policy were restarted after each recovery (unless a kill came first)."""
    orphaned: dict[str, list[float]] = defaultdict(list)
    for kill in kills:
        for run_id in kill.orphans:
            orphaned[run_id].append(kill.at)
    report.orphaned = sum(len(times) for times in orphaned.values())
    incidents: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run_id, kind, detail, at in db.rows(
        "SELECT run_id, kind, detail, at FROM incidents ORDER BY id"
    ):
        if kind not in ("recovered", "restarted"):
            report.add(f"{run_id}: unexpected incident {kind}: {detail}")
        incidents[(str(run_id), kind)].append(at)
    report.recovered = sum(len(t) for (_, kind), t in incidents.items() if kind == "recovered")
    report.restarted = sum(len(t) for (_, kind), t in incidents.items() if kind == "restarted")
    kill_times = sorted(kill.at for kill in kills)
    for run_id, agent in runs.items():
        recovered = sorted(incidents.get((run_id, "recovered"), []))
        restarted = sorted(incidents.get((run_id, "restarted"), []))
        bounds = [*orphaned.get(run_id, []), float("inf")]
        if recovered and recovered[0] < bounds[0]:
            report.add(f"{run_id}: recovered at {recovered[0]:.3f} before any kill orphaned it")
        for start, end in itertools.pairwise(bounds):
            inside = [at for at in recovered if start < at < end]
            if len(inside) != 1:
                report.add(
                    f"{run_id}: orphaned by the kill at {start:.3f}, then recovered"
                    f" {len(inside)} times before {'the end' if end == float('inf') else end}"
                )
        if agent not in chaos_app.RESTARTING:
            if restarted:
                report.add(f"{run_id}: restarted {len(restarted)} times without a restart policy")
            continue
        if len(restarted) > len(recovered):
            report.add(f"{run_id}: restarted {len(restarted)} times, recovered {len(recovered)}")
        for at, until in itertools.pairwise([*recovered, float("inf")]):
            if any(at <= r < until for r in restarted):
                continue
            # a kill right after the recovery may have prevented the restart's record
            next_kill = bisect_right(kill_times, at)
            if next_kill == len(kill_times) or kill_times[next_kill] > until:
                report.add(f"{run_id}: recovered at {at:.3f} but never restarted")


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_chaos_of_kills_and_failures_loses_nothing_and_records_each_outcome_once(
    world: World, db: DbReader, nodes: NodePool
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    specs = run_specs()
    runs = dict(specs)
    client = chaos_app.build_app(world.db_url)
    node = nodes.node(APP, world.db_url, world.log, args=NODE_ARGS, env=world.env())
    kills: list[Kill] = []
    try:
        feeder = Feeder(client, specs, BACKLOG)
        node.start()
        chaos_start = node.spawned_at
        chaos_end = chaos_start + CHAOS_SECONDS
        feeder.pace(chaos_start, CHAOS_SECONDS * FEED_SHARE)
        while True:
            kill_at = node.spawned_at + rng.uniform(*KILL_GAP)
            if kill_at > chaos_end:
                break
            feeder.feed_until(kill_at)  # the kill interval: the stream goes on meanwhile
            assert node.running, f"serve exited on its own\n{diagnose(node, db)}"
            pid, ready = node.pid, node.probe("ready")
            assert pid is not None
            at = node.kill()
            # The dead process changes nothing any more: what it still holds, it held at the kill.
            orphans = tuple(db.held_by(pid))
            kills.append(Kill(at, pid, at - node.spawned_at, ready, orphans))
            node.start()
        feeder.feed_until(chaos_end)
        assert feeder.created == len(specs), f"only {feeder.created} runs were started"
    finally:
        client.close()
    chaos = time.monotonic() - began

    node.wait_ready()
    draining = time.monotonic()
    wait_all_finished(node, db, len(runs))
    drained = time.monotonic() - draining
    code, took = node.terminate(timeout=40.0)
    assert code == 0, f"serve exited {code} on SIGTERM\n{diagnose(node, db)}"

    report = verify(world, db, runs, kills)
    hits = [kill for kill in kills if kill.orphans]
    print(
        f"\nseed {SEED}: {CHAOS_SECONDS:g}s of chaos, {len(kills)} SIGKILLs"
        f" ({sum(not k.ready for k in kills)} before the node was ready), {len(hits)} with"
        f" runs in flight ({report.orphaned} runs orphaned, at most"
        f" {max((len(k.orphans) for k in kills), default=0)} at once);"
        f" {len(runs)} runs x {chaos_app.STEPS} steps: {report.statuses['completed']} completed"
        f" ({report.retried_runs} on their second attempt), {report.statuses['dead']} dead;"
        f" {report.executions} step executions, {report.injected} injected failures"
        f" ({report.injected / max(report.executions, 1):.1%}), {report.step_retries} failed"
        f" tries recorded, {report.lost_failures} failures lost to kills;"
        f" {report.duplicates} duplicated effects; {report.recovered} recovered and"
        f" {report.restarted} restarted incidents; {report.observations} observations;"
        f" chaos {chaos:.1f}s, drain {drained:.1f}s, SIGTERM {took:.2f}s,"
        f" total {time.monotonic() - began:.1f}s"
    )
    assert not report.problems, (
        f"{len(report.problems)} violation(s) (seed {SEED}):\n"
        + "\n".join(report.problems[:40])
        + f"\n{diagnose(node, db)}"
    )
    # The incident log accounts for every kill that hit a run in flight.
    assert report.recovered >= len(hits), f"{report.recovered} recoveries for {len(hits)} hits"
    # The chaos must have been chaos: the workload is sized for that.
    assert len(kills) >= CHAOS_SECONDS / KILL_GAP[1] - 1, f"only {len(kills)} kills"
    assert len(hits) >= 0.5 * len(kills), f"only {len(hits)} of {len(kills)} kills hit runs"
    assert report.statuses["dead"] > 0, "no run exhausted its retries"
    assert report.retried_runs > 0, "no run completed on its second attempt"
    assert report.restarted > 0, "no run of the restart policy was restarted"
