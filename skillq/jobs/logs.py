"""A job's log as clients see it (REST, SSE, MCP, CLI): one page of lines and its cursor.

`log_page_to_dict` writes a page from the table below, and the OpenAPI document takes its
schemas from here, so what the server sends and what the document promises agree.
"""

from __future__ import annotations

from typing import Any

from skillq.jobs.fields import iso
from skillq.storage.job_logs import MAX_READ_LINES, LogPage
from skillq.storage.models import JobLogLine

SOURCES = ["log", "tool", "error"]

LOG_LINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer", "minimum": 1, "description": "the line's number in its job"},
        "at": {"type": "string", "format": "date-time"},
        "source": {
            "type": "string",
            "enum": SOURCES,
            "description": "log: a log record; tool: a skill tool's stderr; error: the failure",
        },
        "level": {"type": "string", "description": "the record's level (INFO, ERROR, ...)"},
        "text": {"type": "string", "description": "may span lines (a traceback)"},
    },
    "required": ["seq", "at", "source", "level", "text"],
}

LOG_PAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "state": {"type": "string", "description": "the job's state when the page was read"},
        "lines": {"type": "array", "items": LOG_LINE_SCHEMA, "maxItems": MAX_READ_LINES},
        "next_since": {
            "type": "integer",
            "minimum": 0,
            "description": "pass as `since` for the lines that follow",
        },
    },
    "required": ["job_id", "state", "lines", "next_since"],
}


def line_to_dict(line: JobLogLine) -> dict[str, Any]:
    return {
        "seq": line.seq,
        "at": iso(line.at),
        "source": line.source,
        "level": line.level,
        "text": line.text,
    }


def log_page_to_dict(job_id: str, state: str, page: LogPage) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "state": state,
        "lines": [line_to_dict(line) for line in page.lines],
        "next_since": page.next_since,
    }
