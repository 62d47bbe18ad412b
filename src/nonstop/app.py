"""App: declares agents (`@app.agent`) and runs them, embedded (`app.worker()`) or served.

An App is an ordinary object: a test may hold two. Its store is opened lazily, on a
background event-loop thread for the synchronous API (`start`, `run`, `worker`), or on the
caller's loop for `nonstop serve` (see `Runtime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from nonstop.context import check_unicode, encode, encode_event
from nonstop.errors import (
    ConfigError,
    InvalidInput,
    RunCancelled,
    RunFailed,
    RunNotFound,
    UnknownAgent,
)
from nonstop.executor import Executor
from nonstop.models import JSON, Run, RunStatus
from nonstop.policies.breaker import CircuitBreaker
from nonstop.policies.durations import Duration, optional_seconds
from nonstop.policies.loops import NO_LOOP_LIMITS, LoopGuard
from nonstop.policies.ratelimit import Rate
from nonstop.policies.restart import Restart
from nonstop.policies.retry import Retry
from nonstop.policies.schedule import Schedule
from nonstop.scheduler import Scheduler
from nonstop.store import NewRun, Store, open_store, resolve_url
from nonstop.tools import Tool

T = TypeVar("T")
Handler = Callable[..., Any]
"""`async def handler(ctx, **input)` or `def handler(ctx, **input)`."""

DEFAULT_RUN_RETRY = Retry(max_attempts=3, initial=1.0, factor=2.0, max_delay=300.0)


@dataclass(frozen=True, slots=True)
class Agent:
    """A declared agent: its handler and the policies nonstop applies to its runs."""

    name: str
    fn: Handler
    is_async: bool
    retry: Retry
    timeout: float | None
    schedule: Schedule | None = None
    topics: tuple[str, ...] = ()
    priority: int = 0
    concurrency: int | None = None
    rate: Rate | None = None
    heartbeat_timeout: float | None = None
    restart: Restart | None = None
    isolation: str = "inline"
    memory_mb: int | None = None
    cpu_seconds: float | None = None
    tools: tuple[str, ...] = ()  # the only tools its runs may call
    loops: LoopGuard = NO_LOOP_LIMITS

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly (for unit tests of the handler's own logic)."""
        return self.fn(*args, **kwargs)


STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")


@dataclass(frozen=True, slots=True)
class Group:
    """Agents supervised together (see `App.group`)."""

    name: str
    members: tuple[str, ...]
    strategy: str


class RunHandle:
    """A started run: ask its status or wait for its result."""

    def __init__(self, app: App, run_id: str) -> None:
        self.app = app
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    def get(self) -> Run:
        run = self.app._call(lambda rt: rt.store.get_run(self.run_id))
        if run is None:
            raise RunNotFound(f"no run with id {self.run_id!r}")
        return run

    def status(self) -> RunStatus:
        return self.get().status

    def result(self, timeout: float | None = None) -> JSON:
        """Wait until the run finishes; return its output.

        Raises RunFailed if it ended `dead`, RunCancelled if cancelled, TimeoutError if it
        has not finished within `timeout` seconds (the run itself goes on)."""
        run = self.app._call(lambda rt: rt.wait_finished(self.run_id, timeout))
        return outcome(run)


def outcome(run: Run) -> JSON:
    if run.status == RunStatus.COMPLETED:
        return run.output
    if run.status == RunStatus.CANCELLED:
        raise RunCancelled(f"run {run.id} was cancelled")
    message = (run.error or {}).get("message", "unknown error")
    raise RunFailed(run.id, f"{(run.error or {}).get('type', 'Error')}: {message}")


