"""REST route of the job-type catalogue: what a client may submit and with which params."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer


async def list_job_types(request: Request) -> JSONResponse:
    require_viewer(request)
    catalogue = request.app.state.coordinator.job_types
    return JSONResponse({"job_types": [job_type.to_dict() for job_type in catalogue.values()]})


routes = [Route("/api/v1/job-types", list_job_types, methods=["GET"])]
