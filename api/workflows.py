"""REST routes of workflows: create a DAG of jobs, read its status, cancel what is left.

Owner rules are the jobs': another owner's workflow answers 404, as a missing one does.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_submitter, require_viewer
from skillq.api.jobs import coordinator_of
from skillq.api.request_json import read_json
from skillq.jobs.fields import iso
from skillq.jobs.workflows import Workflows, WorkflowStatus


def workflow_to_dict(status: WorkflowStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "state": status.state,
        "counts": status.counts,
        "jobs": status.jobs,
        "owner": status.owner,
        "created_at": iso(status.created_at),
    }


def _location(status: WorkflowStatus) -> dict[str, str]:
    return {"Location": f"/api/v1/workflows/{status.id}"}


async def create_workflow(request: Request) -> JSONResponse:
    principal = require_submitter(request)
    body = await read_json(request)
    workflows = Workflows(coordinator_of(request))
    status = await run_in_threadpool(
        workflows.create, body, owner=principal.subject, any_owner=principal.is_admin
    )
    return JSONResponse(workflow_to_dict(status), status_code=202, headers=_location(status))


async def show_workflow(request: Request) -> JSONResponse:
    owner = require_viewer(request).owner_filter
    workflows = Workflows(coordinator_of(request))
    status = await run_in_threadpool(workflows.get, request.path_params["workflow_id"], owner=owner)
    return JSONResponse(workflow_to_dict(status))


async def cancel_workflow(request: Request) -> JSONResponse:
    """200 with the status: every pending job cancelled, running ones asked to stop."""
    owner = require_submitter(request).owner_filter
    workflows = Workflows(coordinator_of(request))
    status = await run_in_threadpool(
        workflows.cancel, request.path_params["workflow_id"], owner=owner
    )
    return JSONResponse(workflow_to_dict(status))


routes = [
    Route("/api/v1/workflows", create_workflow, methods=["POST"]),
    Route("/api/v1/workflows/{workflow_id}", show_workflow, methods=["GET"]),
    Route("/api/v1/workflows/{workflow_id}/cancel", cancel_workflow, methods=["POST"]),
]
