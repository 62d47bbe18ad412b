"""The `nonstop` command: parse, call the App or the Store, print a table or `--json`.

Bad input ends in a one-line `error: ...` on stderr and a non-zero exit, never a traceback;
commands that only read or operate on runs never create a database.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from nonstop.app import App, Runtime, outcome
from nonstop.context import iso
from nonstop.errors import ConfigError, InvalidInput, NonstopError
from nonstop.models import JSON, PAUSED_BY_REQUEST, Run, RunStatus, ScheduleState
from nonstop.policies.breaker import BreakerState
from nonstop.scheduler import fire_id
from nonstop.store import Store, open_store, resolve_url
from nonstop.store.base import NodeInfo
from nonstop.views import load_detail, run_dict, why

T = TypeVar("T")

cli = typer.Typer(
    name="nonstop",
    help="Keep AI agents running 24/7: durable runs, retries, supervision.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
dlq_cli = typer.Typer(
    help="The dead-letter queue: runs that exhausted their retries.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
cli.add_typer(dlq_cli, name="dlq")

AppOption = Annotated[
    str | None,
    typer.Option("--app", envvar="NONSTOP_APP", help="The app, as module:attr or path.py:attr."),
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="NONSTOP_DATABASE_URL", help="Database URL (sqlite:///file.db)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

_out = Console(highlight=False, soft_wrap=True)


class CliError(Exception):
    """Bad input noticed by the CLI itself."""


def main() -> None:
    """Entry point: run the CLI, turning every expected failure into one line on stderr."""
    command = typer.main.get_command(cli)
    try:
        args = sys.argv[1:] or ["--help"]
        code = command.main(args, prog_name="nonstop", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's typer.Exit(code)
            sys.exit(code)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: unknown command, bad option value
        if type(exc).__name__ == "NoArgsIsHelpError":  # `nonstop dlq`: show its help
            print(exc.format_message())
            sys.exit(0)
        format_message = getattr(exc, "format_message", None)
        _fail(format_message() if format_message else str(exc), getattr(exc, "exit_code", 2))
    except (NonstopError, CliError) as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {first}", file=sys.stderr)
    sys.exit(code)


# -- helpers --------------------------------------------------------------------------------


def load_app(spec: str) -> App:
    """Import `module:attr` or `path/to/file.py:attr` (attr defaults to `app`)."""
    target, _, attr = spec.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if target.endswith(".py") or os.sep in target:
            path = Path(target)
            if not path.is_file():
                raise ConfigError(f"app file not found: {target}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(f"cannot load app file: {target}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except NonstopError:
        raise
    except ImportError as exc:
        raise ConfigError(f"cannot import {target!r}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from None
    found = getattr(module, attr, None)
    if not isinstance(found, App):
        raise ConfigError(f"{spec!r} is not a nonstop.App (found {type(found).__name__})")
    return found


def _resolve(app_spec: str | None, db: str | None, *, need_app: bool) -> tuple[App | None, str]:
    app = load_app(app_spec) if app_spec else None
    if need_app and app is None:
        raise CliError("this command needs the app: pass --app module:attr or set NONSTOP_APP")
    url = db or (app.database_url if app else None)
    return app, resolve_url(url)


def _with_store(url: str, action: Callable[[Store], Awaitable[T]], *, create: bool = False) -> T:
    async def go() -> T:
        store = open_store(url, create=create)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _parse_json(text: str, what: str) -> JSON:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def _status(value: str | None) -> RunStatus | None:
    if value is None:
        return None
    try:
        return RunStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise CliError(f"unknown status {value!r} (one of: {known})") from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_run(run: Run, as_json: bool) -> None:
    """A run an operator verb acted on: its dict, or one line with what it does now."""
    now = time.time()
    if as_json:
        _print_json(run_dict(run, now))
    else:
        _out.print(f"{run.id}  {run.status}  {why(run, now)}")


def _short(ts: str | None) -> str:
    return "" if ts is None else ts.replace("T", " ")[:19]


def _runs_table(runs: list[Run], now: float, title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    for column in ("run id", "agent", "status", "attempt", "created", "why"):
        table.add_column(column, overflow="fold")
    for run in runs:
        view = run_dict(run, now)
        table.add_row(
            run.id,
            run.agent,
            run.status,
            str(run.attempt),
            _short(view["created_at"]),
            why(run, now),
        )
    return table


# -- commands ---------------------------------------------------------------------------------


@cli.command()
def serve(
    app_arg: Annotated[str | None, typer.Argument(metavar="[APP]", help="module:attr")] = None,
    app_spec: AppOption = None,
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address for the HTTP API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the HTTP API.")] = 8642,
    concurrency: Annotated[int, typer.Option(help="Runs in flight on this node.")] = 100,
    grace_period: Annotated[float, typer.Option(help="Seconds to finish work on SIGTERM.")] = 30.0,
    lease_ttl: Annotated[float, typer.Option(help="Seconds a lease lasts unrenewed.")] = 30.0,
    poll_interval: Annotated[float, typer.Option(help="Seconds between store polls.")] = 0.5,
    canary: Annotated[
        float, typer.Option(help="Take this share (0-1) of new runs: a canary of a new version.")
    ] = 0.0,
) -> None:
    """Run the executor and the HTTP API until SIGTERM or Ctrl-C."""
    from nonstop.node import Node, NodeSettings

    app, url = _resolve(app_arg or app_spec, db, need_app=True)
    assert app is not None
    if concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    if not 0 <= canary < 1:
        raise CliError("--canary must be a share from 0 up to (not including) 1")
    settings = NodeSettings(
        host=host,
        port=port,
        concurrency=concurrency,
        grace_period=grace_period,
        lease_ttl=lease_ttl,
        poll_interval=poll_interval,
        canary_share=canary,
    )
    sys.exit(Node(app, url, settings).run())


@cli.command()
def migrate(db: DbOption = None, app_spec: AppOption = None) -> None:
    """Create the database or bring its schema up to date."""
    _, url = _resolve(app_spec, db, need_app=False)
    _with_store(url, lambda store: asyncio.sleep(0), create=True)
    print(f"database is up to date: {url}")


@cli.command()
def run(
    agent: Annotated[str, typer.Argument(help="Agent name.")],
    input: Annotated[str, typer.Option("--input", help="Input as a JSON object.")] = "{}",
    run_id: Annotated[str | None, typer.Option("--id", help="Run id (idempotency key).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait with --wait.")] = None,
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a run (or return the existing run with this --id)."""
    app, url = _resolve(app_spec, db, need_app=True)
    assert app is not None
    payload = _parse_json(input, "--input")
    new = app.new_run(agent, payload, run_id)  # validates before the store is touched

    async def go(store: Store) -> tuple[Run, bool]:
        runtime = Runtime(app, store)
        run, created = await runtime.start_run(new.agent, new.input, new.id)
        if wait:
            run = await runtime.wait_finished(run.id, timeout)
        return run, created

    started, created = _with_store(url, go)
    now = time.time()
    if as_json:
        _print_json({**run_dict(started, now), "created": created})
    else:
        note = "started" if created else "exists"
        _out.print(f"{started.id}  {started.agent}  {started.status}  ({note})")
        if wait and started.status == RunStatus.COMPLETED:
            print(json.dumps(started.output))
    if wait:
        try:
            outcome(started)
        except NonstopError as exc:
            raise CliError(str(exc)) from None


