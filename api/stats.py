"""`GET /api/v1/stats`: how many jobs are in each state, per type and per queue.

Counted from the store in one grouped query; a non-admin sees the counts of its own jobs.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.storage import jobs
from skillq.storage.database import in_connection
from skillq.storage.models import JobState


def _by_state() -> dict[str, int]:
    return {state.value: 0 for state in JobState}


@in_connection
def job_stats(owner: str | None = None) -> dict[str, Any]:
    """Every state appears in every breakdown (zero when empty), so clients need no defaults."""
    total, by_state = 0, _by_state()
    by_type: dict[str, dict[str, int]] = {}
    by_queue: dict[str, dict[str, int]] = {}
    for job_type, queue, state, count in jobs.count_by_type_queue_state(owner):
        total += count
        by_state[state] = by_state.get(state, 0) + count
        for breakdown, key in ((by_type, job_type), (by_queue, queue)):
            counts = breakdown.setdefault(key, _by_state())
            counts[state] = counts.get(state, 0) + count
    return {"total": total, "by_state": by_state, "by_type": by_type, "by_queue": by_queue}


async def stats(request: Request) -> JSONResponse:
    owner = require_viewer(request).owner_filter
    return JSONResponse(await run_in_threadpool(job_stats, owner))


routes = [Route("/api/v1/stats", stats, methods=["GET"])]
