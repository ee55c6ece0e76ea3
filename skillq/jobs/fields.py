"""The job as clients see it (REST, SSE, MCP, CLI): each field once, with its JSON Schema.

`job_to_dict` serialises a job from this table and the OpenAPI document's `Job` schema is
derived from it, so what the server sends and what the document promises cannot drift.
`tests/test_openapi.py` holds the serialised jobs against the schema as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from skillq.storage.models import Job, JobState, utcnow

STATES = [state.value for state in JobState]

_DATETIME = {"type": ["string", "null"], "format": "date-time"}
_SET_DATETIME = {"type": "string", "format": "date-time"}


def iso(moment: datetime | None) -> str | None:
    """UTC, ISO 8601 with a `Z`, as every time in the API is written."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _duration_ms(job: Job) -> int | None:
    if job.started_at is None:
        return None
    end = job.completed_at or utcnow()
    return int((end - job.started_at).total_seconds() * 1000)


def _error(job: Job) -> dict[str, Any] | None:
    if job.error_type is None:
        return None
    return {"type": job.error_type, "message": job.error_message}


def _waiting_for(job: Job) -> list[str]:
    """The coordinator attaches what is still awaited to the jobs it reads; a job read
    otherwise shows all its dependencies while it waits."""
    if not job.waiting:
        return []
    known = getattr(job, "waiting_for", None)
    if known is not None:
        return known
    return [item["job"] for item in job.depends_on or []]


@dataclass(frozen=True, slots=True)
class JobField:
    name: str
    schema: dict[str, Any]
    read: Callable[[Job], Any]
    #: Present and non-null on every job (the schema's `required`).
    required: bool = False


def _column(name: str, schema: dict[str, Any], *, required: bool = False) -> JobField:
    return JobField(name, schema, lambda job: getattr(job, name), required)


def _time(name: str, schema: dict[str, Any] = _DATETIME) -> JobField:
    return JobField(name, schema, lambda job: iso(getattr(job, name)))


#: In the order clients see them. `position_in_queue` is not read from the row: the caller
#: that knows it (a single-job answer) passes it to `job_to_dict`.
JOB_FIELDS: tuple[JobField, ...] = (
    _column("id", {"type": "string", "format": "uuid"}, required=True),
    _column("type", {"type": "string"}, required=True),
    _column("queue", {"type": "string"}, required=True),
    _column("params", {"type": "object"}, required=True),
    _column("state", {"type": "string", "enum": STATES}, required=True),
    _column("priority", {"type": "integer", "minimum": 0, "maximum": 10}, required=True),
    _column("progress", {"type": ["number", "null"], "minimum": 0, "maximum": 1}),
    _column("message", {"type": ["string", "null"]}),
    _column("result", {"description": "The job's return value (any JSON) once completed."}),
    JobField(
        "error",
        {
            "type": ["object", "null"],
            "properties": {"type": {"type": "string"}, "message": {"type": ["string", "null"]}},
            "required": ["type", "message"],
        },
        _error,
    ),
    _column("attempts", {"type": "integer", "minimum": 0}, required=True),
    _column("max_retries", {"type": "integer", "minimum": 0}),
    _time("created_at", _SET_DATETIME),
    _time("started_at"),
    _time("completed_at"),
    _time("expires_at", _SET_DATETIME),
    JobField(
        "scheduled_for",
        {
            **_DATETIME,
            "description": "A delayed job's start time (run_at / delay_secs): it stays "
            "pending and no worker starts it before then. Null: start when a worker is free.",
        },
        lambda job: iso(job.scheduled_for),
    ),
    JobField("duration_ms", {"type": ["integer", "null"]}, _duration_ms),
    JobField(
        "position_in_queue",
        {
            "type": ["integer", "null"],
            "description": "Pending jobs of its queue ahead of it (single job only); "
            "delayed jobs not yet due count for no one, and are null themselves.",
        },
        lambda job: None,
    ),
    _column("owner", {"type": "string"}),
    _column("trace_id", {"type": ["string", "null"]}),
    _column("idempotency_key", {"type": ["string", "null"]}),
    _column("worker_id", {"type": ["string", "null"]}),
    _time("heartbeat_at"),
    _time("cancel_requested_at"),
    _column(
        "depends_on",
        {
            "type": ["array", "null"],
            "description": "The jobs it waits for, as submitted; `name` is the workflow "
            "node's name.",
            "items": {
                "type": "object",
                "properties": {
                    "job": {"type": "string", "format": "uuid"},
                    "on_failure": {"type": "string", "enum": ["cancel", "run"]},
                    "name": {"type": ["string", "null"]},
                },
                "required": ["job", "on_failure"],
            },
        },
    ),
    JobField(
        "waiting_for",
        {
            "type": "array",
            "items": {"type": "string", "format": "uuid"},
            "description": "While pending and held: the dependencies that have not "
            "completed yet (it is not queued before they end).",
        },
        _waiting_for,
        required=True,
    ),
    _column("workflow_id", {"type": ["string", "null"]}),
)

#: The OpenAPI component schema of a job, derived from the same table.
JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {field.name: field.schema for field in JOB_FIELDS},
    "required": [field.name for field in JOB_FIELDS if field.required],
}


def job_to_dict(job: Job, *, position_in_queue: int | None = None) -> dict[str, Any]:
    """The job as clients see it: DESIGN.md's job model plus timings."""
    shown = {field.name: field.read(job) for field in JOB_FIELDS}
    shown["position_in_queue"] = position_in_queue
    return shown


#: What a listing leaves out of each job: its documents (read one job for them), so a page of
#: a hundred jobs stays small whatever their params and results weigh.
DOCUMENT_FIELDS = ("params", "result")

#: The OpenAPI schema of a listed job, derived from the same table.
JOB_SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A job as listed: every field of Job but params and result.",
    "properties": {
        field.name: field.schema for field in JOB_FIELDS if field.name not in DOCUMENT_FIELDS
    },
    "required": [
        field.name for field in JOB_FIELDS if field.required and field.name not in DOCUMENT_FIELDS
    ],
}


def job_summary_to_dict(job: Job) -> dict[str, Any]:
    """A job of a listing: every field but params and result (none are read)."""
    return {
        field.name: field.read(job) for field in JOB_FIELDS if field.name not in DOCUMENT_FIELDS
    }
