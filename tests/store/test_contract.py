"""The Store contract, written against the protocol: every backend must pass all of it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from nonstop.errors import InvalidState, RunNotFound, StoreError
from nonstop.models import Attempt, Incident, RunStatus, StepRecord, StepStatus, Stop, checksum
from nonstop.policies.breaker import BreakerState
from nonstop.policies.ratelimit import Rate
from nonstop.store import LeaseLost, NewRun, Store
from nonstop.store.base import NodeInfo, Routing

from .conftest import StoreFactory

T0 = 1_800_000_000.0
AGENTS = ["a", "b"]


def new(run_id: str, agent: str = "a", **fields: object) -> NewRun:
    return NewRun(id=run_id, agent=agent, input={"n": 1}, **fields)  # type: ignore[arg-type]


def record(run_id: str, seq: int, status: StepStatus = StepStatus.COMPLETED) -> StepRecord:
    payload = json.dumps({"seq": seq})
    return StepRecord(
        run_id,
        seq,
        f"step{seq}",
        status,
        payload,
        checksum(seq, f"step{seq}", status, payload),
        1,
        T0,
        T0 + 0.5,
    )


async def claim_one(store: Store, owner: str = "n1", now: float = T0, ttl: float = 30.0) -> str:
    claimed = await store.claim_runs(owner, agents=AGENTS, limit=1, now=now, lease_ttl=ttl)
    assert len(claimed) == 1
    return claimed[0].run.id


def test_create_run_is_idempotent(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        first, created = await store.create_run(new("r1"), T0)
        again, created_again = await store.create_run(
            NewRun(id="r1", agent="b", input={"other": True}), T0 + 1
        )
        assert created and not created_again
        assert again == first  # the existing run, unchanged
        assert first.status == RunStatus.PENDING and first.attempt == 1
        assert first.input == {"n": 1}
        assert await store.get_run("r1") == first
        assert await store.get_run("nope") is None

    runner.run(go())


def test_concurrent_creates_from_several_connections_make_one_run(
    store: Store, another_store: StoreFactory, runner: asyncio.Runner
) -> None:
    stores = [store, another_store(), another_store()]

    async def go() -> list[bool]:
        calls = [s.create_run(new(f"r{i % 10}"), T0) for i in range(60) for s in stores]
        return [created for _, created in await asyncio.gather(*calls)]

    created = runner.run(go())
    assert created.count(True) == 10
    assert len(runner.run(store.list_runs(limit=0))) == 10


def test_list_runs_filters_newest_first(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        for i in range(5):
            await store.create_run(new(f"r{i}", agent="a" if i % 2 else "b"), T0 + i)
        assert [r.id for r in await store.list_runs(limit=0)] == ["r4", "r3", "r2", "r1", "r0"]
        assert [r.id for r in await store.list_runs(agent="a")] == ["r3", "r1"]
        assert len(await store.list_runs(limit=2)) == 2
        await claim_one(store, now=T0 + 10)
        assert [r.id for r in await store.list_runs(status=RunStatus.RUNNING)] == ["r0"]

    runner.run(go())


def test_a_run_is_leased_to_one_owner_at_a_time(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        await store.create_run(new("r1"), T0)
        first = await store.claim_runs("n1", agents=AGENTS, limit=10, now=T0, lease_ttl=30)
        assert [c.run.id for c in first] == ["r1"] and not first[0].recovered
        assert first[0].run.status == RunStatus.RUNNING and first[0].run.lease_owner == "n1"
        assert (
            await store.claim_runs("n2", agents=AGENTS, limit=10, now=T0 + 29, lease_ttl=30) == []
        )
        # after expiry another owner recovers it, and an incident says so
        later = await store.claim_runs("n2", agents=AGENTS, limit=10, now=T0 + 31, lease_ttl=30)
        assert [c.run.id for c in later] == ["r1"] and later[0].recovered
        kinds = [i.kind for i in await store.list_incidents("r1")]
        assert kinds == ["recovered"]
        with pytest.raises(LeaseLost):
            await store.record_step("n1", record("r1", 1))

    runner.run(go())


def test_claims_respect_agents_limit_and_due_time(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        await store.create_run(new("early"), T0)
        await store.create_run(new("other", agent="zzz"), T0)
        await store.create_run(new("later", not_before=T0 + 100), T0)
        await store.create_run(new("second"), T0 + 1)
        claimed = await store.claim_runs("n", agents=AGENTS, limit=1, now=T0 + 5, lease_ttl=300)
        assert [c.run.id for c in claimed] == ["early"]
        claimed = await store.claim_runs("n", agents=AGENTS, limit=9, now=T0 + 5, lease_ttl=300)
        assert [c.run.id for c in claimed] == ["second"]
        assert await store.next_due(AGENTS) == T0 + 100  # "later" wakes before leases expire
        assert await store.next_due(["zzz"]) == T0
        claimed = await store.claim_runs("n", agents=AGENTS, limit=9, now=T0 + 100, lease_ttl=30)
        assert [c.run.id for c in claimed] == ["later"]

    runner.run(go())


def test_concurrent_claimers_never_share_a_run(
    store: Store, another_store: StoreFactory, runner: asyncio.Runner
) -> None:
    stores = [store, another_store(), another_store()]

    async def go() -> list[str]:
        for i in range(150):
            await store.create_run(new(f"r{i:03}"), T0)

        async def claimer(s: Store, owner: str) -> list[str]:
            got: list[str] = []
            while True:
                batch = await s.claim_runs(owner, agents=AGENTS, limit=7, now=T0, lease_ttl=60)
                if not batch:
                    return got
                got += [c.run.id for c in batch]

        results = await asyncio.gather(*(claimer(s, f"n{i}") for i, s in enumerate(stores)))
        return [run_id for got in results for run_id in got]

    claimed = runner.run(go())
    assert sorted(claimed) == [f"r{i:03}" for i in range(150)]


def test_steps_are_recorded_once_and_only_by_the_lease_holder(
    store: Store, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        await store.create_run(new("r1"), T0)
        await claim_one(store)
        with pytest.raises(LeaseLost):
            await store.record_step("intruder", record("r1", 1))
        assert await store.record_step("n1", record("r1", 1)) == Stop.NONE
        with pytest.raises(StoreError, match="already recorded"):
            await store.record_step("n1", record("r1", 1))
        history = await store.load_history("r1")
        assert history.steps[1] == record("r1", 1)
        run = await store.get_run("r1")
        assert run is not None and run.heartbeat_at == T0 + 0.5  # a step counts as a beat
        quiet = replace(record("r1", 2), finished_at=T0 + 9)
        assert await store.record_step("n1", quiet, beat=False) == Stop.NONE
        run = await store.get_run("r1")
        assert run is not None and run.heartbeat_at == T0 + 0.5  # recorded, no beat written
        assert list((await store.load_history("r1")).steps) == [1, 2]

    runner.run(go())


def test_attempts_belong_to_the_current_run_attempt(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        await store.create_run(new("r1"), T0)
        await claim_one(store)
        tried = Attempt("r1", 1, 1, 1, "step1", {"type": "E", "message": "x"}, T0, T0 + 1, T0 + 5)
        await store.record_attempt("n1", tried)
        assert (await store.load_history("r1")).attempts == {1: [tried]}
        await store.record_step("n1", record("r1", 1))
        await store.record_step("n1", record("r1", 2, StepStatus.FAILED))
        await store.retry_run("n1", "r1", wake_at=T0 + 10, error={"message": "boom"}, now=T0 + 2)
        run = await store.get_run("r1")
        assert run is not None
        assert (run.status, run.attempt, run.wake_at) == (RunStatus.SLEEPING, 2, T0 + 10)
        assert run.lease_owner is None and run.error == {"message": "boom"}
        history = await store.load_history("r1")
        assert list(history.steps) == [1]  # the failed step is dropped, the completed one kept
        assert history.attempts == {}  # attempts of the earlier run attempt are not replayed
        assert await store.list_attempts("r1") == [tried]  # but still shown
        assert await store.claim_runs("n1", agents=AGENTS, limit=5, now=T0 + 9, lease_ttl=30) == []
        assert len(await store.claim_runs("n1", agents=AGENTS, limit=5, now=T0 + 10, lease_ttl=30))

    runner.run(go())


def test_park_commits_the_record_and_releases_the_lease_together(
    store: Store, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        await store.create_run(new("r1"), T0)
        await claim_one(store)
        with pytest.raises(LeaseLost):
            await store.park_run(
                "intruder",
                "r1",
                status=RunStatus.SLEEPING,
                wake_at=T0 + 60,
                reason="x",
                now=T0,
                record=record("r1", 1),
            )
        assert (await store.load_history("r1")).steps == {}  # nothing half-written
        await store.park_run(
            "n1",
            "r1",
            status=RunStatus.SLEEPING,
            wake_at=T0 + 60,
            reason="sleeping until later",
            now=T0,
            record=record("r1", 1),
        )
        run = await store.get_run("r1")
        assert run is not None
        assert (run.status, run.wake_at, run.wait_reason) == (
            RunStatus.SLEEPING,
            T0 + 60,
            "sleeping until later",
        )
        assert run.lease_owner is None
        assert list((await store.load_history("r1")).steps) == [1]
        assert await store.next_due(AGENTS) == T0 + 60

    runner.run(go())


def test_finish_and_heartbeat(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        await store.create_run(new("r1"), T0)
        await claim_one(store)
        assert await store.heartbeat("n1", "r1", "busy", {"items": 3}, T0 + 1) == Stop.NONE
        run = await store.get_run("r1")
        assert run is not None and run.heartbeat == {"status": "busy", "items": 3}
        with pytest.raises(LeaseLost):
            await store.heartbeat("n2", "r1", "busy", {}, T0 + 1)
        await store.finish_run(
            "n1", "r1", status=RunStatus.COMPLETED, now=T0 + 2, output={"ok": [1, 2]}
        )
        run = await store.get_run("r1")
        assert run is not None
        assert (run.status, run.output, run.finished_at) == (
            RunStatus.COMPLETED,
            {"ok": [1, 2]},
            T0 + 2,
        )
        assert run.lease_owner is None
        with pytest.raises(LeaseLost):
            await store.finish_run("n1", "r1", status=RunStatus.DEAD, now=T0 + 3)
        assert await store.next_due(AGENTS) is None

    runner.run(go())


def test_cancel_idle_at_once_and_running_by_flag(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        await store.create_run(new("idle"), T0 + 1)
        await store.create_run(new("busy"), T0)
        await claim_one(store)
        idle = await store.request_cancel("idle", T0 + 2)
        assert idle.status == RunStatus.CANCELLED
        busy = await store.request_cancel("busy", T0 + 2)
        assert busy.status == RunStatus.RUNNING and busy.cancel_requested
        assert await store.record_step("n1", record("busy", 1)) == Stop.CANCEL
        assert await store.renew_leases("n1", now=T0 + 3, lease_ttl=30) == {"busy": Stop.CANCEL}
        await store.finish_run("n1", "busy", status=RunStatus.CANCELLED, now=T0 + 4)
        done = await store.request_cancel("busy", T0 + 5)
        assert done.status == RunStatus.CANCELLED and not done.cancel_requested
        with pytest.raises(RunNotFound):
            await store.request_cancel("nope", T0)

    runner.run(go())


def test_pause_idle_at_once_and_running_by_flag_then_resume(
    store: Store, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        await store.create_run(new("idle"), T0 + 1)
        await store.create_run(new("busy"), T0)
        await claim_one(store)
        idle = await store.request_pause("idle", "paused by test", T0 + 2)
        assert (idle.status, idle.wait_reason) == (RunStatus.PAUSED, "paused by test")
        assert await store.claim_runs("n1", agents=AGENTS, limit=9, now=T0 + 9, lease_ttl=30) == []
        busy = await store.request_pause("busy", "paused by test", T0 + 2)
        assert busy.status == RunStatus.RUNNING and busy.pause_requested
        assert await store.record_step("n1", record("busy", 1)) == Stop.PAUSE
        assert await store.heartbeat("n1", "busy", "ok", {}, T0 + 3) == Stop.PAUSE
        assert await store.renew_leases("n1", now=T0 + 3, lease_ttl=30) == {"busy": Stop.PAUSE}
        # the run parks as paused with the request done
        await store.park_run(
            "n1", "busy", status=RunStatus.PAUSED, wake_at=None, reason="parked", now=T0 + 5
        )
        parked = await store.get_run("busy")
        assert parked is not None and parked.stop_requested == Stop.NONE
        resumed = await store.resume_run("idle", T0 + 6)
        assert resumed.status == RunStatus.PENDING
        (claimed,) = await store.claim_runs("n1", agents=AGENTS, limit=9, now=T0 + 7, lease_ttl=30)
        assert claimed.run.id == "idle" and claimed.run.stop_requested == Stop.NONE
        await store.finish_run("n1", "idle", status=RunStatus.COMPLETED, now=T0 + 8)
        with pytest.raises(InvalidState):
            await store.request_pause("idle", "too late", T0 + 9)
        with pytest.raises(RunNotFound):
            await store.request_pause("nope", "who", T0)

    runner.run(go())


def test_a_run_asked_to_pause_pauses_whatever_it_parks_for(
    store: Store, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        for run_id in ("sleeper", "retrier"):
            await store.create_run(new(run_id), T0)
            await claim_one(store)
            await store.request_pause(run_id, "paused by test", T0 + 1)
        # asked between its last check and its own park: the park becomes the pause, the
        # timer it records is kept for after the resume
        timer = replace(record("sleeper", 1), name="sleep")
        timer = replace(timer, checksum=checksum(1, "sleep", timer.status, timer.payload))
        await store.park_run(
            "n1", "sleeper", status=RunStatus.SLEEPING, wake_at=T0 + 60, reason="sleeping",
            now=T0 + 2, record=timer,
        )  # fmt: skip
        await store.retry_run("n1", "retrier", wake_at=T0 + 60, error={"message": "x"}, now=T0 + 2)
        for run_id in ("sleeper", "retrier"):
            run = await store.get_run(run_id)
            assert run is not None and run.status == RunStatus.PAUSED, run
            assert "paused on request" in (run.wait_reason or "")
            assert run.stop_requested == Stop.NONE
        assert (await store.load_history("sleeper")).steps[1].name == "sleep"
        assert await store.claim_runs("n1", agents=AGENTS, limit=9, now=T0 + 99, lease_ttl=30) == []

    runner.run(go())


def test_a_cancel_outlasts_a_pause_and_a_paused_park(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        await store.create_run(new("busy"), T0)
        await claim_one(store)
        await store.request_pause("busy", "paused by test", T0 + 1)
        assert (await store.request_cancel("busy", T0 + 2)).cancel_requested  # cancel wins
        assert (await store.request_pause("busy", "again", T0 + 3)).cancel_requested
        # parked as paused by something else (a loop guard, an escalation): still cancelled
        await store.park_run(
            "n1", "busy", status=RunStatus.PAUSED, wake_at=None, reason="loop", now=T0 + 4
        )
        await store.resume_run("busy", T0 + 5)
        (claimed,) = await store.claim_runs("n1", agents=AGENTS, limit=9, now=T0 + 6, lease_ttl=30)
        assert claimed.run.stop_requested == Stop.CANCEL

    runner.run(go())


def test_leases_renew_expire_and_release(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        for i in range(3):
            await store.create_run(new(f"r{i}"), T0)
        claimed = await store.claim_runs("n1", agents=AGENTS, limit=2, now=T0, lease_ttl=10)
        assert await store.lease_owners() == {"n1"}
        await store.renew_leases("n1", now=T0 + 8, lease_ttl=10)
        assert await store.claim_runs("n2", agents=AGENTS, limit=5, now=T0 + 15, lease_ttl=10) != []
        # only the third run was free; n1's renewed leases still hold at T0 + 15
        assert await store.lease_owners() == {"n1", "n2"}
        await store.create_run(new("queued"), T0 + 15)  # waiting in the queue
        assert await store.expire_leases(["n1"], T0 + 16) == 2
        assert await store.expire_leases(["n1"], T0 + 16) == 0  # already expired
        # the dead owner's half-done runs go before the queue
        recovered = await store.claim_runs("n2", agents=AGENTS, limit=2, now=T0 + 16, lease_ttl=10)
        assert sorted(c.run.id for c in recovered) == sorted(c.run.id for c in claimed)
        assert all(c.recovered for c in recovered)
        assert (
            len(await store.claim_runs("n2", agents=AGENTS, limit=5, now=T0 + 16, lease_ttl=10))
            == 1
        )
        assert await store.release_leases("n2", T0 + 17) == 4
        runs = await store.list_runs(limit=0)
        assert {r.status for r in runs} == {RunStatus.PENDING}
        assert await store.lease_owners() == set()
        assert await store.next_due(AGENTS) == T0 + 17

    runner.run(go())


def test_dead_runs_replay_from_their_last_good_checkpoint(
    store: Store, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        for name in ("d1", "d2", "ok"):
            await store.create_run(new(name), T0)
            await claim_one(store)
            await store.record_step("n1", record(name, 1))
            if name != "ok":
                await store.record_step("n1", record(name, 2, StepStatus.FAILED))
            status = RunStatus.COMPLETED if name == "ok" else RunStatus.DEAD
            await store.finish_run("n1", name, status=status, now=T0 + 1, error={"message": "x"})
        dead = await store.list_runs(status=RunStatus.DEAD, limit=0)
        assert sorted(r.id for r in dead) == ["d1", "d2"]
        assert await store.replay_dead("ok", T0 + 2) == []  # not dead: untouched
        with pytest.raises(RunNotFound):
            await store.replay_dead("nope", T0 + 2)
        one = await store.replay_dead("d1", T0 + 2)
        assert [(r.id, r.status, r.attempt) for r in one] == [("d1", RunStatus.PENDING, 2)]
        assert list((await store.load_history("d1")).steps) == [1]
        rest = await store.replay_dead(None, T0 + 3)
        assert [r.id for r in rest] == ["d2"]
        assert await store.list_runs(status=RunStatus.DEAD) == []
        ok = await store.get_run("ok")
        assert ok is not None and ok.status == RunStatus.COMPLETED

    runner.run(go())


def test_resume_makes_a_paused_run_due(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        await store.create_run(new("r1"), T0)
        await claim_one(store)
        await store.park_run(
            "n1",
            "r1",
            status=RunStatus.PAUSED,
            wake_at=None,
            reason="paused: needs a human",
            now=T0,
        )
        assert await store.next_due(AGENTS) is None
        resumed = await store.resume_run("r1", T0 + 5)
        assert resumed.status == RunStatus.PENDING
        assert await store.next_due(AGENTS) == T0 + 5
        with pytest.raises(RunNotFound):
            await store.resume_run("nope", T0)

    runner.run(go())


def test_incidents_are_appended_and_listed_newest_first(
    store: Store, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        await store.add_incident(Incident("r1", "a", "timeout", "slow", T0))
        await store.add_incident(Incident("r2", "a", "recovered", "x", T0 + 1))
        await store.add_incident(Incident("r1", "a", "recovered", "y", T0 + 2))
        assert [i.detail for i in await store.list_incidents("r1")] == ["y", "slow"]
        assert len(await store.list_incidents()) == 3

    runner.run(go())


def test_reopening_applies_no_migration_twice(store_url: str, runner: asyncio.Runner) -> None:
    from nonstop.store import open_store

    async def go() -> None:
        for _ in range(3):
            s = open_store(store_url)
            await s.open()
            await s.create_run(new("r1"), T0)
            await s.close()

    runner.run(go())


def test_routing_splits_fresh_runs_and_keeps_versions_apart(
    store: Store, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        for i, route in enumerate([0.1, 0.2, 0.6, 0.9]):
            await store.create_run(NewRun(f"f{i}", "a", {}, route=route), T0)
        canary = Routing("v2", (0.0, 0.25), ("v1", "v2"))
        got = await store.claim_runs(
            "c", agents=AGENTS, limit=9, now=T0, lease_ttl=1, routing=canary
        )
        assert sorted(c.run.id for c in got) == ["f0", "f1"]
        assert {c.run.app_version for c in got} == {"v2"}  # the version that runs it
        assert {c.previous_version for c in got} == {None}
        stable = Routing("v1", (0.25, 1.0), ("v1", "v2"))
        got = await store.claim_runs(
            "s", agents=AGENTS, limit=9, now=T0, lease_ttl=1, routing=stable
        )
        assert sorted(c.run.id for c in got) == ["f2", "f3"]
        # leases lapse; v2 is alive, so v1 leaves its runs alone and takes back its own
        got = await store.claim_runs(
            "s", agents=AGENTS, limit=9, now=T0 + 5, lease_ttl=1, routing=stable
        )
        assert sorted(c.run.id for c in got) == ["f2", "f3"]
        # once no v2 node is alive, v1 adopts v2's runs and is told where they came from
        alone = Routing("v1", (0.0, 1.0), ("v1",))
        got = await store.claim_runs(
            "s", agents=AGENTS, limit=9, now=T0 + 10, lease_ttl=1, routing=alone
        )
        assert sorted((c.run.id, c.previous_version) for c in got) == [
            ("f0", "v2"),
            ("f1", "v2"),
            ("f2", "v1"),
            ("f3", "v1"),
        ]
        summary = await store.version_summary()
        assert summary == [("v1", "running", 4)]

    runner.run(go())


def test_nodes_register_refresh_and_leave(store: Store, runner: asyncio.Runner) -> None:
    async def go() -> None:
        first = NodeInfo("n1", "app", "v1", 0.0, "host", 10, T0, T0)
        await store.register_node(first)
        await store.register_node(NodeInfo("n2", "app", "v2", 0.2, "host", 11, T0 + 1, T0 + 1))
        draining = replace(
            first, last_seen=T0 + 9, state="shutting_down", memory_limits="RLIMIT_AS: why"
        )
        await store.register_node(draining)
        assert await store.list_nodes() == [
            draining,
            NodeInfo("n2", "app", "v2", 0.2, "host", 11, T0 + 1, T0 + 1),
        ]
        await store.remove_node("n2")
        assert [n.id for n in await store.list_nodes()] == ["n1"]

    runner.run(go())


def test_breaker_changes_are_atomic_across_connections(
    store: Store, another_store: StoreFactory, runner: asyncio.Runner
) -> None:
    stores = [store, another_store(), another_store()]

    def bump(state: BreakerState) -> tuple[int, BreakerState]:
        return state.failures, replace(state, failures=state.failures + 1)

    async def go() -> list[int]:
        return list(
            await asyncio.gather(*(s.update_breaker("b", bump) for s in stores for _ in range(10)))
        )

    seen = runner.run(go())
    assert sorted(seen) == list(range(30))  # every change saw the one before it
    (final,) = runner.run(store.list_breakers())
    assert final.failures == 30 and final.state == "closed"


def test_token_buckets_queue_reservations_across_connections(
    store: Store, another_store: StoreFactory, runner: asyncio.Runner
) -> None:
    stores = [store, another_store(), another_store()]
    rate = Rate.parse("10/s")

    async def go() -> None:
        taken = await asyncio.gather(
            *(s.take_token("tool:t", rate, T0, max_wait=1.0) for s in stores * 7)
        )
        # a full bucket of 10 at once, then one every 0.1 s: 21 callers, 20 reserved
        waits = sorted(wait for reserved, wait in taken if reserved)
        assert waits == pytest.approx([0.0] * 10 + [0.1 * k for k in range(1, 11)])
        assert [w for reserved, w in taken if not reserved] == [pytest.approx(0.1)]
        # refused: nothing taken, so asking later reserves within the limit
        reserved, wait = await store.take_token("tool:t", rate, T0 + 0.15, max_wait=1.0)
        assert reserved and wait == pytest.approx(0.95)
        # a lagging clock neither refills nor winds the bucket's time back, so the
        # next caller on time does not get the lag's tokens a second time
        reserved, wait = await store.take_token("tool:t", rate, T0 - 5, max_wait=9.0)
        assert reserved and wait == pytest.approx(1.05)
        reserved, wait = await store.take_token("tool:t", rate, T0 + 0.15, max_wait=9.0)
        assert reserved and wait == pytest.approx(1.15)
        assert await store.take_token("tool:other", rate, T0, max_wait=0.0) == (True, 0.0)

    runner.run(go())
