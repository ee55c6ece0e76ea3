"""`GET /api/v1/workers`: the worker processes in the registry, each alive, stopped or dead.

A worker is dead when it has not beaten for `workers.dead_after_secs` (SIGKILL, power loss,
a hung process); its jobs are recovered by stale-job recovery. Only an unrestricted caller
(admin, or auth `none`) sees the ids of the jobs a worker runs, as they may be anyone's.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth.access import require_viewer
from skillq.jobs import iso
from storage import workers
from storage.database import in_connection


@in_connection
def worker_list(dead_after_secs: float, *, show_jobs: bool = True) -> dict[str, Any]:
    listed = workers.list_workers(dead_after_secs)
    rows = []
    for entry in listed:
        worker = entry.worker
        row = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "status": entry.status,
            "queues": worker.queues,
            "threads": worker.threads,
            "started_at": iso(worker.started_at),
            "last_beat_at": iso(worker.last_beat_at),
            "stopped_at": iso(worker.stopped_at),
            "jobs_running": len(worker.running_jobs),
        }
        if show_jobs:
            row["running_jobs"] = worker.running_jobs
        rows.append(row)
    counts = {status: 0 for status in ("alive", "stopped", "dead")}
    for entry in listed:
        counts[entry.status] += 1
    return {"workers": rows, "counts": counts, "dead_after_secs": dead_after_secs}


async def list_workers(request: Request) -> JSONResponse:
    principal = require_viewer(request)
    dead_after = request.app.state.settings.workers.dead_after_secs
    body = await run_in_threadpool(
        worker_list, dead_after, show_jobs=principal.owner_filter is None
    )
    return JSONResponse(body)


routes = [Route("/api/v1/workers", list_workers, methods=["GET"])]