@cli.command()
def runs(
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0 = all).")] = 50,
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first."""
    wanted = _status(status)
    if limit < 0:
        raise CliError("--limit must be 0 (all) or more")
    _, url = _resolve(app_spec, db, need_app=False)
    found = _with_store(url, lambda s: s.list_runs(agent=agent, status=wanted, limit=limit))
    now = time.time()
    if as_json:
        _print_json([run_dict(r, now) for r in found])
    else:
        _out.print(_runs_table(found, now))


@cli.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A run with its steps, attempts, errors and durations."""
    _, url = _resolve(app_spec, db, need_app=False)

    detail = _with_store(url, lambda store: load_detail(store, run_id))
    if as_json:
        _print_json(detail)
        return
    _print_detail(detail)


def _print_detail(detail: dict[str, Any]) -> None:
    _out.print(
        f"[bold]{detail['run_id']}[/bold]  agent {detail['agent']}  "
        f"status {detail['status']}  attempt {detail['attempt']}"
    )
    _out.print(f"why: {detail['why']}")
    if detail["parent_id"]:
        _out.print(f"parent: {detail['parent_id']}")
    if detail["children"]:
        states = ", ".join(f"{n} {status}" for status, n in sorted(detail["children"].items()))
        _out.print(f"children: {states}")
    _out.print(f"input: {json.dumps(detail['input'])}")
    if detail["status"] == "completed":
        _out.print(f"output: {json.dumps(detail['output'])}")
    if detail["error"]:
        _out.print(f"error: {detail['error'].get('type')}: {detail['error'].get('message')}")
    steps = Table(title="steps")
    for column in ("seq", "name", "status", "attempts", "duration ms", "result / error"):
        steps.add_column(column, overflow="fold")
    for step in detail["steps"]:
        shown = step["error"] if step["error"] else step["result"]
        steps.add_row(
            str(step["seq"]),
            step["name"],
            step["status"],
            str(step["attempts"]),
            f"{step['duration_ms']:.1f}",
            json.dumps(shown)[:120],
        )
    _out.print(steps)
    if detail["attempts"]:
        tries = Table(title="failed attempts")
        for column in ("seq", "name", "run attempt", "try", "error", "retry at"):
            tries.add_column(column, overflow="fold")
        for a in detail["attempts"]:
            tries.add_row(
                str(a["seq"]),
                a["name"],
                str(a["run_attempt"]),
                str(a["attempt"]),
                f"{a['error']['type']}: {a['error']['message']}"[:120],
                _short(a["retry_at"]),
            )
        _out.print(tries)
    if detail["incidents"]:
        for incident in detail["incidents"]:
            _out.print(f"incident {incident['kind']} at {incident['at']}: {incident['detail']}")


