"""`GET /api/v1/jobs/{id}/deliveries`: a job's webhook deliveries and each attempt.

Owner rules as for the job (`skillq.webhooks.listing`): another owner's job is a 404.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.api.jobs import coordinator_of
from skillq.webhooks.listing import job_deliveries


async def list_deliveries(request: Request) -> JSONResponse:
    owner = require_viewer(request).owner_filter
    listing = await run_in_threadpool(
        job_deliveries, coordinator_of(request), request.path_params["job_id"], owner=owner
    )
    return JSONResponse(listing)


routes = [Route("/api/v1/jobs/{job_id}/deliveries", list_deliveries, methods=["GET"])]
