"""`GET /openapi.json`: the OpenAPI 3.1 document of the REST API, written by hand.

Each operation is described here once, keyed by (path, method); the document lists those
whose route the app actually has, so a disabled part is not advertised. Request bodies
reuse the coordinator's own submission schema and each job type's parameter schema
(OpenAPI 3.1 speaks JSON Schema 2020-12), so the document cannot drift from validation.
The MCP transports are not REST and are left out. The job routes' entries are in
`api.openapi_jobs`, batch and workflow ones in their own modules; the rest are here.
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
from skillq.api.openapi_jobs import job_operations, submission_schema
from skillq.api.openapi_parts import OWNER_PARAMETER, auth_errors, error, json_response, ref
from skillq.api.openapi_schemas import SCHEMAS
from skillq.api.openapi_workflows import WORKFLOW_STATE_SCHEMA, workflow_operations
from skillq.api.stats import MAX_HISTORY_MINUTES
from skillq.engine.collection_files import COLLECTION_PATTERN
from skillq.engine.collection_model import MAX_K
from skillq.jobs.pools import served_queues
from skillq.jobs.types import JobType
from skillq.settings import Settings


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
    submission = submission_schema(
        job_types,
        settings.jobs.max_ttl_hours,
        max_dependencies=settings.jobs.max_workflow_jobs,
        max_delay_hours=settings.jobs.max_delay_hours,
        callbacks=settings.webhooks.secret is not None,
    )
    open_ = {"security": []}
    workflows = workflow_operations(job_types, settings.jobs, auth, json_response, error)
    batch = batch_operations(
        copy.deepcopy(submission), settings.jobs.max_batch_jobs, auth, json_response, error
    )
    return {
        **workflows,
        **batch,
        **job_operations(settings, submission, auth, store),
        ("/api/v1/collections", "get"): {
            "summary": "Search collections and their sizes",
            "description": "The caller's own collections; an admin's list holds every "
            "owner's unless `owner` names one.",
            "tags": ["search"],
            "parameters": [OWNER_PARAMETER],
            "responses": {
                "200": json_response("The collections.", ref("CollectionList")),
                **{str(s): error(s) for s in [*auth, 422]},
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
                OWNER_PARAMETER,
            ],
            "responses": {
                "200": json_response("The best hits, best first.", ref("SearchResult")),
                **{str(s): error(s) for s in [*auth, 404, 422]},
            },
        },
        ("/api/v1/workers", "get"): {
            "summary": "Live workers",
            "tags": ["operations"],
            "responses": {
                "200": json_response(
                    "Registered workers and how many are in each status.", ref("Workers")
                ),
                **auth_errors([*auth, *store]),
            },
        },
        ("/api/v1/workers/scale", "get"): {
            "summary": "Each queue's pool: desired size against what runs",
            "tags": ["operations"],
            "responses": {
                "200": json_response("One entry per queue.", ref("Pools")),
                **auth_errors([*auth, *store]),
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
                "200": json_response(
                    "The pools after the change (actual follows shortly).", ref("Pools")
                ),
                **{str(s): error(s) for s in [400, *auth, 413, 422, 503]},
            },
        },
        ("/api/v1/stats", "get"): {
            "summary": "Job counts by state, type and queue",
            "tags": ["operations"],
            "description": "`oldest_pending` names each queue with pending jobs and when "
            "its oldest one was created.",
            "responses": {
                "200": json_response("Counts.", ref("Stats")),
                **auth_errors([*auth, *store]),
            },
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
                "200": json_response("The buckets.", ref("StatsHistory")),
                **{str(s): error(s) for s in [*auth, 422, *store]},
            },
        },
        **_discovery(settings),
        ("/api/v1/auth/whoami", "get"): {
            "summary": "The caller as the server sees it",
            "tags": ["auth"],
            "responses": {
                "200": json_response("The principal.", ref("Principal")),
                **auth_errors([401, 503] if auth else []),
            },
        },
        ("/health", "get"): {
            **open_,
            "summary": "Does the job store answer?",
            "tags": ["probes"],
            "responses": {
                "200": json_response("Yes.", ref("Probe")),
                "503": json_response("No.", ref("Probe")),
            },
        },
        ("/live", "get"): {
            **open_,
            "summary": "Is the process up?",
            "tags": ["probes"],
            "responses": {"200": json_response("Yes.", ref("Probe"))},
        },
        ("/ready", "get"): {
            **open_,
            "summary": "Do the store and the broker answer?",
            "tags": ["probes"],
            "responses": {
                "200": json_response("Ready.", ref("Probe")),
                "503": json_response("Not ready.", ref("Probe")),
            },
        },
        ("/version", "get"): {
            **open_,
            "summary": "Versions of what runs here",
            "tags": ["probes"],
            "responses": {"200": json_response("Versions.", ref("Version"))},
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
                **(auth_errors(auth) if settings.auth.protect_metrics else {}),
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
            "responses": {"200": json_response("The metadata.", ref("ProtectedResourceMetadata"))},
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