@cli.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a run: at once if nobody executes it, else at its next step boundary."""
    _, url = _resolve(app_spec, db, need_app=False)
    _print_run(_with_store(url, lambda s: s.request_cancel(run_id, time.time())), as_json)


@cli.command()
def pause(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pause a run: at once if nobody executes it, else at its next step boundary;
    `nonstop resume` continues it."""
    _, url = _resolve(app_spec, db, need_app=False)
    found = _with_store(url, lambda s: s.request_pause(run_id, PAUSED_BY_REQUEST, time.time()))
    _print_run(found, as_json)


@cli.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue a paused run from its last checkpoint."""
    _, url = _resolve(app_spec, db, need_app=False)
    found = _with_store(url, lambda s: s.resume_run(run_id, time.time()))
    if as_json:
        _print_json(run_dict(found, time.time()))
    else:
        _out.print(f"{found.id}  {found.status}  resumed")


@dlq_cli.command("list")
def dlq_list(
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0 = all).")] = 50,
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Dead runs with their errors."""
    _, url = _resolve(app_spec, db, need_app=False)
    found = _with_store(url, lambda s: s.list_runs(agent=agent, status=RunStatus.DEAD, limit=limit))
    now = time.time()
    if as_json:
        _print_json([run_dict(r, now) for r in found])
        return
    table = Table(title="dead-letter queue")
    for column in ("run id", "agent", "attempts", "died", "error"):
        table.add_column(column, overflow="fold")
    for r in found:
        error = r.error or {}
        table.add_row(
            r.id,
            r.agent,
            str(r.attempt),
            _short(run_dict(r, now)["finished_at"]),
            f"{error.get('type', '')}: {error.get('message', '')}"[:160],
        )
    _out.print(table)


