"""nonstop: keeps AI agents running 24/7 with durable steps, retries and supervision."""

from nonstop.app import Agent, App, RunHandle
from nonstop.context import Context, SyncContext
from nonstop.errors import (
    BreakerOpen,
    ConfigError,
    CorruptCheckpoint,
    InvalidInput,
    LoopDetected,
    NonDeterminismError,
    NonstopError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunTimeout,
    StepFailed,
    StepTimeout,
    StoreError,
    ToolDenied,
    UnknownAgent,
)
from nonstop.models import RunStatus
from nonstop.policies.breaker import CircuitBreaker
from nonstop.policies.restart import Restart
from nonstop.policies.retry import Retry
from nonstop.tools import Tool

__all__ = [
    "Agent",
    "App",
    "BreakerOpen",
    "CircuitBreaker",
    "ConfigError",
    "Context",
    "CorruptCheckpoint",
    "InvalidInput",
    "LoopDetected",
    "NonDeterminismError",
    "NonstopError",
    "Restart",
    "Retry",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "RunNotFound",
    "RunStatus",
    "RunTimeout",
    "StepFailed",
    "StepTimeout",
    "StoreError",
    "SyncContext",
    "Tool",
    "ToolDenied",
    "UnknownAgent",
]
