"""`GET /api/v1/workers`: the worker processes in the registry, each alive, stopped or dead.

A worker is dead when it has not beaten for `workers.dead_after_secs` (SIGKILL, power loss,
a hung process); its jobs are recovered by stale-job recovery. Only an unrestricted caller
(admin, or auth `none`) sees the ids of the jobs a worker runs, as they may be anyone's.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.jobs.workers import worker_list


async def list_workers(request: Request) -> JSONResponse:
    principal = require_viewer(request)
    dead_after = request.app.state.settings.workers.dead_after_secs
    body = await run_in_threadpool(
        worker_list, dead_after, show_jobs=principal.owner_filter is None
    )
    return JSONResponse(body)


routes = [Route("/api/v1/workers", list_workers, methods=["GET"])]
