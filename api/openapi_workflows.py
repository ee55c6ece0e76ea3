"""The OpenAPI description of the workflow routes: their operations and the `Workflow` body.

Kept apart from `api.openapi` (already long); the request body reuses the workflow schema
the server validates with, its nodes spelled once per job type as submissions are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from skillq.jobs.fields import STATES
from skillq.jobs.types import JobType
from skillq.jobs.workflows import WORKFLOW_SCHEMA
from skillq.settings import JobsSettings

#: A canonical (lower-case) UUID, as job and workflow ids are.
UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

WORKFLOW_STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A workflow's jobs and their overall state: `pending` until one starts, "
    "`running` while any is unfinished, then `completed` (all completed), `failed` (one "
    "failed) or `cancelled`.",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "state": {"type": "string", "enum": STATES},
        "counts": {
            "type": "object",
            "properties": {state: {"type": "integer", "minimum": 0} for state in STATES},
            "required": STATES,
        },
        "jobs": {
            "type": "object",
            "description": "Each node's job (purged ones are left out).",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "state": {"type": "string", "enum": STATES},
                    "error": {
                        "type": ["object", "null"],
                        "properties": {
                            "type": {"type": "string"},
                            "message": {"type": ["string", "null"]},
                        },
                        "required": ["type", "message"],
                    },
                },
                "required": ["id", "state", "error"],
            },
        },
        "owner": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "state", "counts", "jobs", "owner", "created_at"],
}


def workflow_body_schema(
    job_types: dict[str, JobType], max_jobs: int, max_ttl_hours: int
) -> dict[str, Any]:
    """WORKFLOW_SCHEMA with this deployment's bounds and job type names. A node's `params`
    follow its type's schema (as in `POST /api/v1/jobs`), checked per node: spelling each
    node once per job type here would make the document (and its fuzzing) many times
    larger for no new information."""
    schema = copy.deepcopy(WORKFLOW_SCHEMA)
    schema["properties"]["ttl_hours"]["maximum"] = max_ttl_hours
    jobs = schema["properties"]["jobs"]
    jobs["maxProperties"] = max_jobs
    node = jobs["additionalProperties"]
    node["properties"]["depends_on"]["maxItems"] = max_jobs
    node["properties"]["params"]["description"] = "As the job type's params schema says."
    if job_types:
        node["properties"]["type"] = {"enum": sorted(job_types)}
    return schema


_WORKFLOW_ID = {
    "name": "workflow_id",
    "in": "path",
    "required": True,
    # A pattern, so that fuzzers find wrong ids at once (a bare string has no wrong value).
    "schema": {"type": "string", "pattern": UUID_PATTERN},
    "description": "The workflow's id (a UUID).",
}


def workflow_operations(
    job_types: dict[str, JobType],
    settings: JobsSettings,
    auth: list[int],
    json: Callable[..., dict[str, Any]],
    error: Callable[[int], dict[str, Any]],
) -> dict[tuple[str, str], Any]:
    """The workflow operations, keyed as `api.openapi` keys its own."""
    status = {"$ref": "#/components/schemas/Workflow"}
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": workflow_body_schema(
                    job_types, settings.max_workflow_jobs, settings.max_ttl_hours
                )
            }
        },
    }
    return {
        ("/api/v1/workflows", "post"): {
            "summary": "Create a workflow: a DAG of jobs, all or nothing",
            "description": "Each node is a submission whose `depends_on` names other nodes. "
            "A job waits (pending, `waiting_for`) until its dependencies end; a failed or "
            "cancelled dependency cancels it unless that edge's `on_failure` is `run`; params "
            'may hold `{"$result": "<node>", "path"?: "a.0.b"}`, filled in when it is '
            "released. Cycles, unknown names and more than `jobs.max_workflow_jobs` jobs are "
            "422 naming the path; nothing is written then.",
            "tags": ["workflows"],
            "requestBody": body,
            "responses": {
                "202": json("Created: its status.", status, Location="The workflow's URL."),
                "404": {
                    **error(404),
                    "description": "A node's params name a skill or tool that does not exist.",
                },
                **{str(s): error(s) for s in [400, *auth, 413, 422, 503]},
            },
        },
        ("/api/v1/workflows/{workflow_id}", "get"): {
            "summary": "A workflow's status",
            "tags": ["workflows"],
            "parameters": [_WORKFLOW_ID],
            "responses": {
                "200": json("Counts by state, the overall state, each node's job.", status),
                **{str(s): error(s) for s in [*auth, 404, 503]},
            },
        },
        ("/api/v1/workflows/{workflow_id}/cancel", "post"): {
            "summary": "Cancel a workflow's unfinished jobs",
            "description": "Pending jobs are cancelled at once, running ones are asked to "
            "stop (as `POST /api/v1/jobs/{id}/cancel`); finished ones stay as they are.",
            "tags": ["workflows"],
            "parameters": [_WORKFLOW_ID],
            "responses": {
                "200": json("Its status after the cancel.", status),
                **{str(s): error(s) for s in [*auth, 404, 503]},
            },
        },
    }
