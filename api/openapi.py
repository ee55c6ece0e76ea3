"""`GET /openapi.json`: the OpenAPI 3.1 document of the REST API, written by hand.

Each operation is described here once, keyed by (path, method); the document lists those
whose route the app actually has, so a disabled part is not advertised. Request bodies
reuse the coordinator's own submission schema and each job type's parameter schema
(OpenAPI 3.1 speaks JSON Schema 2020-12), so the document cannot drift from validation.
The MCP transports are not REST and are left out.
"""

from __future__ import annotations

import copy
import importlib.metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api import remote_workers_openapi
from skillq.api.openapi_batch import batch_operations
from skillq.api.openapi_schemas import SCHEMAS, STATES
from skillq.api.openapi_workflows import UUID_PATTERN, WORKFLOW_STATE_SCHEMA, workflow_operations
from skillq.api.stats import MAX_HISTORY_MINUTES
from skillq.engine.collection_files import COLLECTION_PATTERN, MAX_OWNER_LENGTH
from skillq.engine.collection_model import MAX_K
from skillq.jobs.coordinator import MAX_OFFSET, MAX_PAGE_SIZE, SUBMISSION_SCHEMA
from skillq.jobs.pools import served_queues
from skillq.jobs.types import JobType
from skillq.settings import Settings
from skillq.storage.job_logs import MAX_READ_LINES, MAX_SEQ

_ERRORS = {
    400: "The request body is not JSON, or is nested too deeply.",
    401: "No credentials, or wrong ones (see WWW-Authenticate).",
    403: "The caller's role does not allow this (WWW-Authenticate names the scope).",
    404: "No such job or collection, or not the caller's.",
    409: "The job's state does not allow this.",
    413: "The request body is larger than server.max_body_size.",
    422: "The request breaks a schema; details name each failing path.",
    429: "`rate_limited`: a per-owner quota ([quotas]) is reached; the message and "
    "details[0].quota name it.",
    503: "The broker, the store or the identity provider cannot be reached.",
}


