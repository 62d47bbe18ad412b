"""Context (ctx): the whole API a handler sees, with replay and checkpointing built in.

Every durable call (`step`, `sleep`) takes the next sequence number of the run. When the
run's history holds a record for that number, the recorded outcome is returned without
executing anything; otherwise the call executes and its outcome is committed to the store
before the handler continues. `SyncContext` is the same API for plain `def` handlers,
which run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from nonstop.errors import (
    BreakerOpen,
    CorruptCheckpoint,
    InvalidInput,
    LoopDetected,
    NonDeterminismError,
    StepFailed,
    StepTimeout,
    ToolDenied,
)
from nonstop.models import (
    JSON,
    Attempt,
    History,
    Run,
    RunStatus,
    StepRecord,
    StepStatus,
    Stop,
    checksum,
    completed_step,
)
from nonstop.observe.logging import Logger, get_logger
from nonstop.policies.breaker import BreakerState, CircuitBreaker
from nonstop.policies.durations import Duration, optional_seconds, seconds
from nonstop.policies.loops import NO_LOOP_LIMITS, LoopCounter, LoopGuard
from nonstop.policies.ratelimit import Rate
from nonstop.policies.retry import NO_RETRY, Retry
from nonstop.store.base import LeaseLost
from nonstop.tools import RATE_KEY, Tool

if TYPE_CHECKING:
    from nonstop.store.base import NewRun, Store

T = TypeVar("T")

_STOP_RANK = {Stop.NONE: 0, Stop.PAUSE: 1, Stop.CANCEL: 2}
"""Which request wins when two arrive: a cancel overrides a pause."""

INLINE_RETRY_WAIT = 1.0
"""Retry waits up to this many seconds keep the run in memory; longer ones park it durably.
Either way the retry time is recorded first, so a restart neither retries early nor forgets."""

BEAT_EVERY = 1.0
"""Seconds between heartbeats written for step completions (each step is a beat, but
writing the run's row at every step would double the cost of a fast step)."""

ISOLATED_ENV = "NONSTOP_ISOLATED_CHILD"
MEMORY_EXIT = 86
"""Exit code of an isolated child that hit its memory limit (MemoryError)."""

COMPENSATION_RETRY = Retry(max_attempts=5, initial=1.0, factor=2.0, max_delay=30.0)
"""How compensations of a saga are retried (each is a durable step)."""

NewRunFactory = Callable[[str, "dict[str, JSON] | None", "str | None"], "NewRun"]
"""`App.new_run`: validates a child run request (agent known, input a JSON object)."""

_current_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nonstop_idempotency_key", default=None
)


