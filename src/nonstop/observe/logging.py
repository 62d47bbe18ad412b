"""JSON logs: one object per line with ts, level, event and the run's fields.

Only `nonstop serve` configures logging globally; an embedding program keeps its own setup.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(*, json: bool = True, level: int = logging.INFO) -> None:
    """Send structlog and stdlib logs to stderr, as JSON lines (or readable text)."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
