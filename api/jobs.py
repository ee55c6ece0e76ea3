"""REST routes of the job resource: submit, list, show."""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.errors import InvalidParams, InvalidRequest
from skillq.jobs import JobCoordinator, job_to_dict

#: Owner of every job while auth is `none`.
LOCAL_OWNER = "local"


def coordinator_of(request: Request) -> JobCoordinator:
    return request.app.state.coordinator


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise InvalidRequest(
            "the request body is not valid JSON",
            [{"path": "body", "message": f"{error.msg} at line {error.lineno} col {error.colno}"}],
        ) from None
    except (RecursionError, UnicodeDecodeError) as error:
        message = "nested too deeply" if isinstance(error, RecursionError) else "not UTF-8"
        raise InvalidRequest(
            "the request body is not valid JSON", [{"path": "body", "message": message}]
        ) from None


async def submit_job(request: Request) -> JSONResponse:
    body = await read_json(request)
    coordinator = coordinator_of(request)
    submission = await run_in_threadpool(coordinator.submit_job, body, owner=LOCAL_OWNER)
    job = submission.job
    return JSONResponse(
        job_to_dict(job),
        status_code=202 if submission.created else 200,
        headers={"Location": f"/api/v1/jobs/{job.id}"},
    )


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidParams(
            f"{name} must be an integer", [{"path": name, "message": f"got {raw!r}"}]
        ) from None


def _list_param(request: Request, name: str) -> list[str]:
    """Accepts `?state=a&state=b` and `?state=a,b` alike."""
    values = []
    for raw in request.query_params.getlist(name):
        values.extend(part for part in raw.split(",") if part)
    return values


async def list_jobs(request: Request) -> JSONResponse:
    coordinator = coordinator_of(request)
    limit = _int_param(request, "limit", 50)
    offset = _int_param(request, "offset", 0)
    page = await run_in_threadpool(
        coordinator.list_jobs,
        states=_list_param(request, "state"),
        types=_list_param(request, "type"),
        owner=None,
        limit=limit,
        offset=offset,
    )
    return JSONResponse(
        {
            "jobs": [job_to_dict(job) for job in page.jobs],
            "total": page.total,
            "limit": limit,
            "offset": offset,
        }
    )


async def show_job(request: Request) -> JSONResponse:
    coordinator = coordinator_of(request)

    def load() -> dict[str, Any]:
        job = coordinator.get_job(request.path_params["job_id"])
        return job_to_dict(job, position_in_queue=coordinator.position_in_queue(job))

    return JSONResponse(await run_in_threadpool(load))


routes = [
    Route("/api/v1/jobs", submit_job, methods=["POST"]),
    Route("/api/v1/jobs", list_jobs, methods=["GET"]),
    Route("/api/v1/jobs/{job_id}", show_job, methods=["GET"]),
]
