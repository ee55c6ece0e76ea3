"""The OpenAPI operations of the remote worker routes (`api.remote_workers`), kept apart
from `api.openapi`, which merges them into the document with their schemas and the
`workerToken` security scheme."""

from __future__ import annotations

from typing import Any

from skillq.api import remote_worker_schemas as schemas

#: The security scheme every worker route demands: a worker token as a bearer credential.
SECURITY_SCHEME = {
    "workerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "A worker token (`skqw_...`) from `skillq auth worker-token create`; "
        "user credentials get 403.",
    }
}
SCHEMAS: dict[str, Any] = schemas.RESPONSES

_ERRORS = {
    400: "The request body is not JSON.",
    401: "No worker token, or an unknown or revoked one.",
    403: "A user's credentials, not a worker token; or queues or capabilities the token "
    "does not allow.",
    404: "No such worker registered with this token, or no such job.",
    409: "The worker does not hold the lease of this attempt of the job.",
    413: "The request body is larger than server.max_body_size.",
    422: "The request body breaks its schema; details name each failing path.",
    503: "The store or the broker cannot be reached.",
}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _operation(
    summary: str,
    description: str,
    body: dict[str, Any],
    answers: dict[str, Any],
    errors: list[int],
    *,
    path: dict[str, Any] | None = None,
    body_required: bool = True,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": description,
        "tags": ["remote workers"],
        "security": [{"workerToken": []}],
        "requestBody": {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        },
        "responses": {**answers, **{str(s): _error(s) for s in errors}},
    }
    if path is not None:
        operation["parameters"] = [path]
    return operation


def _json(description: str, name: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


_WORKER = {"name": "worker_id", "in": "path", "required": True, "schema": {"type": "string"}}
_JOB = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COMMON = [400, 401, 403, 413, 422, 503]


def operations() -> dict[tuple[str, str], Any]:
    report = "Only from the worker holding the lease of that attempt (else 409)."
    return {
        ("/api/v1/workers/register", "post"): _operation(
            "Register a remote worker",
            "Records a worker of this token, serving the token's queues and capabilities "
            "(or a subset), optionally only some skills; answers its id and the lease.",
            schemas.REGISTER,
            {"201": _json("The registered worker.", "RemoteWorker")},
            _COMMON,
            body_required=False,
        ),
        ("/api/v1/workers/{worker_id}/heartbeat", "post"): _operation(
            "Renew the leases of a remote worker's jobs",
            "`running` lists the jobs it runs; their leases are renewed. The answer names "
            "those a client cancelled (stop them) and those it no longer holds (its lease "
            "expired: stop them without reporting).",
            schemas.HEARTBEAT,
            {"200": _json("What to stop.", "RemoteHeartbeat")},
            [*_COMMON, 404],
            path=_WORKER,
        ),
        ("/api/v1/workers/{worker_id}/fetch", "post"): _operation(
            "Fetch one job (long-poll)",
            "Waits up to `wait_secs` (default 20, at most 30) for a message on the worker's "
            "queues whose job type it can run, starts its job with a lease for this worker "
            "and hands it out; 204 when none came.",
            schemas.FETCH,
            {
                "200": _json("A job to run now.", "RemoteAssignment"),
                "204": {"description": "No job within the wait."},
            },
            [*_COMMON, 404],
            path=_WORKER,
            body_required=False,
        ),
        ("/api/v1/jobs/{job_id}/progress", "post"): _operation(
            "Report a remote job's progress",
            f"Also renews the lease; answers whether a client asked to cancel. {report}",
            schemas.PROGRESS,
            {"200": _json("Whether to stop.", "RemoteProgress")},
            [*_COMMON, 404, 409],
            path=_JOB,
        ),
        ("/api/v1/jobs/{job_id}/logs", "post"): _operation(
            "Append to a remote job's log",
            "A batch of the lines the job printed (log records, tool stderr, its error), sent "
            "while it runs and before its outcome; kept as a local worker's are, the log "
            f"bounded by `jobs.max_log_bytes` (the oldest lines go). {report}",
            schemas.LOGS,
            {"204": {"description": "The lines were appended."}},
            [*_COMMON, 404, 409],
            path=_JOB,
        ),
        ("/api/v1/jobs/{job_id}/complete", "post"): _operation(
            "Report a remote job's result",
            f"The job completes (or fails if its result cannot be kept). {report}",
            schemas.COMPLETE,
            {"200": _json("The job's new state.", "RemoteOutcome")},
            [*_COMMON, 404, 409],
            path=_JOB,
        ),
        ("/api/v1/jobs/{job_id}/fail", "post"): _operation(
            "Report a remote job's failure",
            "The server retries it after its back-off while attempts are left and "
            "`retryable` is not false, else the job fails; a job a client cancelled is "
            f"cancelled. {report}",
            schemas.FAIL,
            {"200": _json("The job's new state.", "RemoteOutcome")},
            [*_COMMON, 404, 409],
            path=_JOB,
        ),
    }