@dlq_cli.command("replay")
def dlq_replay(
    run_id: Annotated[str | None, typer.Argument(help="Run id.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead run.")] = False,
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resume dead runs from their last good checkpoint, as a new attempt."""
    if (run_id is None) == (not replay_all):
        raise CliError("give one RUN_ID or --all")
    _, url = _resolve(app_spec, db, need_app=False)
    replayed = _with_store(url, lambda s: s.replay_dead(run_id, time.time()))
    if run_id is not None and not replayed:
        raise CliError(f"run {run_id} is not dead: only dead runs can be replayed")
    now = time.time()
    if as_json:
        _print_json([run_dict(r, now) for r in replayed])
    else:
        _out.print(f"replayed {len(replayed)} run(s)")
        for r in replayed:
            _out.print(f"  {r.id}  {r.agent}  attempt {r.attempt}")


@cli.command()
def versions(
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runs per app version, and the nodes serving each version."""
    _, url = _resolve(app_spec, db, need_app=False)

    async def go(store: Store) -> tuple[list[tuple[str | None, str, int]], list[NodeInfo]]:
        return await store.version_summary(), await store.list_nodes()

    summary, nodes = _with_store(url, go)
    now = time.time()
    table: dict[str, dict[str, Any]] = {}
    for version, status, count in summary:
        row = table.setdefault(version or "-", {"version": version, "runs": {}, "nodes": []})
        row["runs"][status] = count
    for node in nodes:
        row = table.setdefault(node.version, {"version": node.version, "runs": {}, "nodes": []})
        row["nodes"].append(
            {
                "id": node.id,
                "canary_share": node.canary_share,
                "last_seen_seconds_ago": round(now - node.last_seen, 1),
            }
        )
    rows = sorted(table.values(), key=lambda r: r["version"] or "")
    if as_json:
        _print_json(rows)
        return
    out = Table(title="versions")
    for column in ("version", "nodes", "canary", "runs by status"):
        out.add_column(column, overflow="fold")
    for row in rows:
        canary = max((n["canary_share"] for n in row["nodes"]), default=0.0)
        runs_text = ", ".join(f"{status} {count}" for status, count in sorted(row["runs"].items()))
        out.add_row(
            row["version"] or "(not started yet)",
            str(len(row["nodes"])),
            f"{canary:.0%}" if canary else "",
            runs_text,
        )
    _out.print(out)


@cli.command()
def signal(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    name: Annotated[str, typer.Argument(help="Signal name, e.g. approval.")],
    data: Annotated[str, typer.Option("--data", help="Signal data as JSON.")] = "null",
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a signal to a run: its `ctx.wait_for(name)` receives the data (now or later)."""
    payload = _parse_json(data, "--data")
    app, url = _resolve(app_spec, db, need_app=False)
    target = app or App("cli")
    found = _with_store(url, lambda s: Runtime(target, s).signal(run_id, name, payload))
    if as_json:
        _print_json({**run_dict(found, time.time()), "signal": name})
    else:
        _out.print(f"signal {name!r} sent to {found.id} ({found.status})")


@cli.command()
def emit(
    topic: Annotated[str, typer.Argument(help="Event topic, e.g. lead.created.")],
    data: Annotated[str, typer.Option("--data", help="Event payload as a JSON object.")] = "{}",
    event_id: Annotated[str | None, typer.Option("--id", help="Event id (idempotency).")] = None,
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish an event: every agent subscribed to the topic runs once for it."""
    payload = _parse_json(data, "--data")
    if not isinstance(payload, dict):
        raise InvalidInput("--data must be a JSON object (it becomes the runs' input)")
    app, url = _resolve(app_spec, db, need_app=False)
    target = app or App("cli")
    chosen, created = _with_store(url, lambda s: Runtime(target, s).emit(topic, payload, event_id))
    if as_json:
        _print_json({"event_id": chosen, "topic": topic, "created": created})
    else:
        _out.print(f"event {chosen} {'stored' if created else 'exists'} ({topic})")


@cli.command()
def schedules(
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Scheduled agents: next and last fire times, and the last fire's lateness."""
    app, url = _resolve(app_spec, db, need_app=True)
    assert app is not None
    scheduled = [a for a in app.agents.values() if a.schedule is not None]

    async def go(store: Store) -> dict[str, tuple[ScheduleState | None, Run | None]]:
        states = {s.agent: s for s in await store.load_schedules()}
        found: dict[str, tuple[ScheduleState | None, Run | None]] = {}
        for agent in scheduled:
            state = states.get(agent.name)
            last = None
            if state is not None and state.last_fire_at is not None:
                last = await store.get_run(fire_id(agent.name, state.last_fire_at))
            found[agent.name] = (state, last)
        return found

    known = _with_store(url, go)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for agent in scheduled:
        assert agent.schedule is not None
        state, last = known[agent.name]
        since = now if state is None or state.last_fire_at is None else state.last_fire_at
        lateness = None
        if last is not None and last.scheduled_at is not None:
            lateness = round(last.created_at - last.scheduled_at, 3)
        rows.append(
            {
                "agent": agent.name,
                "schedule": agent.schedule.spec,
                "next_fire": iso(agent.schedule.next_after(max(since, now))),
                "last_fire": None
                if state is None or state.last_fire_at is None
                else iso(state.last_fire_at),
                "last_run": None if last is None else last.id,
                "last_status": None if last is None else str(last.status),
                "last_lateness_seconds": lateness,
            }
        )
    if as_json:
        _print_json(rows)
        return
    table = Table(title="schedules")
    for column in ("agent", "schedule", "next fire", "last fire", "lateness s", "last status"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["agent"],
            row["schedule"],
            _short(row["next_fire"]),
            _short(row["last_fire"]),
            str(row["last_lateness_seconds"] or ""),
            row["last_status"] or "",
        )
    _out.print(table)


@cli.command()
def health(
    app_spec: AppOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each agent's state and last heartbeat age; exit 1 if anything is unhealthy.

    Unhealthy: a running run silent for longer than its agent's heartbeat_timeout, or a run
    paused after escalation. Dead runs are counted (see `nonstop dlq list`) but not fatal.
    Also lists the nodes (serving or shutting down, and how each enforces isolated runs'
    memory_mb: cgroup v2 memory.max, or RLIMIT_AS and why) and the circuit breakers that
    are not closed."""
    app, url = _resolve(app_spec, db, need_app=True)
    assert app is not None
    active = [RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.DEAD]

    async def go(
        store: Store,
    ) -> tuple[dict[RunStatus, list[Run]], list[NodeInfo], list[BreakerState]]:
        runs = {s: await store.list_runs(status=s, limit=0) for s in active}
        return runs, await store.list_nodes(), await store.list_breakers()

    found, nodes, breakers = _with_store(url, go)
    now = time.time()
    report: list[dict[str, Any]] = []
    for agent in app.agents.values():
        running = [r for r in found[RunStatus.RUNNING] if r.agent == agent.name]
        beats = [r.heartbeat_at or r.started_at or r.updated_at for r in running]
        age = round(now - min(beats), 1) if beats else None
        silent = [
            r.id
            for r in running
            if agent.heartbeat_timeout is not None
            and now - (r.heartbeat_at or r.started_at or r.updated_at) > agent.heartbeat_timeout
        ]
        escalated = [
            r.id
            for r in found[RunStatus.PAUSED]
            if r.agent == agent.name and "escalated" in (r.wait_reason or "")
        ]
        dead = sum(1 for r in found[RunStatus.DEAD] if r.agent == agent.name)
        state = "unhealthy" if silent or escalated else ("running" if running else "idle")
        report.append(
            {
                "agent": agent.name,
                "state": state,
                "running": len(running),
                "oldest_heartbeat_age_seconds": age,
                "heartbeat_timeout": agent.heartbeat_timeout,
                "silent_runs": silent,
                "escalated_runs": escalated,
                "dead_runs": dead,
                "isolation": agent.isolation
                if agent.isolation == "inline"
                else f"process (memory_mb {agent.memory_mb or '-'}: see the nodes' memory"
                f" limits; cpu_seconds {agent.cpu_seconds or '-'}: RLIMIT_CPU)",
            }
        )
    node_rows = [
        {
            "node": n.id,
            "version": n.version,
            "state": n.state,
            "last_seen_age_seconds": round(now - n.last_seen, 1),
            "memory_limits": n.memory_limits or "no isolated agents",
        }
        for n in nodes
    ]
    breaker_rows = [
        {
            "breaker": b.name,
            "state": b.state,
            "failures": b.failures,
            "opened_at": None if b.opened_at is None else iso(b.opened_at),
        }
        for b in breakers
        if b.state != "closed"
    ]
    unhealthy = any(row["state"] == "unhealthy" for row in report)
    if as_json:
        _print_json(
            {
                "healthy": not unhealthy,
                "agents": report,
                "nodes": node_rows,
                "breakers": breaker_rows,
            }
        )
    else:
        table = Table(title="health")
        for column in ("agent", "state", "running", "oldest beat s", "silent", "escalated", "dead"):
            table.add_column(column, overflow="fold")
        for row in report:
            table.add_row(
                row["agent"],
                row["state"],
                str(row["running"]),
                ""
                if row["oldest_heartbeat_age_seconds"] is None
                else str(row["oldest_heartbeat_age_seconds"]),
                ", ".join(row["silent_runs"]),
                ", ".join(row["escalated_runs"]),
                str(row["dead_runs"]),
            )
        _out.print(table)
        if node_rows:
            nodes_table = Table(title="nodes")
            for column in ("node", "version", "state", "seen s ago", "memory limits"):
                nodes_table.add_column(column, overflow="fold")
            for node in node_rows:
                nodes_table.add_row(*(str(value) for value in node.values()))
            _out.print(nodes_table)
        if breaker_rows:
            breakers_table = Table(title="circuit breakers not closed")
            for column in ("breaker", "state", "failures", "opened at"):
                breakers_table.add_column(column, overflow="fold")
            for breaker in breaker_rows:
                breakers_table.add_row(*(str(value) for value in breaker.values()))
            _out.print(breakers_table)
    if unhealthy:
        raise typer.Exit(1)