class Interrupt(BaseException):
    """Unwinds a handler without it being able to swallow the unwinding in `except Exception`.

    Raised when the run parked itself (sleep), was cancelled, or was abandoned by its
    executor (timeout, shutdown), or when the store can no longer take its progress (lease
    lost, database unreachable): then the run is left for recovery from its checkpoints."""

    PARKED = "parked"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    PAUSE = "pause requested"
    LEASE_LOST = "lease lost"
    RESTART = "restart"
    SETTLED = "settled by its child process"
    STORE_FAILED = "store failed"

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def error_info(exc: BaseException) -> dict[str, JSON]:
    kind = type(exc)
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def encode(value: object, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from None


def check_unicode(value: object, what: str) -> None:
    """Reject lone surrogates: `json.dumps` escapes them, but every later read of the value
    as UTF-8 (an HTTP response, a terminal) would fail."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode (it holds a lone surrogate)") from None


def encode_event(topic: object, payload: object) -> str:
    """Validate an event (a topic name, a JSON object as payload) and encode its payload;
    raise InvalidInput. The one check for events from Python, the CLI, HTTP and `ctx.emit`."""
    if not isinstance(topic, str) or not topic.strip():
        raise InvalidInput("an event needs a topic")
    data = {} if payload is None else payload
    if not isinstance(data, dict):
        raise InvalidInput(f"an event payload must be a JSON object, got {type(data).__name__}")
    text = encode(data, f"the payload of event {topic!r}")
    check_unicode(data, f"the payload of event {topic!r}")
    return text


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Context:
    """What an `async def` handler receives: durable steps, timers, heartbeats, logging."""

    def __init__(
        self,
        run: Run,
        history: History,
        store: Store,
        owner: str,
        threads: ThreadPoolExecutor,
        new_run: NewRunFactory,
        tools: dict[str, Tool] | None = None,
        loops: LoopGuard | None = None,
    ) -> None:
        self.run_id = run.id
        self.agent = run.agent
        self.attempt = run.attempt
        self._run = run
        self._history = history
        self._store = store
        self._owner = owner
        self._threads = threads
        self._seq = 0
        self._beat_written = time.time()  # the claim itself recorded a heartbeat
        self.last_beat = time.monotonic()  # progress seen: a step completed, a heartbeat
        self.fatal: BaseException | None = None  # replay error the handler must not swallow
        self.stop = run.stop_requested  # what an operator asked: see `request_stop`
        self.abandoned = False
        self._compensations: list[tuple[str, Callable[[Any], Any], Any]] = []
        self._compensating = False
        self._new_run = new_run
        self._tools = tools or {}
        self._loops = LoopCounter(loops or NO_LOOP_LIMITS)
        self._replay_until = max(history.steps, default=0)
        self.log = ReplayAwareLogger(
            self,
            get_logger("nonstop.agent", agent=run.agent, run_id=run.id, attempt=run.attempt),
        )

    @property
    def replaying(self) -> bool:
        """True while the handler re-walks steps that are already recorded."""
        return self._seq < self._replay_until

    @property
    def idempotency_key(self) -> str:
        """`"{run_id}:{seq}"` of the step executing now (or of the next step, outside one).

        Stable across retries and restarts: pass it to external APIs so they can dedupe."""
        return _current_key.get() or f"{self.run_id}:{self._seq + 1}"

    def _next_seq(self) -> int:
        self._check_alive()
        self._seq += 1
        self._stop_looping(self._loops.step())  # replayed calls count too
        return self._seq

    def allow_loop_rounds(self, rounds: int) -> None:
        """Grant `rounds` allowances of the agent's loop limits (one plus the resumes
        after a loop pause)."""
        self._loops.rounds = rounds

    def _stop_looping(self, reason: str | None) -> None:
        if reason is not None:
            self.fatal = LoopDetected(f"run {self.run_id}: {reason}; the run is paused")
            raise self.fatal

    def _check_alive(self) -> None:
        if self.abandoned:
            raise Interrupt(Interrupt.ABANDONED)
        if self.fatal is not None:
            # the handler caught a fatal error and went on: unwind it for good (a loop
            # around `except Exception` would otherwise spin without ever yielding)
            raise Interrupt(Interrupt.ABANDONED)

    @property
    def cancel_requested(self) -> bool:
        return self.stop == Stop.CANCEL

    def request_stop(self, stop: Stop) -> None:
        """Note an operator's request (a cancel overrides a pause, never the reverse)."""
        self.stop = max(self.stop, stop, key=_STOP_RANK.__getitem__)

    def _check_cancel(self) -> None:
        """Stop before doing new work for a run asked to cancel or pause: the next step
        boundary. Not checked while replaying recorded steps: the replay must reach every
        completed step so that a saga knows all it has to undo."""
        if self.stop == Stop.CANCEL:
            raise Interrupt(Interrupt.CANCELLED)
        if self.stop == Stop.PAUSE:
            raise Interrupt(Interrupt.PAUSE)

    def _recorded(self, seq: int, name: str) -> StepRecord | None:
        record = self._history.steps.get(seq)
        if record is None:
            tried = self._history.attempts.get(seq)
            if tried and tried[0].name != name:
                self._nondeterminism(seq, tried[0].name, name)
            return None
        if record.name != name:
            self._nondeterminism(seq, record.name, name)
        if checksum(seq, record.name, record.status, record.payload) != record.checksum:
            self.fatal = CorruptCheckpoint(
                f"run {self.run_id}: step {seq} ({record.name}) failed its checksum;"
                " the run is paused instead of replaying corrupt data"
            )
            raise self.fatal
        return record

    def validate_history(self) -> None:
        """Check every record's checksum before replaying any of them (a restart must not
        resume from a damaged history); raise CorruptCheckpoint, fatal, on the first bad one."""
        for seq in sorted(self._history.steps):
            record = self._history.steps[seq]
            if checksum(seq, record.name, record.status, record.payload) != record.checksum:
                self.fatal = CorruptCheckpoint(
                    f"run {self.run_id}: step {seq} ({record.name}) failed its checksum;"
                    " the run is paused instead of replaying corrupt data"
                )
                raise self.fatal

    def _nondeterminism(self, seq: int, recorded: str, called: str) -> None:
        self.fatal = NonDeterminismError(
            f"run {self.run_id}: step {seq} is recorded as {recorded!r} but the code now"
            f" calls {called!r}; the run is paused"
        )
        raise self.fatal

    def _replay(self, record: StepRecord) -> Any:
        try:
            value = json.loads(record.payload)
        except ValueError:
            self.fatal = CorruptCheckpoint(
                f"run {self.run_id}: step {record.seq} ({record.name}) holds unreadable JSON"
            )
            raise self.fatal from None
        if record.status == StepStatus.FAILED:
            raise StepFailed(value.get("type", "Exception"), value.get("message", ""))
        return value

    async def step(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: Duration | None = None,
        compensate: Callable[[Any], Any] | None = None,
        breaker: CircuitBreaker | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run `fn(*args, **kwargs)` once, durably: its result is committed before this
        returns, and on replay the recorded result is returned without calling `fn`.

        A failure is retried per `retry` (no retries by default); the final failure is
        recorded and raised as `StepFailed`, on replay too. `fn` may be sync (run in a
        worker thread) or async. If `fn` takes an `idempotency_key` parameter, it gets one.
        With `compensate`, the step is part of a saga: if the run finally fails or is
        cancelled, `compensate(result)` undoes it (newest step first, each durably).
        With `breaker`, each try goes through that shared circuit breaker: while it is open
        the try fails at once with BreakerOpen, without calling `fn`.
        """
        seq = self._next_seq()
        step_name = name or step_name_of(fn)
        record = self._recorded(seq, step_name)
        if record is not None:
            result = self._replay(record)
        else:
            self._check_cancel()
            result = await self._execute(
                seq, step_name, fn, args, kwargs, retry, timeout, breaker=breaker
            )
        if compensate is not None:
            self._compensations.append((step_name, compensate, result))
        return result

    async def tool(self, name: str, /, **args: Any) -> Any:
        """Call the registered tool `name` with `args` as a durable step (`tool:{name}`)
        under the tool's retry, timeout, circuit breaker and rate limit.

        Only tools listed in the agent's `tools=` may be called: any other call raises
        ToolDenied, and the tool is never reached. A call over the tool's rate limit waits
        for its turn (parked as `sleeping` when the wait is long)."""
        seq = self._next_seq()
        step_name = f"tool:{name}"
        self._stop_looping(self._loops.tool(name, args))
        record = self._recorded(seq, step_name)
        if record is not None:  # even if a later version denies it: it happened
            return self._replay(record)
        tool = self._tools.get(name)
        if tool is None:
            allowed = ", ".join(sorted(self._tools)) or "none"
            self.log.warning("tool_denied", tool_name=name)
            raise ToolDenied(
                f"agent {self.agent!r} may not call tool {name!r} (its tools: {allowed})"
            )
        self._check_cancel()
        return await self._execute(
            seq,
            step_name,
            tool.fn,
            (),
            args,
            tool.retry,
            tool.timeout,
            breaker=tool.breaker,
            rate=None if tool.rate is None else (RATE_KEY.format(name), tool.rate),
        )

    async def _execute(
        self,
        seq: int,
        step_name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry | None,
        timeout: Duration | None,
        *,
        park_long_waits: bool = True,
        breaker: CircuitBreaker | None = None,
        rate: tuple[str, Rate] | None = None,
    ) -> Any:
        """Execute a step that has no record: try, retry per policy, commit the outcome.
        Each try takes a token of the rate-limit bucket `rate` (key, rate) first."""
        policy = retry or NO_RETRY
        limit = optional_seconds(timeout)
        key = f"{self.run_id}:{seq}"
        if _accepts_key(fn):
            kwargs = {**kwargs, "idempotency_key": key}
        tried = self._history.attempts.get(seq, [])
        failures = len(tried)
        first_start: float | None = tried[0].started_at if tried else None
        if tried and tried[-1].retry_at is None:
            # The last try gave up, then the node died before the step's error was
            # committed: commit it now, never try beyond the policy.
            last = tried[-1].error
            payload = encode({"type": last.get("type"), "message": last.get("message")}, "error")
            await self._commit(
                seq, step_name, StepStatus.FAILED, payload, failures, first_start or 0
            )
            raise StepFailed(str(last.get("type")), str(last.get("message")))
        while True:
            if tried and tried[-1].retry_at is not None:
                await self._wait_for_retry(seq, step_name, tried[-1].retry_at, park_long_waits)
            started = time.time()
            first_start = first_start or started
            try:
                if rate is not None:
                    if breaker is not None:  # an open breaker fails at once, keeping the token
                        await self._through_breaker(breaker, peek=True)
                    await self._wait_for_token(seq, step_name, *rate)
                if breaker is not None:
                    await self._through_breaker(breaker)
                result = await self._call(fn, args, kwargs, limit, key)
                payload = encode(result, f"the result of step {step_name!r}")
            except Exception as exc:
                if isinstance(exc, MemoryError) and isolation_child():
                    os._exit(MEMORY_EXIT)  # the limit is the story, not this step's error
                if breaker is not None and not isinstance(exc, BreakerOpen):
                    await self._tell_breaker(breaker, ok=False)
                failures += 1
                done = time.time()
                retrying = policy.should_retry(exc, failures) and not isinstance(exc, InvalidInput)
                retry_at = done + policy.delay(failures) if retrying else None
                attempt = Attempt(
                    self.run_id,
                    seq,
                    self.attempt,
                    failures,
                    step_name,
                    error_info(exc),
                    started,
                    done,
                    retry_at,
                )
                await self._durably(self._store.record_attempt(self._owner, attempt))
                self.log.warning(
                    "step_failed",
                    step=step_name,
                    seq=seq,
                    step_attempt=failures,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_at=retry_at,
                )
                if retrying:
                    tried = [*tried, attempt]
                    continue
                await self._commit(
                    seq, step_name, StepStatus.FAILED, _error_payload(exc), failures, first_start
                )
                raise StepFailed(attempt.error["type"], str(exc)) from exc
            if breaker is not None:
                await self._tell_breaker(breaker, ok=True)
            await self._commit(
                seq, step_name, StepStatus.COMPLETED, payload, failures + 1, first_start
            )
            return json.loads(payload)

    async def _wait_for_token(self, seq: int, name: str, key: str, rate: Rate) -> None:
        """Reserve a token of the shared bucket `key` and wait in memory until it is due,
        when that is soon; else park the run until it will be soon (replay then comes
        back here and asks again). A parked run reserves nothing: its checkpoints are all
        it keeps, so a reservation would be made twice."""
        now = time.time()
        reserved, wait = await self._durably(
            self._store.take_token(key, rate, now, INLINE_RETRY_WAIT)
        )
        if not reserved:
            at = now + wait
            reason = f"step {seq} ({name}) waits for rate limit {rate} until {iso(at)}"
            await self._park(RunStatus.SLEEPING, at, reason)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _through_breaker(self, breaker: CircuitBreaker, *, peek: bool = False) -> None:
        """Raise BreakerOpen unless the breaker lets a call through now; with `peek`, only
        ask (a half-open breaker's trial is not used up)."""
        now = time.time()

        def admit(state: BreakerState) -> tuple[bool, BreakerState]:
            admitted, after = breaker.admit(state, now)
            return admitted, state if peek else after

        admitted = await self._durably(self._store.update_breaker(breaker.name, admit))
        if not admitted:
            raise BreakerOpen(f"circuit breaker {breaker.name!r} is open: not called")

    async def _tell_breaker(self, breaker: CircuitBreaker, *, ok: bool) -> None:
        now = time.time()
        await self._durably(
            self._store.update_breaker(
                breaker.name, lambda state: (None, breaker.record(state, ok, now))
            )
        )

    async def compensate(self) -> None:
        """Undo the saga: call each completed step's `compensate(result)`, newest first.

        Each compensation is itself a durable step, recorded under a negative sequence
        number, so after a crash the ones done are skipped and the rest continue. Retried
        per `COMPENSATION_RETRY`; if one still fails, StepFailed is raised (the run dies
        with that error: a human must finish the undo)."""
        self._compensating = True  # the executor undoes a stopped handler's work
        for index, (name, undo, result) in enumerate(reversed(self._compensations), start=1):
            seq, step_name = -index, f"compensate:{name}"
            if self._recorded(seq, step_name) is not None:
                continue
            await self._execute(
                seq,
                step_name,
                undo,
                (result,),
                {},
                COMPENSATION_RETRY,
                None,
                park_long_waits=False,
            )

    @property
    def compensable(self) -> bool:
        return bool(self._compensations)

    async def _commit(
        self,
        seq: int,
        name: str,
        status: StepStatus,
        payload: str,
        attempts: int,
        started: float,
    ) -> None:
        record = StepRecord(
            run_id=self.run_id,
            seq=seq,
            name=name,
            status=status,
            payload=payload,
            checksum=checksum(seq, name, status, payload),
            attempts=attempts,
            started_at=started,
            finished_at=time.time(),
        )
        self.last_beat = time.monotonic()
        # A step is a heartbeat; writing it to the run's row once a second is enough.
        beat = record.finished_at - self._beat_written >= BEAT_EVERY
        if beat:
            self._beat_written = record.finished_at
        self.request_stop(
            await self._durably(self._store.record_step(self._owner, record, beat=beat))
        )

    async def _durably(self, write: Awaitable[T]) -> T:
        """Await a store write; if the store cannot take it, stop the handler.

        A failed checkpoint must not look like a failed step: a handler catching it would
        go on with a gap in its history. The run is left instead, to be recovered from its
        last checkpoint once its lease lapses (by this node or another)."""
        if self.abandoned and not self._compensating:
            # A stopped execution whose step finished late (an abandoned thread) must not
            # write: the same node may have claimed the run again, so the lease check
            # alone would let this stale result in.
            if inspect.iscoroutine(write):
                write.close()
            raise Interrupt(Interrupt.ABANDONED)
        try:
            return await write
        except LeaseLost:
            self.abandoned = True
            raise Interrupt(Interrupt.LEASE_LOST) from None
        except Exception as exc:
            self.abandoned = True
            self.log.error("checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
            raise Interrupt(Interrupt.STORE_FAILED) from exc

    async def _call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        limit: float | None,
        key: str,
    ) -> Any:
        token = _current_key.set(key)
        try:
            if inspect.iscoroutinefunction(fn):
                awaitable: Awaitable[Any] = fn(*args, **kwargs)
            else:
                call = functools.partial(fn, *args, **kwargs)
                loop = asyncio.get_running_loop()
                awaitable = loop.run_in_executor(
                    self._threads, contextvars.copy_context().run, call
                )
            if limit is None:
                return await awaitable
            try:
                async with asyncio.timeout(limit):
                    return await awaitable
            except TimeoutError as exc:
                raise StepTimeout(f"step timed out after {limit:g}s") from exc
        finally:
            _current_key.reset(token)

    async def _wait_for_retry(
        self, seq: int, name: str, retry_at: float, park_long_waits: bool = True
    ) -> None:
        remaining = retry_at - time.time()
        if remaining <= 0:
            return
        if remaining <= INLINE_RETRY_WAIT or not park_long_waits:
            await asyncio.sleep(remaining)
            return
        await self._park(
            RunStatus.SLEEPING,
            retry_at,
            f"retrying step {seq} ({name}) at {iso(retry_at)}",
        )

    async def sleep(self, duration: Duration) -> None:
        """Durable timer: the run parks as `sleeping`, holding no worker slot, and continues
        after `duration` even if every node restarts meanwhile."""
        seq = self._next_seq()
        record = self._recorded(seq, "sleep")
        if record is not None:
            until = float(self._replay(record)["until"])
            if until <= time.time():
                return
            await self._park(RunStatus.SLEEPING, until, f"sleeping until {iso(until)}")
        self._check_cancel()
        now = time.time()
        until = now + seconds(duration)
        timer = completed_step(self.run_id, seq, "sleep", encode({"until": until}, "sleep"), now)
        await self._park(RunStatus.SLEEPING, until, f"sleeping until {iso(until)}", timer)

    async def wait_for(
        self,
        name: str,
        timeout: Duration | None = None,
        default: JSON = None,
        *,
        prompt: str | None = None,
    ) -> Any:
        """Wait, durably, for the signal `name` (`nonstop signal RUN name --data JSON`) and
        return its data; after `timeout`, return `default` instead.

        The run parks as `waiting`, holding no worker and no memory. A signal sent before
        the wait is kept and consumed by it; the timeout survives restarts."""
        # Two positions: the deadline, fixed when the wait first starts, then the outcome.
        seq = self._next_seq()
        marker = self._recorded(seq, f"wait:{name}")
        if marker is None:
            self._check_cancel()
            now = time.time()
            until = None if timeout is None else now + seconds(timeout)
            marker = completed_step(
                self.run_id, seq, f"wait:{name}", encode({"until": until}, "wait"), now
            )
            await self._durably(self._store.record_step(self._owner, marker))
        else:
            until = self._replay(marker)["until"]
        seq = self._next_seq()
        outcome_name = f"signal:{name}"
        record = self._recorded(seq, outcome_name)
        if record is not None:
            return self._replay(record)
        self._check_cancel()
        now = time.time()
        received = await self._durably(
            # a signal sent after the deadline loses to the timeout, whether or not a node
            # was up at the deadline to record it
            self._store.receive_signal(
                self._owner,
                self.run_id,
                name,
                seq=seq,
                step_name=outcome_name,
                now=now,
                sent_by=until,
            )
        )
        if received is not None:
            return json.loads(received)
        if until is not None and now >= until:
            payload = encode(default, f"the default of wait_for({name!r})")
            await self._commit(seq, outcome_name, StepStatus.COMPLETED, payload, 1, now)
            return json.loads(payload)
        what = f'approval "{prompt}"' if prompt is not None else f'signal "{name}"'
        reason = f"waiting for {what} since {iso(marker.started_at)}"
        if until is not None:
            reason += f", until {iso(until)}"
        await self._park(RunStatus.WAITING, until, reason, wake_on_signal=name)

    async def approval(
        self, prompt: str, timeout: Duration | None = None, default: JSON = False
    ) -> Any:
        """Wait for a human's answer to `prompt` (the signal `approval`); `runs --status
        waiting` and `show` display the prompt. Returns the signal's data (e.g. `true`)."""
        return await self.wait_for("approval", timeout, default, prompt=prompt)

    async def emit(self, topic: str, payload: dict[str, JSON] | None = None) -> str:
        """Publish an event, exactly once (it is a step; its id is the step's idempotency
        key). Every agent subscribed to `topic` runs once for it. Returns the event id."""
        text = encode_event(topic, payload)

        async def publish(idempotency_key: str) -> str:
            await self._store.create_event(idempotency_key, topic, text, time.time())
            return idempotency_key

        event_id: str = await self.step(publish, name=f"emit:{topic}")
        return event_id

    async def call(self, agent: str, input: dict[str, JSON] | None = None) -> Any:
        """Run `agent` as a child run and return its output; the parent parks (holding no
        worker) while the child works. A child that dies fails this step with its error."""
        outputs = await self._children("call", agent, [input], 1)
        return outputs[0]

    async def map(
        self, agent: str, inputs: list[dict[str, JSON]], max_parallel: int = 10
    ) -> list[Any]:
        """Run `agent` once per input as child runs, at most `max_parallel` at a time, and
        return their outputs in input order (fan-out, fan-in)."""
        if max_parallel < 1:
            raise InvalidInput("max_parallel must be at least 1")
        return await self._children("map", agent, list(inputs), max_parallel)

    async def continue_as_new(self, input: dict[str, JSON] | None = None) -> NoReturn:
        """End this run and start a fresh one of the same agent with `input` and an empty
        history (id `"{run id}#{n}"`, the next in the chain), so a forever-agent's history
        stays bounded. Never returns."""
        self._check_cancel()
        new = self._new_run(self.agent, input, next_in_chain(self.run_id))
        await self._durably(self._store.continue_run(self._owner, self.run_id, new, time.time()))
        raise Interrupt(Interrupt.PARKED)  # the run has ended; nothing is left to write

    async def _children(
        self, kind: str, agent: str, inputs: list[dict[str, JSON] | None], max_parallel: int
    ) -> list[Any]:
        seq = self._next_seq()
        name = f"{kind}:{agent}"
        record = self._recorded(seq, name)
        if record is not None:
            outputs: list[Any] = self._replay(record)
            return outputs
        self._check_cancel()
        # a run-level retry of the parent starts the children of a failed call afresh
        suffix = "" if self.attempt == 1 else f"~{self.attempt}"
        ids = [f"{self.run_id}/{seq}.{i}{suffix}" for i in range(len(inputs))]
        requests = [
            self._new_run(agent, data, run_id) for data, run_id in zip(inputs, ids, strict=True)
        ]
        started = time.time()
        known = {run.id: run for run in await self._store.list_children(self.run_id)}
        mine = [known.get(run_id) for run_id in ids]
        failed = next(
            (
                c
                for c in mine
                if c is not None and c.status in (RunStatus.DEAD, RunStatus.CANCELLED)
            ),
            None,
        )
        if failed is not None:
            error = failed.error or {"type": "nonstop.errors.RunCancelled", "message": "cancelled"}
            message = f"child run {failed.id} is {failed.status}: {error.get('message', '')}"
            payload = encode({"type": error.get("type"), "message": message}, "error")
            await self._commit(seq, name, StepStatus.FAILED, payload, 1, started)
            raise StepFailed(str(error.get("type")), message)
        if all(c is not None and c.status == RunStatus.COMPLETED for c in mine):
            payload = encode([c.output for c in mine if c is not None], f"the outputs of {name}")
            await self._commit(seq, name, StepStatus.COMPLETED, payload, 1, started)
            return list(json.loads(payload))
        running = sum(1 for c in mine if c is not None and not c.status.finished)
        for request, child in zip(requests, mine, strict=True):
            if running >= max_parallel:
                break
            if child is None:
                new = replace(request, parent_id=self.run_id)
                await self._durably(self._store.create_run(new, time.time()))
                running += 1
        finished = sum(1 for c in known.values() if c.status.finished)
        unfinished = sum(1 for c in mine if c is None or not c.status.finished)
        await self._park(
            RunStatus.WAITING,
            None,
            f"waiting for {unfinished} child run(s) of {agent} (step {seq})",
            children_seen_finished=finished,
        )
        raise AssertionError("unreachable: _park raises")

    async def _park(
        self,
        status: RunStatus,
        wake_at: float | None,
        reason: str,
        record: StepRecord | None = None,
        *,
        wake_on_signal: str | None = None,
        children_seen_finished: int | None = None,
    ) -> NoReturn:
        # The record and the park share one transaction: a crash leaves either neither (the
        # call runs again on replay) or both (replay finds the timer and waits it out).
        await self._durably(
            self._store.park_run(
                self._owner,
                self.run_id,
                status=status,
                wake_at=wake_at,
                reason=reason,
                now=time.time(),
                record=record,
                wake_on_signal=wake_on_signal,
                children_seen_finished=children_seen_finished,
            )
        )
        raise Interrupt(Interrupt.PARKED)

    async def heartbeat(self, status: str = "ok", **fields: JSON) -> None:
        """Tell the store this run is alive and what it is doing (not part of replay)."""
        await self.beat(status, fields, in_step=_current_key.get() is not None)

    async def beat(self, status: str, fields: dict[str, JSON], *, in_step: bool) -> None:
        """`heartbeat`, told whether it comes from inside a step. A cancel stops the run
        there too; a pause only between steps (a step is never cut in half for it); an
        undo in progress (compensations) is finished whatever is asked."""
        self._check_alive()
        encode(fields, "heartbeat fields")
        self.last_beat = time.monotonic()
        beat = self._store.heartbeat(self._owner, self.run_id, status, fields, time.time())
        self.request_stop(await self._durably(beat))
        if not self._compensating and (self.stop == Stop.CANCEL or not in_step):
            self._check_cancel()


class ReplayAwareLogger:
    """`ctx.log`: a structlog logger that stays quiet while the handler is replaying, so
    a message is logged once per real execution, not once per replay."""

    def __init__(self, ctx: Context, logger: Logger) -> None:
        self._ctx = ctx
        self._logger = logger

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if not self._ctx.replaying:
            getattr(self._logger, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit("exception", event, fields)


def _error_payload(exc: BaseException) -> str:
    info = error_info(exc)
    return encode({"type": info["type"], "message": info["message"]}, "error")


def isolation_child() -> bool:
    """True inside the child process of an isolated run."""
    return os.environ.get(ISOLATED_ENV) == "1"


def next_in_chain(run_id: str) -> str:
    """`report` -> `report#1` -> `report#2`: the id a continue-as-new run takes."""
    base, sep, number = run_id.rpartition("#")
    if sep and number.isdigit():
        return f"{base}#{int(number) + 1}"
    return f"{run_id}#1"


def step_name_of(fn: Callable[..., Any]) -> str:
    """A step's default name: its qualified name without the `<locals>` of enclosing
    functions (`Client.fetch`, `summarise`)."""
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return str(qualname).rpartition("<locals>.")[2]


@functools.lru_cache(maxsize=1024)
def _accepts_key(fn: Callable[..., Any]) -> bool:
    try:
        return "idempotency_key" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class SyncContext:
    """The Context API for plain `def` handlers: the same calls, without `await`.

    The handler runs in a worker thread; each call is carried out on the event loop and
    this thread waits for its outcome."""

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop
        self.run_id = ctx.run_id
        self.agent = ctx.agent
        self.attempt = ctx.attempt
        self.log = ctx.log

    @property
    def idempotency_key(self) -> str:
        return self._ctx.idempotency_key

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._ctx.abandoned:
            coro.close()
            raise Interrupt(Interrupt.ABANDONED)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def step(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: Duration | None = None,
        compensate: Callable[[Any], Any] | None = None,
        breaker: CircuitBreaker | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._wait(
            self._ctx.step(
                fn,
                *args,
                name=name,
                retry=retry,
                timeout=timeout,
                compensate=compensate,
                breaker=breaker,
                **kwargs,
            )
        )

    def tool(self, name: str, /, **args: Any) -> Any:
        return self._wait(self._ctx.tool(name, **args))

    def wait_for(
        self,
        name: str,
        timeout: Duration | None = None,
        default: JSON = None,
        *,
        prompt: str | None = None,
    ) -> Any:
        return self._wait(self._ctx.wait_for(name, timeout, default, prompt=prompt))

    def approval(self, prompt: str, timeout: Duration | None = None, default: JSON = False) -> Any:
        return self._wait(self._ctx.approval(prompt, timeout, default))

    def emit(self, topic: str, payload: dict[str, JSON] | None = None) -> str:
        return self._wait(self._ctx.emit(topic, payload))

    def call(self, agent: str, input: dict[str, JSON] | None = None) -> Any:
        return self._wait(self._ctx.call(agent, input))

    def map(self, agent: str, inputs: list[dict[str, JSON]], max_parallel: int = 10) -> list[Any]:
        return self._wait(self._ctx.map(agent, inputs, max_parallel))

    def continue_as_new(self, input: dict[str, JSON] | None = None) -> NoReturn:
        self._wait(self._ctx.continue_as_new(input))
        raise AssertionError("unreachable: continue_as_new never returns")

    def sleep(self, duration: Duration) -> None:
        self._wait(self._ctx.sleep(duration))

    def heartbeat(self, status: str = "ok", **fields: JSON) -> None:
        # the step, if any, is this thread's: the loop that carries the beat cannot see it
        in_step = _current_key.get() is not None
        self._wait(self._ctx.beat(status, fields, in_step=in_step))