class Runtime:
    """An opened store plus, when working, an executor: the live part of an App."""

    def __init__(self, app: App, store: Store) -> None:
        self.app = app
        self.store = store
        self.executor: Executor | None = None
        self.scheduler: Scheduler | None = None

    async def start_worker(self, **options: Any) -> Executor:
        """Start executing runs here (and firing schedules and dispatching events, if the
        app has any); `options` are Executor settings."""
        if self.executor is None:
            self.app.validate()
            self.executor = Executor(self.app, self.store, **options)
            await self.executor.start()
            scheduler = Scheduler(self.app, self.store)
            if scheduler.needed:
                await scheduler.start()
                self.scheduler = scheduler
        return self.executor

    async def stop_worker(self, grace_period: float = 30.0) -> None:
        if self.scheduler is not None:
            scheduler, self.scheduler = self.scheduler, None
            await scheduler.stop()
        if self.executor is not None:
            executor, self.executor = self.executor, None
            await executor.stop(grace_period)

    async def signal(self, run_id: str, name: str, data: JSON = None) -> Run:
        """Deliver signal `name` with `data` to a run (kept until its `wait_for` takes it)."""
        if not isinstance(name, str) or not name:
            raise InvalidInput("a signal needs a name")
        payload = encode(data, "signal data")
        check_unicode(data, "signal data")
        return await self.store.send_signal(run_id, name, payload, time.time())

    async def emit(
        self, topic: str, payload: dict[str, JSON] | None, event_id: str | None
    ) -> tuple[str, bool]:
        """Store an event for the agents subscribed to `topic`; idempotent by `event_id`."""
        text = encode_event(topic, payload)
        if event_id is not None:
            _check_run_id(event_id)
        chosen = event_id or uuid.uuid4().hex
        created = await self.store.create_event(chosen, topic, text, time.time())
        return chosen, created

    async def close(self) -> None:
        await self.stop_worker()
        await self.store.close()

    async def start_run(
        self, agent: str, input: dict[str, JSON] | None, run_id: str | None
    ) -> tuple[Run, bool]:
        """Create the run (or find the existing one with this id) and wake the executor."""
        new = self.app.new_run(agent, input, run_id)
        run, created = await self.store.create_run(new, time.time())
        if created and self.executor is not None:
            self.executor.notify()
        return run, created

    async def wait_finished(self, run_id: str, timeout: float | None) -> Run:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            run = await self.store.get_run(run_id)
            if run is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            if run.status.finished:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout}s")
            if self.executor is not None:  # executed here: woken as soon as it rests
                await self.executor.wait_settled(run_id, pause)
            else:  # executed elsewhere: poll
                await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.2)


MAX_RUN_ID = 255


