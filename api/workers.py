"""`GET /api/v1/workers`: the worker processes in the registry, each alive, stopped or dead;
`GET | PUT /api/v1/workers/scale`: each queue's pool size, desired against actual.

A worker is dead when it has not beaten for `workers.dead_after_secs` (SIGKILL, power loss,
a hung process); its jobs are recovered by stale-job recovery. Only an unrestricted caller
(admin, or auth `none`) sees the ids of the jobs a worker runs, as they may be anyone's.
Only an admin may resize a pool: the supervisor of `skillq up` applies the new size within a
few seconds (`skillq.jobs.pools`).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_admin, require_viewer
from skillq.api.jobs import read_json
from skillq.errors import InvalidParams
from skillq.jobs.pools import pool_status, scale, served_queues
from skillq.jobs.workers import worker_list


async def list_workers(request: Request) -> JSONResponse:
    principal = require_viewer(request)
    dead_after = request.app.state.settings.workers.dead_after_secs
    body = await run_in_threadpool(
        worker_list, dead_after, show_jobs=principal.owner_filter is None
    )
    return JSONResponse(body)


def _queues(request: Request) -> list[str]:
    broker = request.app.state.coordinator.broker
    return served_queues(actor.queue_name for actor in broker.actors.values())


async def get_scale(request: Request) -> JSONResponse:
    require_viewer(request)
    settings = request.app.state.settings
    return JSONResponse(await run_in_threadpool(pool_status, settings, _queues(request)))


async def put_scale(request: Request) -> JSONResponse:
    principal = require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"threads"}:
        raise InvalidParams(
            'expected {"threads": {QUEUE: THREADS, ...}}',
            [{"path": "body", "message": "an object with exactly the key 'threads'"}],
        )
    queues = _queues(request)
    await run_in_threadpool(scale, body["threads"], queues, updated_by=principal.subject)
    settings = request.app.state.settings
    return JSONResponse(await run_in_threadpool(pool_status, settings, queues))


async def workers_scale(request: Request) -> JSONResponse:
    # One route for both methods, so a 405 lists them both in `Allow`.
    return await (put_scale if request.method == "PUT" else get_scale)(request)


routes = [
    Route("/api/v1/workers", list_workers, methods=["GET"]),
    Route("/api/v1/workers/scale", workers_scale, methods=["GET", "PUT"]),
]
