"""structlog, configured once per process: JSON lines when stderr is not a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure(level: str = "info", process: str = "ballonet") -> structlog.stdlib.BoundLogger:
    global _configured
    if not _configured:
        renderer: structlog.typing.Processor
        if sys.stderr.isatty():
            renderer = structlog.dev.ConsoleRenderer()
        else:
            renderer = structlog.processors.JSONRenderer()
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=True,
        )
        _configured = True
    return structlog.get_logger().bind(process=process)