def _check_run_id(run_id: object) -> None:
    """Run ids appear in URLs, logs and terminals: printable, bounded, real Unicode."""
    if not isinstance(run_id, str) or not run_id.strip():
        raise InvalidInput("run id must be a non-empty string")
    if len(run_id) > MAX_RUN_ID:
        raise InvalidInput(f"run id must be at most {MAX_RUN_ID} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in run_id):
        raise InvalidInput("run id must not contain control characters")
    check_unicode(run_id, "run id")


class _LoopThread:
    """A private event loop in a daemon thread, for the App's synchronous API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="nonstop-loop", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class App:
    """A set of agents sharing one store.

    `database_url` defaults to `NONSTOP_DATABASE_URL`, else `sqlite:///nonstop.db`.
    `version` (default: a hash of the agents' source) is recorded on every run it
    executes. A run that ran under another version, of which no node is alive any more, is
    adopted: resumed (`on_version_change="resume"`, the default; a changed step sequence
    still pauses it with NonDeterminismError) or paused for a human (`"pause"`).
    """

    def __init__(
        self,
        name: str,
        database_url: str | None = None,
        *,
        version: str | None = None,
        on_version_change: str = "resume",
    ) -> None:
        if on_version_change not in ("resume", "pause"):
            raise ConfigError(
                f"on_version_change must be 'resume' or 'pause', got {on_version_change!r}"
            )
        self.name = name
        self.database_url = database_url
        self.on_version_change = on_version_change
        self.agents: dict[str, Agent] = {}
        self.tools: dict[str, Tool] = {}
        self.groups: list[Group] = []
        self._version = version
        self._loop_thread: _LoopThread | None = None
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"App({self.name!r}, agents={sorted(self.agents)})"

    @property
    def version(self) -> str:
        if self._version is None:
            digest = hashlib.blake2b(digest_size=6)
            for agent in sorted(self.agents.values(), key=lambda a: a.name):
                with contextlib.suppress(OSError, TypeError):
                    digest.update(inspect.getsource(agent.fn).encode())
            self._version = digest.hexdigest()
        return self._version

    # -- declaring ----------------------------------------------------------------------

    @overload
    def agent(self, fn: Handler, /) -> Agent: ...

    @overload
    def agent(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: Duration | None = None,
        every: Duration | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        jitter: Duration | None = None,
        catch_up: str = "latest",
        max_catch_up: int = 100,
        on: str | list[str] | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        rate: str | None = None,
        heartbeat_timeout: Duration | None = None,
        restart: Restart | None = None,
        isolation: str = "inline",
        memory_mb: int | None = None,
        cpu_seconds: float | None = None,
        tools: list[str | Tool] | None = None,
        max_steps: int | None = None,
        max_repeats: int | None = None,
    ) -> Callable[[Handler], Agent]: ...

    def agent(
        self,
        fn: Handler | None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: Duration | None = None,
        every: Duration | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        jitter: Duration | None = None,
        catch_up: str = "latest",
        max_catch_up: int = 100,
        on: str | list[str] | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        rate: str | None = None,
        heartbeat_timeout: Duration | None = None,
        restart: Restart | None = None,
        isolation: str = "inline",
        memory_mb: int | None = None,
        cpu_seconds: float | None = None,
        tools: list[str | Tool] | None = None,
        max_steps: int | None = None,
        max_repeats: int | None = None,
    ) -> Agent | Callable[[Handler], Agent]:
        """Declare an agent.

        `retry` is the run-level policy (default: 3 attempts with exponential backoff);
        `timeout` bounds each execution of a run (parked time does not count). `every=` or
        `cron=` (in time zone `tz`) runs it on a schedule, each fire delayed by up to
        `jitter`; `catch_up` says which fires missed while no node was up are made up
        (`"none"`, `"latest"`, or `"all"` up to `max_catch_up`). `on=` runs it once per
        event of a topic (a name, a glob like `"lead.*"`, or a list). Higher `priority`
        runs are claimed first. `concurrency=N` caps the agent's runs executing at once and
        `rate="60/min"` the runs it starts per period, across all nodes; runs over a limit
        wait as `pending`, none are dropped. `heartbeat_timeout` declares a run unhealthy
        when no step completes and no `ctx.heartbeat` comes for that long (a wedged loop),
        and `restart` says how it (or a run that crashed its node) is restarted and when a
        human takes over (default without `restart=`: restart at once, never escalate).
        `isolation="process"` runs each run in its own child process, with `memory_mb`
        and `cpu_seconds` enforced by the kernel; a child that dies is explained (`oom`
        with its peak RSS, `cpu_limit`, `signal N`, `exit code N`) and restarted per
        `restart`. `tools=` lists the tools (`@app.tool`) its runs may call; a call of any
        other raises ToolDenied. `max_steps` caps a run's durable calls, `max_repeats` its
        calls of one tool with the same arguments: a run over either is a loop, paused for
        a human with an alert (each resume grants one more allowance)."""

        def declare(handler: Handler) -> Agent:
            agent_name = name or handler.__name__
            if agent_name in self.agents:
                raise ConfigError(f"agent {agent_name!r} is declared twice")
            if not callable(handler):
                raise ConfigError(f"agent {agent_name!r} is not callable")
            schedule = None
            if every is not None or cron is not None:
                schedule = Schedule.build(
                    every=every,
                    cron=cron,
                    tz=tz,
                    jitter=jitter,
                    catch_up=catch_up,
                    max_catch_up=max_catch_up,
                )
            if concurrency is not None and concurrency < 1:
                raise ConfigError(f"agent {agent_name!r}: concurrency must be at least 1")
            if isolation not in ("inline", "process"):
                raise ConfigError(f"isolation must be 'inline' or 'process', got {isolation!r}")
            if isolation == "inline" and (memory_mb is not None or cpu_seconds is not None):
                raise ConfigError("memory_mb= and cpu_seconds= need isolation='process'")
            topics = (on,) if isinstance(on, str) else tuple(on or ())
            if any(not isinstance(t, str) or not t.strip() for t in topics):
                raise ConfigError(f"agent {agent_name!r}: on= takes topic names or patterns")
            declared = Agent(
                name=agent_name,
                fn=handler,
                is_async=inspect.iscoroutinefunction(handler),
                retry=retry or DEFAULT_RUN_RETRY,
                timeout=optional_seconds(timeout),
                schedule=schedule,
                topics=topics,
                priority=priority,
                concurrency=concurrency,
                rate=None if rate is None else Rate.parse(rate),
                heartbeat_timeout=optional_seconds(heartbeat_timeout),
                restart=restart,
                isolation=isolation,
                memory_mb=memory_mb,
                cpu_seconds=cpu_seconds,
                tools=tuple(t.name if isinstance(t, Tool) else t for t in tools or ()),
                loops=LoopGuard(max_steps, max_repeats),
            )
            self.agents[agent_name] = declared
            return declared

        return declare if fn is None else declare(fn)

    @overload
    def tool(self, fn: Callable[..., Any], /) -> Tool: ...

    @overload
    def tool(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        rate: str | None = None,
        retry: Retry | None = None,
        timeout: Duration | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> Callable[[Callable[..., Any]], Tool]: ...

    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        rate: str | None = None,
        retry: Retry | None = None,
        timeout: Duration | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> Tool | Callable[[Callable[..., Any]], Tool]:
        """Register a tool that agents listing it in `tools=` call as
        `ctx.tool(name, **args)`: a durable step, retried per `retry` (default: not
        retried), bounded by `timeout`, guarded by `breaker`, and limited to `rate`
        ("30/min") calls across every run and node (a call over the limit waits for its
        turn, durably when the wait is long). `fn` may be sync or async."""

        def register(function: Callable[..., Any]) -> Tool:
            tool_name = name or getattr(function, "__name__", "")
            if not callable(function):
                raise ConfigError(f"tool {tool_name!r} is not callable")
            if not tool_name or tool_name in self.tools:
                raise ConfigError(f"tool {tool_name!r} needs a name of its own")
            declared = Tool(
                name=tool_name,
                fn=function,
                rate=None if rate is None else Rate.parse(rate),
                retry=retry,
                timeout=optional_seconds(timeout),
                breaker=breaker,
            )
            self.tools[tool_name] = declared
            return declared

        return register if fn is None else register(fn)

    def validate(self) -> None:
        """Check what declarations alone cannot (tools may be declared after the agents
        that list them); raise ConfigError. Nodes call this before taking any work."""
        for agent in self.agents.values():
            unknown = [t for t in agent.tools if t not in self.tools]
            if unknown:
                known = ", ".join(sorted(self.tools)) or "none"
                raise ConfigError(
                    f"agent {agent.name!r} lists unregistered tool(s) {', '.join(unknown)}"
                    f" (registered with @app.tool: {known})"
                )

    def tools_of(self, agent: str) -> dict[str, Tool]:
        """The tools `agent` may call, by name."""
        return {name: self.tools[name] for name in self.agents[agent].tools if name in self.tools}

    def new_run(
        self, agent: str | Agent, input: dict[str, JSON] | None, run_id: str | None
    ) -> NewRun:
        """Validate a run request; raise UnknownAgent or InvalidInput, touching nothing."""
        agent_name = agent.name if isinstance(agent, Agent) else agent
        if agent_name not in self.agents:
            known = ", ".join(sorted(self.agents)) or "none"
            raise UnknownAgent(f"unknown agent {agent_name!r} (known: {known})")
        payload = {} if input is None else input
        if not isinstance(payload, dict):
            raise InvalidInput(f"input must be a JSON object, got {type(payload).__name__}")
        encode(payload, "input")
        check_unicode(payload, "input")
        if run_id is not None:
            _check_run_id(run_id)
        priority = self.agents[agent_name].priority
        return NewRun(
            id=run_id or uuid.uuid4().hex, agent=agent_name, input=payload, priority=priority
        )

    # -- running, synchronous API ---------------------------------------------------------

    def _call(self, action: Callable[[Runtime], Awaitable[T]]) -> T:
        runtime = self._ensure_runtime()
        assert self._loop_thread is not None

        async def invoke() -> T:
            return await action(runtime)

        return self._loop_thread.call(invoke())

    def _ensure_runtime(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                loop_thread = _LoopThread()
                store = open_store(resolve_url(self.database_url))
                try:
                    loop_thread.call(store.open())
                except BaseException:
                    loop_thread.close()
                    raise
                self._loop_thread = loop_thread
                self._runtime = Runtime(self, store)
            return self._runtime

    def start(
        self, agent: str | Agent, input: dict[str, JSON] | None = None, id: str | None = None
    ) -> RunHandle:
        """Start a run (or, if `id` exists already, return that run) and return its handle."""
        agent_name = agent.name if isinstance(agent, Agent) else agent
        run, _ = self._call(lambda rt: rt.start_run(agent_name, input, id))
        return RunHandle(self, run.id)

    def run(
        self,
        agent: str | Agent,
        input: dict[str, JSON] | None = None,
        id: str | None = None,
        timeout: float | None = None,
    ) -> JSON:
        """Start a run and wait for its output (needs a worker: `app.worker()` or serve)."""
        return self.start(agent, input, id).result(timeout)

    @contextlib.contextmanager
    def worker(
        self,
        *,
        concurrency: int = 100,
        lease_ttl: float = 30.0,
        poll_interval: float = 0.5,
        grace_period: float = 30.0,
    ) -> Iterator[App]:
        """Execute this app's runs in a background thread until the block exits."""
        self._call(
            lambda rt: rt.start_worker(
                concurrency=concurrency, lease_ttl=lease_ttl, poll_interval=poll_interval
            )
        )
        try:
            yield self
        finally:
            self._call(lambda rt: rt.stop_worker(grace_period))

    def group(
        self, members: list[Agent | str], strategy: str = "one_for_one", name: str | None = None
    ) -> Group:
        """Supervise agents together, as Erlang/OTP does: when the supervisor restarts a
        run of one member (missed heartbeats, a dead child process, a crashed node), the
        strategy says which siblings' running runs restart with it, from their checkpoints:
        none (`one_for_one`), all (`one_for_all`), or those listed after it
        (`rest_for_one`)."""
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        names = [m.name if isinstance(m, Agent) else m for m in members]
        unknown = [n for n in names if n not in self.agents]
        if unknown or len(set(names)) != len(names) or len(names) < 2:
            raise ConfigError(f"a group needs two or more distinct declared agents, got {names}")
        taken = [n for n in names if any(n in g.members for g in self.groups)]
        if taken:
            raise ConfigError(f"agents already in a group: {', '.join(taken)}")
        made = Group(name or "+".join(names), tuple(names), strategy)
        self.groups.append(made)
        return made

    def siblings_to_restart(self, agent: str) -> list[str]:
        """The other agents whose runs restart when a run of `agent` is restarted."""
        for group in self.groups:
            if agent in group.members:
                if group.strategy == "one_for_all":
                    return [m for m in group.members if m != agent]
                if group.strategy == "rest_for_one":
                    return list(group.members[group.members.index(agent) + 1 :])
        return []

    def signal(self, run_id: str, name: str, data: JSON = None) -> None:
        """Send signal `name` with `data` to a run; a `ctx.wait_for(name)` receives it (now
        or later: signals sent before the wait are kept)."""
        self._call(lambda rt: rt.signal(run_id, name, data))

    def emit(
        self, topic: str, payload: dict[str, JSON] | None = None, id: str | None = None
    ) -> str:
        """Publish an event; every agent subscribed to `topic` runs once for it. The event
        is stored first, so nothing is lost while no node runs. Returns the event id."""
        event_id, _ = self._call(lambda rt: rt.emit(topic, payload, id))
        return event_id

    def close(self) -> None:
        """Stop any worker, close the store and the background loop. Idempotent."""
        with self._lock:
            runtime, loop_thread = self._runtime, self._loop_thread
            self._runtime = self._loop_thread = None
        if runtime is not None and loop_thread is not None:
            loop_thread.call(runtime.close())
            loop_thread.close()
