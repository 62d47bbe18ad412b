"""The `nonstop` command as users run it: real processes, real database files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nonstop import CircuitBreaker

ROOT = Path(__file__).resolve().parents[2]
APP = "tests/cli/cli_app.py:app"
NONSTOP = [sys.executable, "-m", "nonstop"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NONSTOP, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def cli_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fingerprint(path: Path) -> str:
    """Contents of the database and its WAL: equal fingerprints mean nothing was written."""
    digest = hashlib.sha256()
    for part in (path, path.with_name(path.name + "-wal")):
        if part.exists():
            digest.update(part.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}"
    done = cli("migrate", "--db", url)
    assert done.returncode == 0, done.stderr
    return url, path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serving(db: tuple[str, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `nonstop serve` on the test database."""
    url, _ = db
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    flag = tmp_path / "broken.flag"
    flag.touch()
    proc = subprocess.Popen(
        [*NONSTOP, "serve", APP, "--db", url, "--port", str(port), "--poll-interval", "0.05"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CLI_TEST_BROKEN_FLAG": str(flag)},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready") as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.monotonic() < deadline, "serve did not become ready"
        time.sleep(0.05)
    yield url, flag
    proc.terminate()
    assert proc.wait(30) == 0
    log.close()


BAD_INPUT = [
    (["run", "ghost", "--app", APP], "unknown agent 'ghost'"),
    (["run", "echo", "--app", APP, "--input", "{bad"], "--input is not valid JSON"),
    (["run", "echo", "--app", APP, "--input", "[1, 2]"], "input must be a JSON object"),
    (["run", "echo", "--app", APP, "--id", "  "], "run id must be a non-empty string"),
    (["run", "echo"], "needs the app"),
    (["run", "echo", "--app", "no_such_module:app"], "cannot import 'no_such_module'"),
    (["run", "echo", "--app", "tests/cli/cli_app.py:nothing"], "is not a nonstop.App"),
    (["show", "nope"], "no run with id 'nope'"),
    (["cancel", "nope"], "no run with id 'nope'"),
    (["pause", "nope"], "no run with id 'nope'"),
    (["resume", "nope"], "no run with id 'nope'"),
    (["dlq", "replay", "nope"], "no run with id 'nope'"),
    (["dlq", "replay"], "give one RUN_ID or --all"),
    (["runs", "--status", "bogus"], "unknown status 'bogus'"),
    (["runs", "--limit", "-1"], "--limit must be 0"),
    (["runs", "--limit", "many"], "Invalid value for '--limit'"),
    (["frobnicate"], "No such command"),
    (["serve", APP, "--host", "0.0.0.0"], "without NONSTOP_API_TOKEN"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(
    db: tuple[str, Path], args: list[str], message: str
) -> None:
    url, path = db
    before = fingerprint(path)
    done = cli(*args, "--db", url)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0]
    assert fingerprint(path) == before


@pytest.mark.parametrize("command", [["runs"], ["show", "x"], ["dlq", "list"], ["cancel", "x"]])
def test_a_missing_database_is_reported_and_not_created(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "absent.db"
    done = cli(*command, "--db", f"sqlite:///{path}")
    assert done.returncode == 1
    assert done.stderr.startswith("error: database not found") and "Traceback" not in done.stderr
    assert not path.exists()


def test_unsupported_database_url(tmp_path: Path) -> None:
    done = cli("runs", "--db", "mysql://localhost/x")
    assert done.returncode == 1 and "unsupported database URL" in done.stderr


def test_run_is_idempotent_by_id(db: tuple[str, Path]) -> None:
    url, _ = db
    first = cli_json(
        "run", "echo", "--app", APP, "--db", url, "--id", "lead-42", "--input", '{"text": "a"}'
    )
    again = cli_json(
        "run", "echo", "--app", APP, "--db", url, "--id", "lead-42", "--input", '{"text": "b"}'
    )
    assert (first["run_id"], first["created"]) == ("lead-42", True)
    assert (again["run_id"], again["created"], again["input"]) == ("lead-42", False, {"text": "a"})
    listed = cli_json("runs", "--db", url)
    assert [r["run_id"] for r in listed] == ["lead-42"]
    assert listed[0]["why"].startswith("pending: waiting for a node")


def test_the_whole_life_of_runs_through_the_cli(serving: tuple[str, Path]) -> None:
    url, flag = serving
    done = cli_json(
        "run",
        "echo",
        "--app",
        APP,
        "--db",
        url,
        "--input",
        '{"text": "hey"}',
        "--wait",
        "--timeout",
        "20",
    )
    assert done["status"] == "completed"
    assert done["output"] == {"text": "hey", "shout": "HEY"}
    shown = cli_json("show", done["run_id"], "--db", url)
    assert [(s["seq"], s["name"], s["status"], s["result"]) for s in shown["steps"]] == [
        (1, "upper", "completed", "HEY")
    ]
    people = cli("show", done["run_id"], "--db", url)
    assert people.returncode == 0 and "upper" in people.stdout and "completed" in people.stdout

    dead = cli(
        "run", "broken", "--app", APP, "--db", url, "--id", "b1", "--wait", "--timeout", "20"
    )
    assert dead.returncode == 1 and "deliberate failure" in dead.stderr
    dlq = cli_json("dlq", "list", "--db", url)
    assert [(r["run_id"], r["error"]["message"]) for r in dlq] == [("b1", "deliberate failure")]
    table = cli("dlq", "list", "--db", url)
    assert "b1" in table.stdout and "deliberate failure" in table.stdout

    flag.unlink()  # the cause is fixed; replay resumes from the last good checkpoint
    replayed = cli_json("dlq", "replay", "--all", "--db", url)
    assert [(r["run_id"], r["attempt"]) for r in replayed] == [("b1", 2)]
    waited = cli_json("run", "broken", "--app", APP, "--db", url, "--id", "b1", "--wait")
    assert waited["status"] == "completed" and waited["created"] is False
    assert cli_json("dlq", "list", "--db", url) == []

    sleepy = cli_json("run", "sleeper", "--app", APP, "--db", url, "--id", "s1")
    deadline = time.monotonic() + 20
    while cli_json("show", "s1", "--db", url)["status"] != "sleeping":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cli_json("show", "s1", "--db", url)["why"].startswith("sleeping until")
    paused = cli_json("pause", "s1", "--db", url)
    assert paused["status"] == "paused" and "nonstop resume" in paused["why"]
    finished = cli("pause", done["run_id"], "--db", url)  # nothing to pause: one line, exit 1
    assert finished.returncode == 1 and "nothing to pause" in finished.stderr
    cancelled = cli_json("cancel", sleepy["run_id"], "--db", url)
    assert cancelled["status"] == "cancelled"
    statuses = {r["run_id"]: r["status"] for r in cli_json("runs", "--db", url, "--limit", "0")}
    assert statuses == {done["run_id"]: "completed", "b1": "completed", "s1": "cancelled"}
    assert [r["run_id"] for r in cli_json("runs", "--db", url, "--status", "cancelled")] == ["s1"]


def test_health_exits_1_when_a_run_is_escalated(db: tuple[str, Path]) -> None:
    url, _ = db
    healthy = cli("health", "--app", APP, "--db", url, "--json")
    assert healthy.returncode == 0 and json.loads(healthy.stdout)["healthy"] is True

    async def escalate() -> None:
        from nonstop.models import RunStatus
        from nonstop.store import NewRun, open_store

        store = open_store(url)
        await store.open()
        await store.create_run(NewRun("e1", "echo", {}), time.time())
        await store.claim_runs("n", agents=["echo"], limit=1, now=time.time(), lease_ttl=30)
        await store.park_run(
            "n",
            "e1",
            status=RunStatus.PAUSED,
            wake_at=None,
            reason="paused: escalated after 3 restart(s) (oom)",
            now=time.time(),
        )
        crm = CircuitBreaker("crm", failure_threshold=1)
        await store.update_breaker("crm", lambda s: (None, crm.record(s, False, 1.8e9)))
        await store.update_breaker("ok", lambda s: (None, s))  # closed: not listed
        await store.close()

    asyncio.run(escalate())
    sick = cli("health", "--app", APP, "--db", url, "--json")
    assert sick.returncode == 1
    report = json.loads(sick.stdout)
    echo = {a["agent"]: a for a in report["agents"]}["echo"]
    assert echo["state"] == "unhealthy" and echo["escalated_runs"] == ["e1"]
    assert report["breakers"] == [
        {"breaker": "crm", "state": "open", "failures": 1, "opened_at": "2027-01-15T08:00:00.000Z"}
    ]
    table = cli("health", "--app", APP, "--db", url)
    assert table.returncode == 1 and "unhealthy" in table.stdout and "crm" in table.stdout
