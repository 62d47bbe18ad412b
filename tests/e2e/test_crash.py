"""Crash-proof end to end: real `nonstop serve` processes killed with SIGKILL, then restarted.

The contract under test (DESIGN.md section 3): a step's effect runs at least once, its
result is recorded exactly once, the handler never observes two different results for
one step, retry waits and durable sleeps survive restarts (neither early nor forgotten),
and a graceful SIGTERM loses and duplicates nothing.

Each test serves `crash_app.py` against a SQLite file, starts runs through an App in this
process, kills and restarts the node, and finally reads the file directly with sqlite3.
The kill delays are seeded (`NONSTOP_E2E_SEED`) so a failure names its seed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nonstop
from tests.e2e import crash_app
from tests.e2e.serve import DbReader, NodePool, Row, ServeNode, diagnose, read_jsonl, wait_until

APP = "tests/e2e/crash_app.py:app"
SEED = int(os.environ.get("NONSTOP_E2E_SEED", "20251123"))
TOLERANCE = 0.05  # seconds: clock reads on either side of a commit
NODE_ARGS = ("--poll-interval", "0.05", "--lease-ttl", "5")
CHAIN_NAMES = ("effect",) * crash_app.STEPS
RETRIER_NAMES = ("before", "flaky", "after")
SLEEPER_NAMES = ("before", "sleep", "after")


# -- the world of one test: files, database, nodes -------------------------------------------


@dataclass(frozen=True)
class World:
    """The files of one test: the database and the app's side-effect files."""

    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "x.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def effects(self) -> Path:
        return self.root / "effects.jsonl"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts.jsonl"

    @property
    def observed(self) -> Path:
        return self.root / "observed.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "serve.log"

    def env(self) -> dict[str, str]:
        return {
            crash_app.EFFECTS_ENV: str(self.effects),
            crash_app.ATTEMPTS_ENV: str(self.attempts),
            crash_app.OBSERVED_ENV: str(self.observed),
        }


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def db(world: World) -> DbReader:
    return DbReader(world.db_path)