_OWNER_PARAMETER: dict[str, Any] = {
    "name": "owner",
    "in": "query",
    "description": "Whose collection. Only an admin may name another owner than itself "
    "(anyone else: 403); default: the caller.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_OWNER_LENGTH,
        "pattern": "^[^\\x00]*$",
    },
}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status in (401, 403):
        # Bearer realm, resource_metadata and scope (RFC 6750, RFC 9728); a 403 for a
        # missing role says error="insufficient_scope", and names the scope that would do.
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _json(description: str, schema: dict[str, Any], **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = {
            name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return response


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


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
        for name, schema in [("state", _ref("Job")), ("progress", _ref("Progress"))]
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
                    "contentSchema": _ref("LogLine"),
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
            "200": _json("Cancelled.", job),
            "202": _json("Running; asked to stop.", job),
            **{str(s): _error(s) for s in [*auth, 404, 409, *store]},
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


def pool_scale_schema(job_types: dict[str, JobType]) -> dict[str, Any]:
    """PoolScale, naming the queues this deployment has (maintenance's included)."""
    schema = copy.deepcopy(SCHEMAS["PoolScale"])
    queues = served_queues(job_type.queue for job_type in job_types.values())
    schema["properties"]["threads"]["propertyNames"] = {"enum": queues}
    return schema


def _operations(settings: Settings, job_types: dict[str, JobType]) -> dict[tuple[str, str], Any]:
    # 503 from authentication: the identity provider or the API key store is down.
    auth = [401, 403, 503] if settings.auth.mode != "none" else []
    #: Every route that reads the job store answers 503 while it is down.
    store = [503]
    job = _ref("Job")
    submission = submission_schema(
        job_types,
        settings.jobs.max_ttl_hours,
        max_dependencies=settings.jobs.max_workflow_jobs,
        max_delay_hours=settings.jobs.max_delay_hours,
        callbacks=settings.webhooks.secret is not None,
    )
    body = {"required": True, "content": {"application/json": {"schema": submission}}}
    open_ = {"security": []}
    workflows = workflow_operations(job_types, settings.jobs, auth, _json, _error)
    batch = batch_operations(
        copy.deepcopy(submission), settings.jobs.max_batch_jobs, auth, _json, _error
    )
    return {
        **workflows,
        **batch,
        ("/api/v1/jobs", "post"): {
            "summary": "Submit a job",
            "tags": ["jobs"],
            "requestBody": body,
            "responses": {
                "202": _json("Accepted: the new job, pending.", job, **_LOCATION),
                "200": _json("An earlier job with the same idempotency_key.", job, **_LOCATION),
                "404": {
                    **_error(404),
                    "description": "The params name a skill or tool that does not exist.",
                },
                "409": {
                    **_error(409),
                    "description": "`idempotency_key_reused`: the key already names a job made "
                    "from a different request (type, params or priority); `details[0].job_id` "
                    "names it. A new request needs a new key.",
                },
                "429": {
                    **_error(429),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds worth waiting ([quotas] retry_after_secs).",
                            "schema": {"type": "string"},
                        }
                    },
                },
                **{str(s): _error(s) for s in [400, *auth, 413, 422, 503]},
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
                    **_OWNER_PARAMETER,
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
                "200": _json("One page of jobs and the total that match.", _ref("JobPage")),
                **{str(s): _error(s) for s in [*auth, 422, *store]},
            },
        },
        ("/api/v1/jobs/{job_id}", "get"): {
            "summary": "One job",
            "tags": ["jobs"],
            "parameters": [_JOB_ID],
            "responses": {
                "200": _json("The job.", job),
                **{str(s): _error(s) for s in [*auth, 404, *store]},
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
                "202": _json("Pending again, with attempts reset.", job, **_LOCATION),
                **{str(s): _error(s) for s in [*auth, 404, 409, 503]},
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
                **{str(s): _error(s) for s in [*auth, 404, *store]},
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
                "200": _json("One page of lines and the next cursor.", _ref("LogPage")),
                **{str(s): _error(s) for s in [*auth, 404, 422, *store]},
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
                "200": _json("The deliveries, oldest first.", _ref("WebhookDeliveries")),
                **{str(s): _error(s) for s in [*auth, 404, *store]},
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
                **{str(s): _error(s) for s in [*auth, 404, 422, *store]},
            },
        },
        ("/api/v1/job-types", "get"): {
            "summary": "Job types with their parameter schemas",
            "tags": ["jobs"],
            "responses": {
                "200": _json(
                    "Every job type a client may submit.",
                    {
                        "type": "object",
                        "properties": {"job_types": {"type": "array", "items": _ref("JobType")}},
                        "required": ["job_types"],
                    },
                ),
                **_auth_errors(auth),
            },
        },
        ("/api/v1/collections", "get"): {
            "summary": "Search collections and their sizes",
            "description": "The caller's own collections; an admin's list holds every "
            "owner's unless `owner` names one.",
            "tags": ["search"],
            "parameters": [_OWNER_PARAMETER],
            "responses": {
                "200": _json("The collections.", _ref("CollectionList")),
                **{str(s): _error(s) for s in [*auth, 422]},
            },
        },
        ("/api/v1/collections/{name}/search", "get"): {
            "summary": "Search a collection now (not a job)",
            "description": "The caller's own collection of that name; another owner's "
            "answers 404 as a missing one does.",
            "tags": ["search"],
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": COLLECTION_PATTERN},
                },
                {
                    "name": "q",
                    "in": "query",
                    "required": True,
                    "description": "Free text; its words (letters and digits of any script) "
                    "are searched, and a query without any matches nothing.",
                    # No pattern: ECMA-262 `\w` is ASCII, and fuzzers approximate `\p{L}`.
                    "schema": {"type": "string", "minLength": 1},
                },
                {
                    "name": "k",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                },
                _OWNER_PARAMETER,
            ],
            "responses": {
                "200": _json("The best hits, best first.", _ref("SearchResult")),
                **{str(s): _error(s) for s in [*auth, 404, 422]},
            },
        },
        ("/api/v1/workers", "get"): {
            "summary": "Live workers",
            "tags": ["operations"],
            "responses": {
                "200": _json(
                    "Registered workers and how many are in each status.", _ref("Workers")
                ),
                **_auth_errors([*auth, *store]),
            },
        },
        ("/api/v1/workers/scale", "get"): {
            "summary": "Each queue's pool: desired size against what runs",
            "tags": ["operations"],
            "responses": {
                "200": _json("One entry per queue.", _ref("Pools")),
                **_auth_errors([*auth, *store]),
            },
        },
        ("/api/v1/workers/scale", "put"): {
            "summary": "Resize queue pools (admin)",
            "description": "Records the threads per worker process of each named queue "
            "(0 stops its pool); the supervisor of `skillq up` restarts that queue's "
            "workers gracefully with the new size within a few seconds.",
            "tags": ["operations"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": pool_scale_schema(job_types)}},
            },
            "responses": {
                "200": _json("The pools after the change (actual follows shortly).", _ref("Pools")),
                **{str(s): _error(s) for s in [400, *auth, 413, 422, 503]},
            },
        },
        ("/api/v1/stats", "get"): {
            "summary": "Job counts by state, type and queue",
            "tags": ["operations"],
            "description": "`oldest_pending` names each queue with pending jobs and when "
            "its oldest one was created.",
            "responses": {"200": _json("Counts.", _ref("Stats")), **_auth_errors([*auth, *store])},
        },
        ("/api/v1/stats/history", "get"): {
            "summary": "Jobs finished and pending depth per minute",
            "description": "One bucket per minute, oldest first; the last is the current "
            "minute. Computed from the jobs' timestamps: a retried job counts as pending "
            "from its first start on, and purged jobs are gone.",
            "tags": ["operations"],
            "parameters": [
                {
                    "name": "minutes",
                    "in": "query",
                    "description": "How far back (default 60).",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_MINUTES},
                }
            ],
            "responses": {
                "200": _json("The buckets.", _ref("StatsHistory")),
                **{str(s): _error(s) for s in [*auth, 422, *store]},
            },
        },
        **_discovery(settings),
        ("/api/v1/auth/whoami", "get"): {
            "summary": "The caller as the server sees it",
            "tags": ["auth"],
            "responses": {
                "200": _json("The principal.", _ref("Principal")),
                **_auth_errors([401, 503] if auth else []),
            },
        },
        ("/health", "get"): {
            **open_,
            "summary": "Does the job store answer?",
            "tags": ["probes"],
            "responses": {
                "200": _json("Yes.", _ref("Probe")),
                "503": _json("No.", _ref("Probe")),
            },
        },
        ("/live", "get"): {
            **open_,
            "summary": "Is the process up?",
            "tags": ["probes"],
            "responses": {"200": _json("Yes.", _ref("Probe"))},
        },
        ("/ready", "get"): {
            **open_,
            "summary": "Do the store and the broker answer?",
            "tags": ["probes"],
            "responses": {
                "200": _json("Ready.", _ref("Probe")),
                "503": _json("Not ready.", _ref("Probe")),
            },
        },
        ("/version", "get"): {
            **open_,
            "summary": "Versions of what runs here",
            "tags": ["probes"],
            "responses": {"200": _json("Versions.", _ref("Version"))},
        },
        ("/metrics", "get"): {
            **({} if settings.auth.protect_metrics else open_),
            "summary": "Prometheus metrics",
            "tags": ["probes"],
            "responses": {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **(_auth_errors(auth) if settings.auth.protect_metrics else {}),
            },
        },
        ("/openapi.json", "get"): {
            **open_,
            "summary": "This document",
            "tags": ["probes"],
            "responses": {
                "200": {"description": "OpenAPI 3.1.", "content": {"application/json": {}}}
            },
        },
    }


