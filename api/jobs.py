"""REST routes of the job resource: submit (one or a batch), list, show, cancel, retry.

Every handler names the role it needs (`api.auth.access`) and passes the caller's owner
filter to the coordinator, so a non-admin's view of another owner's job is a plain 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from skillq.api.auth.access import require_submitter, require_viewer
from skillq.api.request_json import read_json
from skillq.engine.collection_files import check_owner
from skillq.errors import InvalidParams
from skillq.jobs.batch_submit import requests_of
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.fields import job_summary_to_dict, job_to_dict
from skillq.json_values import shown

Endpoint = Callable[[Request], Awaitable[Response]]


def coordinator_of(request: Request) -> JobCoordinator:
    return request.app.state.coordinator


async def submit_job(request: Request) -> JSONResponse:
    principal = require_submitter(request)
    body = await read_json(request)
    coordinator = coordinator_of(request)
    submission = await run_in_threadpool(
        coordinator.submit_job, body, owner=principal.subject, any_owner=principal.is_admin
    )
    job = submission.job
    if submission.created:
        request.app.state.metrics.job_submitted(job.type)
    return JSONResponse(
        job_to_dict(job),
        status_code=202 if submission.created else 200,
        headers={"Location": f"/api/v1/jobs/{job.id}"},
    )


async def submit_jobs(request: Request) -> JSONResponse:
    """A batch, `{"jobs": [<submit bodies>]}`: 202 with `{"jobs": [...]}` in order, each as
    a single submit answers it; 200 if every item repeated an earlier idempotency key."""
    principal = require_submitter(request)
    body = await read_json(request)
    coordinator = coordinator_of(request)
    requests = requests_of(body, coordinator.settings.jobs.max_batch_jobs)
    submissions = await run_in_threadpool(
        coordinator.submit_jobs, requests, owner=principal.subject, any_owner=principal.is_admin
    )
    for submission in submissions:
        if submission.created:
            request.app.state.metrics.job_submitted(submission.job.type)
    created = any(submission.created for submission in submissions)
    return JSONResponse(
        {"jobs": [job_to_dict(submission.job) for submission in submissions]},
        status_code=202 if created else 200,
    )


def int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidParams(
            f"{name} must be an integer", [{"path": name, "message": f"got {shown(raw)}"}]
        ) from None


def list_param(request: Request, name: str) -> list[str]:
    """Accepts `?state=a&state=b` and `?state=a,b` alike."""
    values = []
    for raw in request.query_params.getlist(name):
        parts = raw.split(",")
        if not all(parts):
            raise InvalidParams(
                f"{name} has an empty value", [{"path": name, "message": f"got {shown(raw)}"}]
            )
        values.extend(parts)
    return values


async def list_jobs(request: Request) -> JSONResponse:
    """`owner` narrows an admin's list to one owner; anyone else may only name itself
    (checked as the search routes check it: a malformed name is 422, another's 403)."""
    principal = require_viewer(request)
    coordinator = coordinator_of(request)
    limit = int_param(request, "limit", 50)
    offset = int_param(request, "offset", 0)
    named = request.query_params.get("owner")
    page = await run_in_threadpool(
        coordinator.list_jobs,
        states=list_param(request, "state"),
        types=list_param(request, "type"),
        owner=principal.owner_filter if named is None else principal.data_owner(check_owner(named)),
        limit=limit,
        offset=offset,
    )
    return JSONResponse(
        {
            "jobs": [job_summary_to_dict(job) for job in page.jobs],
            "total": page.total,
            "limit": limit,
            "offset": offset,
        }
    )


async def show_job(request: Request) -> JSONResponse:
    owner = require_viewer(request).owner_filter
    coordinator = coordinator_of(request)

    def load() -> dict[str, Any]:
        job = coordinator.get_job(request.path_params["job_id"], owner=owner)
        return job_to_dict(job, position_in_queue=coordinator.position_in_queue(job))

    return JSONResponse(await run_in_threadpool(load))


async def cancel_job(request: Request) -> JSONResponse:
    """200 with the cancelled job if it was pending; 202 if it runs and was asked to stop.

    Served as `POST .../cancel` and as `DELETE`, its alias: DELETE cancels, it does not
    delete, and the job stays readable."""
    owner = require_submitter(request).owner_filter
    coordinator = coordinator_of(request)
    job = await run_in_threadpool(
        coordinator.cancel_job, request.path_params["job_id"], owner=owner
    )
    return JSONResponse(job_to_dict(job), status_code=200 if job.job_state.is_terminal else 202)


async def retry_job(request: Request) -> JSONResponse:
    owner = require_submitter(request).owner_filter
    coordinator = coordinator_of(request)
    job = await run_in_threadpool(coordinator.retry_job, request.path_params["job_id"], owner=owner)
    return JSONResponse(
        job_to_dict(job), status_code=202, headers={"Location": f"/api/v1/jobs/{job.id}"}
    )


def by_method(path: str, **handlers: Endpoint) -> Route:
    """One route per path, so a 405 lists every method the path allows in `Allow`."""
    handlers = {method.upper(): handler for method, handler in handlers.items()}

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    endpoint.__name__ = "_".join(handler.__name__ for handler in handlers.values())
    return Route(path, endpoint, methods=list(handlers))


routes = [
    by_method("/api/v1/jobs", get=list_jobs, post=submit_job),
    Route("/api/v1/jobs:batch", submit_jobs, methods=["POST"]),
    by_method("/api/v1/jobs/{job_id}", get=show_job, delete=cancel_job),
    Route("/api/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}/retry", retry_job, methods=["POST"]),
]