def start_runs(world: World, runs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """Start (id, agent, input) runs through an App in this process; it creates the file."""
    client = crash_app.build_app(world.db_url)
    try:
        for run_id, agent, inputs in runs:
            client.start(agent, inputs, id=run_id)
    finally:
        client.close()


def serve_node(nodes: NodePool, world: World, *extra: str) -> ServeNode:
    return nodes.node(APP, world.db_url, world.log, args=[*NODE_ARGS, *extra], env=world.env())


def wait_all_completed(node: ServeNode, db: DbReader, count: int, timeout: float = 120.0) -> None:
    """Poll until `count` runs are completed; fail at once if one ends elsewhere or the
    node dies."""

    def done() -> bool:
        if not node.running:
            raise AssertionError(f"serve died\n{diagnose(node, db)}")
        statuses = db.statuses()
        stuck = {s: n for s, n in statuses.items() if s in ("dead", "paused", "cancelled")}
        assert not stuck, f"runs ended {stuck}\n{diagnose(node, db)}"
        return statuses["completed"] == count

    wait_until(
        done,
        timeout=timeout,
        what=f"{count} runs completed",
        interval=0.05,
        describe=lambda: diagnose(node, db),
    )


def stop_gracefully(node: ServeNode, db: DbReader, grace: float = 30.0) -> float:
    """SIGTERM the node; it must exit 0 within `grace`. Returns how long it took."""
    code, took = node.terminate(timeout=grace + 10.0)
    assert code == 0, f"serve exited {code} on SIGTERM\n{diagnose(node, db)}"
    assert took < grace, f"SIGTERM took {took:.2f}s (grace {grace}s)\n{diagnose(node, db)}"
    return took


# -- what every finished test must find on disk ---------------------------------------------


@dataclass(frozen=True)
class Verified:
    executions: int  # lines in the effects file
    duplicates: int  # executions beyond the first of a key
    duplicated_keys: int
    observations: int  # step results handlers received, replays included
    recovered: int  # `recovered` incidents (runs taken over from a dead node)


def verify(world: World, db: DbReader, runs: dict[str, Sequence[str]], node: ServeNode) -> Verified:
    """Check every invariant of the crash contract over the finished `runs` (run id -> step
    names by seq); raise one AssertionError listing every violation found."""
    problems: list[str] = []
    recorded: dict[str, dict[str, Any]] = {}  # key -> recorded step result
    effect_keys: set[str] = set()
    flaky_keys: set[str] = set()

    run_rows = {
        row[0]: row
        for row in db.rows("SELECT id, status, output, error, attempt, lease_owner FROM runs")
    }
    if set(run_rows) != set(runs):
        problems.append(f"runs in the database {sorted(run_rows)} != started {sorted(runs)}")
    steps: dict[str, list[Row]] = defaultdict(list)
    for step in db.rows(
        "SELECT run_id, seq, name, status, payload FROM steps ORDER BY run_id, seq"
    ):
        steps[step[0]].append(step)
    counts: dict[str, int] = dict(db.rows("SELECT run_id, count(*) FROM steps GROUP BY run_id"))

    for run_id, names in runs.items():
        found = run_rows.get(run_id)
        if found is None:
            continue
        _, status, output, error, attempt, owner = found
        if status != "completed" or error is not None or owner is not None:
            problems.append(f"{run_id}: status {status}, error {error}, lease owner {owner}")
        if attempt != 1:
            problems.append(f"{run_id}: run attempt {attempt}; a crash must not use one up")
        records = steps[run_id]
        if counts.get(run_id) != len(names):
            problems.append(f"{run_id}: {counts.get(run_id)} step records, not {len(names)}")
        seqs = [r[1] for r in records]
        if seqs != list(range(1, len(names) + 1)):
            problems.append(f"{run_id}: step seqs {seqs}")
        results = []
        for _, seq, name, step_status, payload in records:
            if seq > len(names) or name != names[seq - 1] or step_status != "completed":
                problems.append(f"{run_id}: step {seq} is {name!r} {step_status}")
                continue
            if name == "sleep":
                continue
            key = f"{run_id}:{seq}"
            result = json.loads(payload)
            if result.get("key") != key:
                problems.append(f"{run_id}: step {seq} got idempotency key {result.get('key')}")
            recorded[key] = result
            (flaky_keys if name == "flaky" else effect_keys).add(key)
            results.append(result)
        if output is None or json.loads(output) != {"observed": results}:
            problems.append(
                f"{run_id}: the handler's output is not the recorded step results in order:"
                f" {output} != {results}"
            )

    # Effects: at least once per step, and the recorded result came from one of them.
    effects = read_jsonl(world.effects)
    tokens: dict[str, set[str]] = defaultdict(set)
    for line in effects:
        tokens[line["key"]].add(line["token"])
    missing = effect_keys - set(tokens)
    extra = set(tokens) - effect_keys
    if missing or extra:
        problems.append(
            f"effects file keys: missing {sorted(missing)[:10]}, unexpected {sorted(extra)[:10]}"
        )
    for key in effect_keys & set(tokens):
        if recorded[key]["token"] not in tokens[key]:
            problems.append(f"{key}: recorded token comes from no execution of the effect")
    per_key = Counter(line["key"] for line in effects)

    # The flaky step: its successes are in the attempts file.
    succeeded: dict[str, set[str]] = defaultdict(set)
    for line in read_jsonl(world.attempts):
        if not line["failed"]:
            succeeded[line["key"]].add(line["token"])
    if set(succeeded) != flaky_keys:
        problems.append(f"flaky keys that succeeded {sorted(succeeded)} != {sorted(flaky_keys)}")
    for key in flaky_keys:
        if recorded[key]["token"] not in succeeded.get(key, set()):
            problems.append(f"{key}: recorded token comes from no successful flaky execution")

    # The handler never observed a result other than the recorded one, replays included.
    observations = [obs for obs in read_jsonl(world.observed) if obs["kind"] == "result"]
    seen: set[str] = set()
    for obs in observations:
        key = f"{obs['run_id']}:{obs['seq']}"
        seen.add(key)
        if obs["expected_key"] != key or obs["key"] != key:
            problems.append(f"{key}: ctx.idempotency_key {obs['expected_key']}, step {obs['key']}")
        if key not in recorded or obs["token"] != recorded[key]["token"]:
            problems.append(
                f"{key}: the handler observed token {obs['token']} but the record holds"
                f" {recorded.get(key, {}).get('token')} (pid {obs['pid']})"
            )
    if seen != set(recorded):
        problems.append(f"steps never observed by a handler: {sorted(set(recorded) - seen)[:10]}")

    # Only the flaky step may have failed tries.
    failed_tries = db.rows("SELECT run_id, seq, name FROM step_attempts WHERE name != 'flaky'")
    if failed_tries:
        problems.append(f"unexpected failed step attempts: {failed_tries[:10]}")

    assert not problems, (
        f"{len(problems)} violation(s):\n" + "\n".join(problems[:30]) + f"\n{diagnose(node, db)}"
    )
    recovered = db.rows("SELECT count(*) FROM incidents WHERE kind = 'recovered'")[0][0]
    return Verified(
        executions=len(effects),
        duplicates=len(effects) - len(per_key),
        duplicated_keys=sum(1 for n in per_key.values() if n > 1),
        observations=len(observations),
        recovered=recovered,
    )


# -- SIGKILL at many points ------------------------------------------------------------------

KILLS = 50
CHAIN_RUNS = 40  # half under an async handler, half under a sync one
CHAIN_CONCURRENCY = 4  # few runs at a time, so the work spans all the kills
CHAIN_STEP_DELAY = 0.08  # each half of an effect step takes uniform(0, this) seconds
STARTUP_KILLS = 0.15  # share of kills made while the node starts, before it is ready


@dataclass(frozen=True)
class Kill:
    phase: str  # "startup": n s after spawn; "working": n s after the node was ready
    delay: float
    at: float
    held: int  # runs leased to the killed process at that moment
    steps: int  # step records in the database after the kill


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_fifty_points_loses_nothing_and_records_each_step_once(
    world: World, db: DbReader, nodes: NodePool
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    runs: dict[str, Sequence[str]] = {}
    specs: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(CHAIN_RUNS):
        agent = "chain_async" if i % 2 == 0 else "chain_sync"
        run_id = f"{agent}-{i:02d}"
        runs[run_id] = CHAIN_NAMES
        specs.append((run_id, agent, {"delay": CHAIN_STEP_DELAY}))
    start_runs(world, specs)
    node = serve_node(nodes, world, "--concurrency", str(CHAIN_CONCURRENCY))

    kills: list[Kill] = []
    while len(kills) < KILLS:
        node.start()
        if rng.random() < STARTUP_KILLS:
            phase, delay = "startup", rng.uniform(0.05, 0.35)
            kill_at = node.spawned_at + delay
        else:
            phase, delay = "working", rng.uniform(0.05, 0.6)
            kill_at = node.wait_ready() + delay
        time.sleep(max(0.0, kill_at - time.time()))  # the kill delay itself, not a sync
        pid = node.pid
        at = node.kill()
        kills.append(Kill(phase, delay, at, len(db.held_by(pid)), db.step_count()))

    killing = time.monotonic() - began
    node.start()
    node.wait_ready()
    wait_all_completed(node, db, len(runs))
    stop_gracefully(node, db)
    verified = verify(world, db, runs, node)

    working = [k for k in kills if k.phase == "working"]
    busy = [k for k in kills if k.held > 0]
    progress = [k.steps for k in kills]
    print(
        f"\nseed {SEED}: {len(kills)} SIGKILLs ({len(working)} while working,"
        f" {len(kills) - len(working)} during startup), {len(busy)} with runs in flight;"
        f" {len(runs)} runs x {crash_app.STEPS} steps; step records after each kill:"
        f" {progress}; {verified.executions} effect executions, {verified.duplicates}"
        f" duplicates over {verified.duplicated_keys} keys; {verified.recovered} recoveries;"
        f" {verified.observations} observations; kill phase {killing:.1f}s,"
        f" total {time.monotonic() - began:.1f}s"
    )
    # The kills must have hit work, not an idle node: the workload is sized for that.
    assert len(busy) >= 0.8 * len(working), f"only {len(busy)} kills hit runs in flight"
    assert progress[len(progress) // 2] < len(runs) * crash_app.STEPS, (
        f"all work was done by the middle of the kills: {progress}"
    )


# -- kills timed on what the runs are doing ---------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """The SIGKILLs of a test and when a ready node was up."""

    kills: list[tuple[float, list[str]]]  # when, and the runs caught in the act
    up: list[tuple[float, float]]  # (ready, killed) per node process; the last one lives on

    def available(self, at: float, stay: float = 0.0) -> float:
        """The first moment at or after `at` from which a ready node stayed up `stay` s (long
        enough to take a due run: a node killed just after `at` could not)."""
        return min(max(at, ready) for ready, killed in self.up if killed > max(at, ready) + stay)

    def restarted_within(self, start: float, end: float) -> bool:
        """A node was killed after `start` and its successor was ready before `end`."""
        return any(
            start < killed < end and ready < end
            for (_, killed), (ready, _) in itertools.pairwise(self.up)
        )


def kill_on_cue(
    node: ServeNode,
    db: DbReader,
    rng: random.Random,
    *,
    cue: Callable[[], str | None],
    caught: Callable[[float], list[str]],
    kills: int,
    delay: float,
) -> Timeline:
    """Start `node`; up to `kills` times wait for `cue` to say "kill", wait a random 0 to
    `delay` s more, SIGKILL the node and restart it. Stop early when `cue` says "done"."""
    node.start()
    ready = node.wait_ready()
    made: list[tuple[float, list[str]]] = []
    up: list[tuple[float, float]] = []
    while len(made) < kills:
        found = wait_until(
            cue,
            timeout=30,
            what="the moment to kill",
            interval=0.01,
            describe=lambda: diagnose(node, db),
        )
        if found == "done":
            break
        time.sleep(rng.uniform(0.0, delay))  # the kill delay itself, not a sync
        at = node.kill()
        up.append((ready, at))
        made.append((at, caught(at)))
        node.start()
        ready = node.wait_ready()
    up.append((ready, math.inf))
    return Timeline(made, up)


# -- SIGKILL during a retry backoff -------------------------------------------------------------

RETRY_RUNS = 8
RETRY_STAGGER = 0.25  # run i's first step takes i * this, so backoffs cover a span of time
MAX_BACKOFF_KILLS = 6
IN_BACKOFF = (
    "SELECT a.run_id || ' (' || r.status || ')' FROM step_attempts a"
    " JOIN runs r ON r.id = a.run_id WHERE a.retry_at > ? ORDER BY a.run_id"
)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("agent", "retry", "fresh"),
    [
        # 1.5 s: the run parks as `sleeping` and is due again at the retry time.
        pytest.param("retrier", crash_app.FLAKY_RETRY, 0.3, id="parked"),
        # The longest in-memory wait: the run stays `running`, so the restarted node takes
        # it back at once and must wait out the rest itself.
        pytest.param("retrier_inline", crash_app.INLINE_RETRY, 0.15, id="in-memory"),
    ],
)
def test_sigkill_during_retry_backoff_neither_retries_early_nor_forgets(
    agent: str, retry: nonstop.Retry, fresh: float, world: World, db: DbReader, nodes: NodePool
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED + 1)
    wait = float(retry.initial)
    runs: dict[str, Sequence[str]] = {f"{agent}-{i}": RETRIER_NAMES for i in range(RETRY_RUNS)}
    start_runs(
        world, [(run_id, agent, {"stagger": i * RETRY_STAGGER}) for i, run_id in enumerate(runs)]
    )

    def cue() -> str | None:
        """'kill' when a try failed at most `fresh` s ago, 'done' when none can fail again."""
        if db.rows(IN_BACKOFF, (time.time() + wait - fresh,)):
            return "kill"
        failures: dict[str, int] = dict(
            db.rows("SELECT run_id, count(*) FROM step_attempts GROUP BY run_id")
        )
        statuses: dict[str, str] = dict(db.rows("SELECT id, status FROM runs"))
        if all(
            status == "completed" or failures.get(run_id, 0) >= crash_app.FLAKY_FAILURES
            for run_id, status in statuses.items()
        ):
            return "done"
        return None

    node = serve_node(nodes, world)
    timeline = kill_on_cue(
        node,
        db,
        rng,
        cue=cue,
        caught=lambda at: [row[0] for row in db.rows(IN_BACKOFF, (at,))],
        kills=MAX_BACKOFF_KILLS,
        delay=fresh,
    )
    wait_all_completed(node, db, len(runs))
    stop_gracefully(node, db)
    verified = verify(world, db, runs, node)

    problems: list[str] = []
    executions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in read_jsonl(world.attempts):
        executions[line["key"]].append(line)
    spanning = restarted_early = 0
    for run_id in runs:
        tries = db.rows(
            "SELECT run_attempt, attempt, finished_at, retry_at FROM step_attempts"
            " WHERE run_id = ? AND seq = 2 ORDER BY attempt",
            (run_id,),
        )
        lines = sorted(executions[f"{run_id}:2"], key=lambda line: line["started"])
        recorded = db.rows("SELECT attempts FROM steps WHERE run_id = ? AND seq = 2", (run_id,))
        if not 1 <= len(tries) <= crash_app.FLAKY_FAILURES:
            problems.append(f"{run_id}: {len(tries)} failed tries recorded: {tries}")
        if [t[1] for t in tries] != list(range(1, len(tries) + 1)) or any(t[0] != 1 for t in tries):
            problems.append(f"{run_id}: failed tries numbered {tries}")
        if recorded != [(len(tries) + 1,)]:
            problems.append(f"{run_id}: the step record counts {recorded} tries, {len(tries)=}")
        if [line["n"] for line in lines] != list(range(1, len(lines) + 1)):
            problems.append(f"{run_id}: executions of the flaky step {lines}")
        for _, attempt, finished_at, retry_at in tries:
            if retry_at is None or abs(retry_at - finished_at - wait) > 1e-3:
                problems.append(f"{run_id}: try {attempt} ended {finished_at}, retry at {retry_at}")
                continue
            failure = max(
                (line for line in lines if line["failed"] and line["ended"] <= finished_at),
                key=lambda line: line["ended"],
                default=None,
            )
            later = [line for line in lines if line["started"] > finished_at]
            if failure is None or not later:
                problems.append(f"{run_id}: try {attempt} has no execution before/after it")
                continue
            retried = later[0]["started"]
            if retried < retry_at - TOLERANCE or retried < failure["ended"] + wait - TOLERANCE:
                problems.append(
                    f"{run_id}: try {attempt} failed at {failure['ended']:.3f}, recorded"
                    f" retry at {retry_at:.3f}, but the next try started at {retried:.3f}"
                )
            spanning += any(finished_at < at < retry_at for at, _ in timeline.kills)
            restarted_early += timeline.restarted_within(finished_at, retry_at)
    assert not problems, "\n".join(problems) + f"\n{diagnose(node, db)}"

    in_backoff = [caught for _, caught in timeline.kills if caught]
    states = Counter(run.rpartition(" (")[2][:-1] for caught in in_backoff for run in caught)
    print(
        f"\n{agent}, seed {SEED + 1}: {len(timeline.kills)} SIGKILLs, {len(in_backoff)} with"
        f" runs in a {wait:g}s retry backoff ({dict(states)}); {spanning} recorded backoffs"
        f" spanned a crash, {restarted_early} with the new node up before the retry was due;"
        f" {verified.duplicates} duplicate effects; total {time.monotonic() - began:.1f}s"
    )
    assert len(in_backoff) >= 3, f"only {len(in_backoff)} kills landed in a backoff"
    assert restarted_early >= 1, "no restarted node was up before a retry was due"


# -- SIGKILL during a durable sleep -------------------------------------------------------------

SLEEP_RUNS = 8
SLEEP_STAGGER = 0.3
MAX_SLEEP_KILLS = 8
COMMIT_WINDOW = 0.15  # a kill this soon after ctx.sleep was called may precede its commit
LATE_SLACK = 0.5  # a woken run's next step starts within this of a node being able to run it


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_during_durable_sleep_keeps_the_original_wake_time(
    world: World, db: DbReader, nodes: NodePool
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED + 2)
    sleep = crash_app.SLEEP_SECONDS
    runs: dict[str, Sequence[str]] = {f"sleeper-{i}": SLEEPER_NAMES for i in range(SLEEP_RUNS)}
    start_runs(
        world,
        [(run_id, "sleeper", {"stagger": i * SLEEP_STAGGER}) for i, run_id in enumerate(runs)],
    )

    def asleep(partial: bool = True) -> tuple[dict[str, float], set[str]]:
        """When each run's handler first called ctx.sleep, and the runs past their sleep
        (whatever the runtime does: read from what the app wrote)."""
        first: dict[str, float] = {}
        for line in read_jsonl(world.observed, partial=partial):
            if line["kind"] == "sleep":
                first.setdefault(line["run_id"], line["at"])
        effects = read_jsonl(world.effects, partial=partial)
        awake = {line["key"].rpartition(":")[0] for line in effects if line["key"].endswith(":3")}
        return first, awake

    def cue() -> str | None:
        """'kill' when a run fell asleep moments ago, 'done' when all have."""
        now = time.time()
        first, awake = asleep()
        ages = [now - at for run_id, at in first.items() if run_id not in awake]
        if any(COMMIT_WINDOW < age < COMMIT_WINDOW + 0.35 for age in ages):
            return "kill"
        if len(first) == len(runs) and all(age > COMMIT_WINDOW + 0.35 for age in ages):
            return "done"
        return None

    def caught(at: float) -> list[str]:
        first, awake = asleep()
        return sorted(run_id for run_id, t in first.items() if t < at and run_id not in awake)

    node = serve_node(nodes, world)
    timeline = kill_on_cue(node, db, rng, cue=cue, caught=caught, kills=MAX_SLEEP_KILLS, delay=0.35)
    wait_all_completed(node, db, len(runs))
    stop_gracefully(node, db)
    verified = verify(world, db, runs, node)

    problems: list[str] = []
    first, _ = asleep(partial=False)
    starts: dict[str, list[float]] = defaultdict(list)
    for line in read_jsonl(world.effects):
        starts[line["key"]].append(line["started"])
    kills = [at for at, _ in timeline.kills]
    spanning = discriminating = unsure = 0
    lateness: list[float] = []
    for run_id in runs:
        sleeps = db.rows(
            "SELECT seq, payload, started_at FROM steps WHERE run_id = ? AND name = 'sleep'",
            (run_id,),
        )
        if len(sleeps) != 1 or sleeps[0][0] != 2 or run_id not in first:
            problems.append(f"{run_id}: sleep records {sleeps}, first call {first.get(run_id)}")
            continue
        _, payload, slept_at = sleeps[0]
        until = float(json.loads(payload)["until"])
        if abs(until - slept_at - sleep) > 1e-3 or slept_at < first[run_id] - TOLERANCE:
            problems.append(f"{run_id}: called at {first[run_id]}, slept at {slept_at} to {until}")
        after = sorted(starts[f"{run_id}:3"])
        if not after:
            problems.append(f"{run_id}: the step after the sleep never ran")
            continue
        if after[0] < until - TOLERANCE:
            problems.append(f"{run_id}: woke early: next step at {after[0]:.3f}, until {until:.3f}")
        start = first[run_id]
        if any(start <= at <= start + COMMIT_WINDOW for at in kills):
            unsure += 1  # killed before the sleep may have been committed: it may start over
            continue
        due = timeline.available(start + sleep, LATE_SLACK)
        lateness.append(after[0] - due)
        if after[0] > due + LATE_SLACK:
            problems.append(
                f"{run_id}: the sleep was not kept: called at {start:.3f} for {sleep}s, a node"
                f" could continue the run at {due:.3f}, but it continued at {after[0]:.3f}"
            )
        crashed = [at for at in kills if start < at < start + sleep]
        spanning += bool(crashed)
        if crashed:
            # Had the sleep started over on recovery, the next step would start this late.
            discriminating += timeline.available(max(crashed)) + sleep > due + LATE_SLACK
    assert not problems, "\n".join(problems) + f"\n{diagnose(node, db)}"

    caught_asleep = [victims for _, victims in timeline.kills if victims]
    print(
        f"\nseed {SEED + 2}: {len(timeline.kills)} SIGKILLs, {len(caught_asleep)} with runs"
        f" asleep ({sum(map(len, caught_asleep))} sleeps interrupted); {spanning} sleeps"
        f" spanned a crash, {discriminating} where a sleep started over would have shown,"
        f" {unsure} killed right at the sleep call; woken runs continued at most"
        f" {max(lateness):.3f}s after a node could; {verified.duplicates} duplicate effects;"
        f" total {time.monotonic() - began:.1f}s"
    )
    assert len(caught_asleep) >= 3, f"only {len(caught_asleep)} kills landed while runs slept"
    assert discriminating >= 1, "no sleep spanned a crash in a way the check could see"


# -- graceful SIGTERM ---------------------------------------------------------------------------


def chain_runs(count: int, delay: float) -> tuple[dict[str, Sequence[str]], list[Any]]:
    runs: dict[str, Sequence[str]] = {}
    specs: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(count):
        agent = "chain_async" if i % 2 == 0 else "chain_sync"
        runs[f"{agent}-{i:02d}"] = CHAIN_NAMES
        specs.append((f"{agent}-{i:02d}", agent, {"delay": delay}))
    return runs, specs


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_drains_runs_in_flight_and_restart_finishes_the_rest(
    world: World, db: DbReader, nodes: NodePool
) -> None:
    began = time.monotonic()
    grace = 15.0
    runs, specs = chain_runs(16, 0.03)
    start_runs(world, specs)
    node = serve_node(nodes, world, "--concurrency", "4", "--grace-period", str(grace))
    node.start()
    node.wait_ready()
    wait_until(
        lambda: len(db.held_by(node.pid)) == 4 and db.step_count() >= 30,
        timeout=30,
        what="four runs in flight",
        describe=lambda: diagnose(node, db),
    )
    in_flight = db.held_by(node.pid)
    announced: list[str] = []  # what the node's row in the store says during the drain
    watching = threading.Event()

    def watch_node_row() -> None:
        while not watching.is_set():
            announced.extend(state for (state,) in db.rows("SELECT state FROM nodes"))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_node_row)
    watcher.start()
    try:
        took = stop_gracefully(node, db, grace)
    finally:
        watching.set()
        watcher.join()

    log = node.log_text()
    assert '"shutting_down"' in log and '"node_stopped"' in log, diagnose(node, db)
    assert "shutting_down" in announced, f"the drain was not announced in the store: {announced}"
    assert db.rows("SELECT id FROM nodes") == [], "a stopped node must leave the nodes table"
    statuses: dict[str, str] = dict(db.rows("SELECT id, status FROM runs"))
    owners = db.rows("SELECT id FROM runs WHERE lease_owner IS NOT NULL")
    assert not owners, f"leases left after a graceful stop: {owners}\n{diagnose(node, db)}"
    assert all(statuses[run_id] == "completed" for run_id in in_flight), (
        f"runs in flight at SIGTERM were not drained: {in_flight}\n{diagnose(node, db)}"
    )
    assert set(statuses.values()) <= {"completed", "pending"}, diagnose(node, db)
    left = [run_id for run_id, status in statuses.items() if status == "pending"]
    assert left, "nothing was left for the restart; the test needs more runs"

    node.start()
    node.wait_ready()
    wait_all_completed(node, db, len(runs))
    stop_gracefully(node, db, grace)
    verified = verify(world, db, runs, node)
    print(
        f"\nSIGTERM drained {len(in_flight)} runs in {took:.2f}s, {len(left)} continued after"
        f" the restart; {verified.duplicates} duplicate effects;"
        f" total {time.monotonic() - began:.1f}s"
    )
    assert verified.duplicates == 0, "a graceful stop with time to drain repeated an effect"
    assert verified.recovered == 0, "a graceful stop left runs to recover"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_past_the_grace_period_hands_runs_back_intact(
    world: World, db: DbReader, nodes: NodePool
) -> None:
    began = time.monotonic()
    grace = 0.5
    runs, specs = chain_runs(8, 0.12)
    start_runs(world, specs)
    node = serve_node(nodes, world, "--grace-period", str(grace))
    node.start()
    node.wait_ready()
    wait_until(
        lambda: len(db.held_by(node.pid)) == len(runs) and db.step_count() >= 2 * len(runs),
        timeout=30,
        what="every run in flight with some steps done",
        describe=lambda: diagnose(node, db),
    )
    took = stop_gracefully(node, db, grace + 2.5)

    released = db.rows(
        "SELECT id, status, lease_owner, wait_reason FROM runs WHERE status != 'completed'"
    )
    assert released, "every run finished within the grace period; make the runs longer"
    wrong = [
        row
        for row in released
        if row[1] != "pending" or row[2] is not None or "shutting down" not in (row[3] or "")
    ]
    assert not wrong, f"runs not handed back as pending: {wrong}\n{diagnose(node, db)}"

    node.start()
    node.wait_ready()
    wait_all_completed(node, db, len(runs))
    stop_gracefully(node, db)
    verified = verify(world, db, runs, node)
    print(
        f"\nSIGTERM with a {grace}s grace period exited 0 in {took:.2f}s and handed back"
        f" {len(released)} runs; {verified.duplicates} duplicate effects after the restart;"
        f" total {time.monotonic() - began:.1f}s"
    )
    # At most the one step each released run had in flight may have run twice.
    assert verified.duplicates <= len(released), verified
    assert verified.recovered == 0, "a graceful stop left runs to recover"