def _auth_errors(statuses: list[int]) -> dict[str, Any]:
    return {str(status): _error(status) for status in statuses}


def _discovery(settings: Settings) -> dict[tuple[str, str], Any]:
    """The OAuth protected resource metadata routes (`skillq.api.protected_resource`)."""
    root = "/.well-known/oauth-protected-resource"
    described = {
        root: "Where to get a token for the REST API: its canonical URL, the authorization "
        "server (auth.mode oidc), the scopes and how to send a token (RFC 9728).",
        root + settings.mcp.endpoint.rstrip("/"): "The same for the MCP endpoint, whose "
        "canonical URL is the server's URL plus the endpoint path.",
    }
    return {
        (path, "get"): {
            "security": [],
            "summary": "OAuth protected resource metadata",
            "description": description,
            "tags": ["auth"],
            "responses": {"200": _json("The metadata.", _ref("ProtectedResourceMetadata"))},
        }
        for path, description in described.items()
    }


def documented_routes(routes: list[Any], mcp_endpoint: str) -> list[tuple[str, str]]:
    """(path, method) of every REST route the app serves (MCP transports excluded)."""
    found = []
    for route in routes:
        if not isinstance(route, Route) or route.path.startswith(mcp_endpoint):
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((route.path, method.lower()))
    return found


def build_document(
    settings: Settings, job_types: dict[str, JobType], routes: list[Any]
) -> dict[str, Any]:
    operations = {**_operations(settings, job_types), **remote_workers_openapi.operations()}
    paths: dict[str, dict[str, Any]] = {}
    for path, method in documented_routes(routes, settings.mcp.endpoint):
        operation = operations.get((path, method))
        if operation is not None:
            paths.setdefault(path, {})[method] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "skillq",
            "version": importlib.metadata.version("skillq"),
            "description": "Background jobs for AI tool servers. Every error is "
            '`{"error": {"code", "message", "details"}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": {
                **SCHEMAS,
                **remote_workers_openapi.SCHEMAS,
                "Workflow": WORKFLOW_STATE_SCHEMA,
            },
            "securitySchemes": dict(remote_workers_openapi.SECURITY_SCHEME),
        },
    }
    if settings.auth.mode != "none":
        document["components"]["securitySchemes"].update(
            {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": settings.auth.api_key_header},
            }
        )
        document["security"] = [{"bearer": []}, {"apiKey": []}]
    return document


async def openapi_json(request: Request) -> JSONResponse:
    state = request.app.state
    document = getattr(state, "openapi", None)
    if document is None:
        document = build_document(state.settings, state.coordinator.job_types, request.app.routes)
        state.openapi = document
    return JSONResponse(document)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
