"""The OpenAPI entries of the job routes (`/api/v1/jobs...`, `/api/v1/job-types`), keyed as
`api.openapi` keys its own. Submissions are described with the coordinator's own schema and
each job type's parameter schema (`submission_schema`), so the document cannot drift from
validation."""

from __future__ import annotations

import copy
from typing import Any

from skillq.api.openapi_parts import OWNER_PARAMETER, auth_errors, error, json_response, ref
from skillq.api.openapi_schemas import STATES
from skillq.api.openapi_workflows import UUID_PATTERN
from skillq.jobs.coordinator import MAX_OFFSET, MAX_PAGE_SIZE
from skillq.jobs.submissions import SUBMISSION_SCHEMA
from skillq.jobs.types import JobType
from skillq.settings import Settings
from skillq.storage.job_logs import MAX_READ_LINES, MAX_SEQ

_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    # A pattern, so that fuzzers find wrong ids at once (a bare string has no wrong value
    # to find, and looking for one took ~20 s per operation); any other id is a 404.
    "schema": {"type": "string", "pattern": UUID_PATTERN},
    "description": "The job's id (a UUID).",
}
_LOCATION = {"Location": "The job's URL."}


#: One Server-Sent Event as OpenAPI 3.1 describes an event stream: an object per event,
#: its `data` JSON (contentMediaType) of the schema its `event` names.
_STREAM_EVENT = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "event": {"const": name},
                "id": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": schema,
                },
            },
            "required": ["event", "id", "data"],
        }
        for name, schema in [("state", ref("Job")), ("progress", ref("Progress"))]
    ]
}

#: Events of a job's log stream: each kept line (its number as the event id), then `end`.
_LOG_STREAM_EVENT = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "event": {"const": "line"},
                "id": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": ref("LogLine"),
                },
            },
            "required": ["event", "id", "data"],
        },
        {
            "type": "object",
            "properties": {
                "event": {"const": "end"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "type": "object",
                        "properties": {"state": {"type": "string", "enum": STATES}},
                        "required": ["state"],
                    },
                },
            },
            "required": ["event", "data"],
        },
    ]
}


def _cancel(auth: list[int], job: dict[str, Any], store: list[int]) -> dict[str, Any]:
    return {
        "summary": "Cancel a job",
        "description": "A pending job is cancelled at once (200); a running one is marked "
        "cancel-requested (202, `cancel_requested_at` set) and its worker stops it. The job "
        "stays readable either way.",
        "tags": ["jobs"],
        "parameters": [_JOB_ID],
        "responses": {
            "200": json_response("Cancelled.", job),
            "202": json_response("Running; asked to stop.", job),
            **{str(s): error(s) for s in [*auth, 404, 409, *store]},
        },
    }


_CALLBACK_URL = {
    "type": "string",
    "format": "uri",
    "pattern": "^https?://",
    "maxLength": 2000,
    "description": "POST the job's outcome here as a signed Standard Webhook. Only http(s) "
    "to hosts resolving to public addresses, unless the server allows private ones "
    "(`[webhooks] allow_private`); a refused URL is 422.",
}


def _submission(callbacks: bool) -> dict[str, Any]:
    """SUBMISSION_SCHEMA; `callback_url` only where the server can sign callbacks."""
    schema = copy.deepcopy(SUBMISSION_SCHEMA)
    if callbacks:
        schema["properties"]["callback_url"] = dict(_CALLBACK_URL)
    else:
        del schema["properties"]["callback_url"]
    return schema


def submission_schema(
    job_types: dict[str, JobType],
    max_ttl_hours: int,
    *,
    max_dependencies: int = 100,
    max_delay_hours: int = 168,
    callbacks: bool = False,
) -> dict[str, Any]:
    """SUBMISSION_SCHEMA once per job type, with that type's `params` schema."""
    variants = []
    for job_type in job_types.values():
        variant = _submission(callbacks)
        variant["title"] = job_type.name
        variant["properties"]["type"] = {"const": job_type.name}
        variant["properties"]["params"] = job_type.params_schema
        variant["properties"]["ttl_hours"]["maximum"] = max_ttl_hours
        variant["properties"]["depends_on"]["maxItems"] = max_dependencies
        variant["properties"]["delay_secs"]["maximum"] = max_delay_hours * 3600
        variant["properties"]["run_at"]["format"] = "date-time"
        variant["not"] = {"required": ["run_at", "delay_secs"]}
        if not job_type.validator.is_valid({}):  # an absent `params` is validated as {}
            variant["required"] = [*variant["required"], "params"]
        variants.append(variant)
    return {"oneOf": variants} if variants else _submission(callbacks)


