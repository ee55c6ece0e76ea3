"""How a skillq process writes its log: structlog over the standard library's logging.

Every record, ours and dramatiq's, uvicorn's or peewee's alike, goes through the root
logger's handlers; this module gives those handlers structlog's `ProcessorFormatter`, so
one setting (`[logging] format`) decides how all of them look:

- ``console``: one readable line per record (colours only on a terminal);
- ``json``: one JSON object per line, for a log collector.

Whatever is bound with `structlog.contextvars` in the logging thread is merged into each
record: the worker binds `job_id`, `trace_id` and `worker_id` while it runs a job
(`skillq.brokers.job_status`), so every line about a job carries them, including the
lines dramatiq itself writes from that thread.

Worker processes started by ``dramatiq`` have already pointed the root handler at the pipe
their parent reads; we keep that handler and only change how it formats, so the lines still
reach the parent. The parent process's own few lines (boot, stop) keep dramatiq's format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

FORMATS = ("console", "json")


def _drop_color_message(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """uvicorn passes a copy of its message with terminal colour codes as an extra field."""
    event.pop("color_message", None)
    return event


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def formatter(log_format: str, stream: TextIO | None = None) -> logging.Formatter:
    """A `logging.Formatter` rendering records as `log_format` ("console" or "json")."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)} (got {log_format!r})")
    if log_format == "json":
        final: list[Any] = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        colors = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Plain tracebacks: rich's boxes with every local variable swamp a log.
            structlog.dev.ConsoleRenderer(
                colors=colors, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    return structlog.stdlib.ProcessorFormatter(
        # `extra={...}` of a stdlib call becomes fields too (e.g. a job id logged from a
        # thread that is not the job's).
        foreign_pre_chain=[
            *_shared_processors(),
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
        ],
        processors=final,
    )


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    """Route every logger of this process through structlog's formatting, at `level`.

    Keeps the root logger's existing stream handlers (dramatiq's pipe in a worker process)
    and adds one on stderr when there is none. Safe to call again: the last call wins.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        # Only handlers that write lines somewhere; others (the worker's per-job log capture,
        # brokers.job_logs) format records their own way.
        if isinstance(handler, logging.StreamHandler):
            handler.setFormatter(formatter(log_format, handler.stream))
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
