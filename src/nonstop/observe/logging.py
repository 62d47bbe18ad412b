"""Structured logs: one JSON object per line with ts, level, event and the run's fields.

nonstop logs through the standard `logging` module (loggers named `nonstop.*`), with
structlog building the records, so a program that embeds nonstop controls its logs the
usual way. `nonstop serve` installs the JSON-lines handler (`configure`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

Logger = structlog.stdlib.BoundLogger


def get_logger(name: str, **fields: Any) -> Logger:
    """A structlog logger writing to the stdlib logger `name`, with `fields` bound."""
    logger: Logger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    return logger.bind(**fields) if fields else logger


def configure(*, json: bool = True, level: int = logging.INFO) -> None:
    """Send `nonstop.*` logs to stderr as JSON lines (or readable text)."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.stdlib.add_log_level,
                renderer,
            ],
            foreign_pre_chain=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                structlog.stdlib.add_log_level,
            ],
        )
    )
    root = logging.getLogger("nonstop")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