def job_operations(
    settings: Settings, submission: dict[str, Any], auth: list[int], store: list[int]
) -> dict[tuple[str, str], Any]:
    """`submission`: the request body's schema (`submission_schema`); `auth`, `store`: the
    statuses authentication and the job store may answer with."""
    job = ref("Job")
    body = {"required": True, "content": {"application/json": {"schema": submission}}}
    return {
        ("/api/v1/jobs", "post"): {
            "summary": "Submit a job",
            "tags": ["jobs"],
            "requestBody": body,
            "responses": {
                "202": json_response("Accepted: the new job, pending.", job, **_LOCATION),
                "200": json_response(
                    "An earlier job with the same idempotency_key.", job, **_LOCATION
                ),
                "404": {
                    **error(404),
                    "description": "The params name a skill or tool that does not exist.",
                },
                "409": {
                    **error(409),
                    "description": "`idempotency_key_reused`: the key already names a job made "
                    "from a different request (type, params or priority); `details[0].job_id` "
                    "names it. A new request needs a new key.",
                },
                "429": {
                    **error(429),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds worth waiting ([quotas] retry_after_secs).",
                            "schema": {"type": "string"},
                        }
                    },
                },
                **{str(s): error(s) for s in [400, *auth, 413, 422, 503]},
            },
        },
        ("/api/v1/jobs", "get"): {
            "summary": "List jobs, newest first",
            "tags": ["jobs"],
            "parameters": [
                {
                    "name": "state",
                    "in": "query",
                    "description": "Only these states (repeat, or comma-separate).",
                    "schema": {"type": "array", "items": {"type": "string", "enum": STATES}},
                    "style": "form",
                    "explode": True,
                },
                {
                    "name": "type",
                    "in": "query",
                    "description": "Only these job types (repeat, or comma-separate).",
                    "schema": {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 100,
                            "pattern": "^[^,\\x00]+$",
                        },
                    },
                    "style": "form",
                    "explode": True,
                },
                {
                    **OWNER_PARAMETER,
                    "description": "Only this owner's jobs. Only an admin may name another "
                    "owner than itself (anyone else: 403); default: every job the caller sees.",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": min(MAX_OFFSET, settings.jobs.max_list_offset),
                    },
                },
            ],
            "responses": {
                "200": json_response("One page of jobs and the total that match.", ref("JobPage")),
                **{str(s): error(s) for s in [*auth, 422, *store]},
            },
        },
        ("/api/v1/jobs/{job_id}", "get"): {
            "summary": "One job",
            "tags": ["jobs"],
            "parameters": [_JOB_ID],
            "responses": {
                "200": json_response("The job.", job),
                **{str(s): error(s) for s in [*auth, 404, *store]},
            },
        },
        ("/api/v1/jobs/{job_id}/cancel", "post"): _cancel(auth, job, store),
        ("/api/v1/jobs/{job_id}", "delete"): {
            **_cancel(auth, job, store),
            "summary": "Cancel a job (alias of POST /api/v1/jobs/{job_id}/cancel)",
            "description": "DELETE cancels; it does not delete: the job stays readable, in "
            "state `cancelled` (or `running` with `cancel_requested_at` until its worker "
            "stops it), until its TTL expires. Marked deprecated so that clients and API "
            "fuzzers do not expect a 404 after it; it stays, as the documented alias.",
            "deprecated": True,
        },
        ("/api/v1/jobs/{job_id}/retry", "post"): {
            "summary": "Run a failed or cancelled job again",
            "tags": ["jobs"],
            "parameters": [_JOB_ID],
            "responses": {
                "202": json_response("Pending again, with attempts reset.", job, **_LOCATION),
                **{str(s): error(s) for s in [*auth, 404, 409, 503]},
            },
        },
        ("/api/v1/jobs/{job_id}/stream", "get"): {
            "summary": "Follow a job as Server-Sent Events",
            "description": "`state` events carry the whole job, `progress` events "
            "`{progress, message}`; keep-alive comments while idle; `Last-Event-ID` resumes; "
            "the stream ends after the terminal state.",
            "tags": ["jobs"],
            "parameters": [
                _JOB_ID,
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The event stream.",
                    "content": {"text/event-stream": {"schema": _STREAM_EVENT}},
                },
                **{str(s): error(s) for s in [*auth, 404, *store]},
            },
        },
        ("/api/v1/jobs/{job_id}/logs", "get"): {
            "summary": "A job's kept log lines",
            "description": "What the job printed: its log records, a skill tool's stderr "
            "lines, the error with its traceback. Lines are numbered from 1 per job; `since` "
            "returns those after it, and `next_since` is the cursor for the next read. Only "
            "the tail is kept (`jobs.max_log_bytes`), so numbers may start above `since + 1`.",
            "tags": ["jobs"],
            "parameters": [
                _JOB_ID,
                {
                    "name": "since",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_READ_LINES},
                },
            ],
            "responses": {
                "200": json_response("One page of lines and the next cursor.", ref("LogPage")),
                **{str(s): error(s) for s in [*auth, 404, 422, *store]},
            },
        },
        ("/api/v1/jobs/{job_id}/deliveries", "get"): {
            "summary": "A job's webhook deliveries",
            "description": "Each event sent for the job (to its `callback_url`, and for an "
            "admin to the settings' subscriptions too), its state (`pending` while retried, "
            "`delivered`, `failed` once given up) and every attempt with the receiver's "
            "status code or the error. Another owner's job is a 404.",
            "tags": ["jobs"],
            "parameters": [_JOB_ID],
            "responses": {
                "200": json_response("The deliveries, oldest first.", ref("WebhookDeliveries")),
                **{str(s): error(s) for s in [*auth, 404, *store]},
            },
        },
        ("/api/v1/jobs/{job_id}/logs/stream", "get"): {
            "summary": "Follow a job's log as Server-Sent Events",
            "description": "`line` events carry one `LogLine`, with its `seq` as the event "
            "id (`Last-Event-ID` or `since` resumes after it); an `end` event `{state}` "
            "closes the stream once the job is finished and its last lines are sent.",
            "tags": ["jobs"],
            "parameters": [
                _JOB_ID,
                {
                    "name": "since",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                },
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The event stream.",
                    "content": {"text/event-stream": {"schema": _LOG_STREAM_EVENT}},
                },
                **{str(s): error(s) for s in [*auth, 404, 422, *store]},
            },
        },
        ("/api/v1/job-types", "get"): {
            "summary": "Job types with their parameter schemas",
            "tags": ["jobs"],
            "responses": {
                "200": json_response(
                    "Every job type a client may submit.",
                    {
                        "type": "object",
                        "properties": {"job_types": {"type": "array", "items": ref("JobType")}},
                        "required": ["job_types"],
                    },
                ),
                **auth_errors(auth),
            },
        },
    }
