"""The one exception tree of nonstop: every error the runtime raises on purpose."""

from __future__ import annotations


class NonstopError(Exception):
    """Base of every error nonstop raises deliberately."""


class ConfigError(NonstopError):
    """The app, an agent or a setting is declared wrongly (caught at declaration time)."""


class StoreError(NonstopError):
    """The store cannot be opened or used (missing file, bad URL, unreachable server)."""


class StoreUnavailable(StoreError):
    """The database does not answer now (server down, network cut); worth retrying."""


class UnknownAgent(NonstopError):
    """A run was asked of an agent the app does not define."""


class RunNotFound(NonstopError):
    """No run has the given id."""


class InvalidState(NonstopError):
    """The run is not in a state that allows this (resuming a run that is not paused)."""


class InvalidInput(NonstopError):
    """A run's input or output is not a JSON object / JSON-serialisable value."""


class NonDeterminismError(NonstopError):
    """On replay, the handler called a different step than the one recorded at that position.

    The run is paused, never silently continued: its history no longer matches its code.
    """


class CorruptCheckpoint(NonstopError):
    """A recorded step result failed its checksum; the run is paused rather than fed bad data."""


class StepTimeout(NonstopError, TimeoutError):
    """A step ran longer than its `timeout=`."""


class BreakerOpen(NonstopError):
    """A circuit breaker is open: the call was not made (the dependency keeps failing)."""


class LoopDetected(NonstopError):
    """A run went over `max_steps` or repeated a tool call past `max_repeats`; it is
    paused for a human (`nonstop resume` continues it with a fresh allowance)."""


class ToolDenied(NonstopError):
    """An agent called a tool its `tools=` list does not name; the tool was not called."""


class ChildDied(NonstopError):
    """The child process of an isolated run ended without settling it; `reason` says
    how (oom, cpu_limit, signal N, exit code N)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class RunTimeout(NonstopError, TimeoutError):
    """An execution of a run took longer than the agent's `timeout=`."""


class RunFailed(NonstopError):
    """Raised by `RunHandle.result()` when the run ended `dead`."""

    def __init__(self, run_id: str, error: str) -> None:
        super().__init__(f"run {run_id} is dead: {error}")
        self.run_id = run_id
        self.error = error


class RunCancelled(NonstopError):
    """Raised by `RunHandle.result()` (and inside a handler) when the run was cancelled."""


class StepFailed(NonstopError):
    """A step's recorded error, re-raised on replay when the original exception type is not
    importable or not constructible from its message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
