"""JSON Schemas of the remote worker routes' bodies: what the handlers validate requests
against and what the OpenAPI document describes, one definition for both."""

from __future__ import annotations

from typing import Any

from skillq.jobs.logs import SOURCES
from skillq.jobs.remote_fetch import MAX_WAIT_SECS
from skillq.jobs.remote_reports import MAX_LOG_LINES, MAX_RUNNING_IDS
from skillq.storage.job_logs import MAX_LINE_CHARS

#: Lengths rather than patterns: an id that matches nothing is answered 404 (or `lost`)
#: anyway, and plain strings keep the schemathesis runs over these routes cheap.
JOB_ID = {"type": "string", "minLength": 1, "maxLength": 36}
WORKER_ID = {"type": "string", "minLength": 1, "maxLength": 64}
#: A queue, capability or skill name.
NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"}
_NAMES = {"type": "array", "items": NAME, "maxItems": 100, "uniqueItems": True}
_TEXT = {"type": "string", "maxLength": 65536}
_ATTEMPT = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
_RUN_SECONDS = {"type": ["number", "null"], "minimum": 0, "maximum": 10**9}

REGISTER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "host": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\x00]*$"},
        "pid": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "threads": {"type": "integer", "minimum": 1, "maximum": 256},
        "queues": {**_NAMES, "description": "A subset of the token's queues (default: all)."},
        "capabilities": {
            **_NAMES,
            "description": "A subset of the token's capabilities (default: all).",
        },
        "skills": {
            "anyOf": [_NAMES, {"type": "null"}],
            "description": "The skills it can run for execute_skill jobs; null: any.",
        },
    },
    "additionalProperties": False,
}
HEARTBEAT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "running": {"type": "array", "items": JOB_ID, "maxItems": MAX_RUNNING_IDS},
    },
    "required": ["running"],
    "additionalProperties": False,
}
FETCH: dict[str, Any] = {
    "type": "object",
    "properties": {"wait_secs": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECS}},
    "additionalProperties": False,
}
_REPORT = {"worker_id": WORKER_ID, "attempt": _ATTEMPT}
PROGRESS: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_REPORT,
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "message": {"type": ["string", "null"], "maxLength": 65536},
    },
    "required": ["worker_id", "attempt"],
    "additionalProperties": False,
}
COMPLETE: dict[str, Any] = {
    "type": "object",
    "properties": {**_REPORT, "result": {}, "run_seconds": _RUN_SECONDS},
    "required": ["worker_id", "attempt"],
    "additionalProperties": False,
}
FAIL: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_REPORT,
        "error": {
            "type": "object",
            "properties": {"type": {**_TEXT, "maxLength": 200, "minLength": 1}, "message": _TEXT},
            "required": ["type", "message"],
            "additionalProperties": False,
        },
        "retryable": {
            "type": "boolean",
            "description": "false: the worker's rules say never retry (time limit, `throws`).",
        },
        "run_seconds": _RUN_SECONDS,
    },
    "required": ["worker_id", "attempt", "error"],
    "additionalProperties": False,
}

LOGS: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_REPORT,
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_LOG_LINES,
            "items": {
                "type": "object",
                "properties": {
                    "at": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 64,
                        "description": "ISO 8601; without an offset, UTC.",
                    },
                    "source": {"enum": SOURCES},
                    "level": {"type": "string", "maxLength": 16},
                    "text": {"type": "string", "maxLength": MAX_LINE_CHARS},
                },
                "required": ["at", "source", "level", "text"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["worker_id", "attempt", "lines"],
    "additionalProperties": False,
}

#: Response bodies, for the OpenAPI components.
RESPONSES: dict[str, Any] = {
    "RemoteWorker": {
        "type": "object",
        "properties": {
            "worker_id": WORKER_ID,
            "queues": _NAMES,
            "capabilities": _NAMES,
            "skills": {"anyOf": [_NAMES, {"type": "null"}]},
            "heartbeat_secs": {"type": "number"},
            "lease_secs": {"type": "number"},
            "max_wait_secs": {"type": "number"},
            "max_log_bytes": {"type": "integer", "description": "A job's kept log, in bytes."},
            "max_body_size": {"type": "integer", "description": "The largest request body."},
        },
        "required": [
            "worker_id",
            "queues",
            "capabilities",
            "skills",
            "heartbeat_secs",
            "lease_secs",
            "max_wait_secs",
            "max_log_bytes",
            "max_body_size",
        ],
    },
    "RemoteHeartbeat": {
        "type": "object",
        "properties": {
            "cancel": {"type": "array", "items": JOB_ID},
            "lost": {"type": "array", "items": JOB_ID},
        },
        "required": ["cancel", "lost"],
    },
    "RemoteAssignment": {
        "type": "object",
        "properties": {
            "job": {
                "type": "object",
                "properties": {
                    "job_id": JOB_ID,
                    "type": {"type": "string"},
                    "queue": {"type": "string"},
                    "attempt": _ATTEMPT,
                    "max_attempts": _ATTEMPT,
                    "args": {"type": "array"},
                    "kwargs": {"type": "object"},
                    "owner": {"type": "string"},
                    "trace_id": {"type": ["string", "null"]},
                    "time_limit_ms": {"type": ["integer", "null"]},
                },
                "required": [
                    "job_id",
                    "type",
                    "queue",
                    "attempt",
                    "max_attempts",
                    "args",
                    "kwargs",
                    "owner",
                    "trace_id",
                    "time_limit_ms",
                ],
            }
        },
        "required": ["job"],
    },
    "RemoteProgress": {
        "type": "object",
        "properties": {"cancel_requested": {"type": "boolean"}},
        "required": ["cancel_requested"],
    },
    "RemoteOutcome": {
        "type": "object",
        "properties": {"state": {"enum": ["pending", "completed", "failed", "cancelled"]}},
        "required": ["state"],
    },
}
