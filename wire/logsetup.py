"""structlog, configured once per process: JSON lines when stderr is not a terminal, else
console lines with control characters escaped."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from wire.shown import for_terminal

_configured = False


def escape_for_terminal(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Peers' words (a client id, an unknown op's name) are logged too: on a terminal, their
    control characters are escaped (JSON lines escape them already; other values are repr'd)."""
    return {key: for_terminal(value) if isinstance(value, str) else value for key, value in event.items()}


def configure(level: str = "info", process: str = "ballonet") -> structlog.stdlib.BoundLogger:
    global _configured
    if not _configured:
        console = sys.stderr.isatty()
        renderer: structlog.typing.Processor
        if console:
            renderer = structlog.dev.ConsoleRenderer()
        else:
            renderer = structlog.processors.JSONRenderer()
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                *([escape_for_terminal] if console else []),
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=True,
        )
        _configured = True
    return structlog.get_logger().bind(process=process)


def reset() -> None:
    """Forget the configuration, so that the next `configure` makes it afresh: for a process
    forked from one already configured (guest/fleet.py), whose stderr is now another file."""
    global _configured
    structlog.reset_defaults()
    _configured = False
