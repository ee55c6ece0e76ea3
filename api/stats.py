"""`GET /api/v1/stats`: how many jobs are in each state, per type and per queue, how
long the oldest pending job of each queue has waited, and each limited job type's limits
and the per-owner running limits beside their use now; `GET /api/v1/stats/history`: jobs
finished and pending depth per minute, for the dashboard's chart.

Counted from the store in grouped queries; a non-admin sees the counts of its own jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.api.jobs import int_param
from skillq.brokers.job_limits import Limit, OwnerLimit, limits_of, owner_limit_of
from skillq.errors import InvalidParams
from skillq.jobs.fields import iso
from skillq.jobs.limits import limit_status, owner_status
from skillq.storage import job_history, jobs
from skillq.storage.database import in_connection
from skillq.storage.models import JobState, utcnow

#: The longest history one request may ask for (a day of minutes).
MAX_HISTORY_MINUTES = 1440


def _by_state() -> dict[str, int]:
    return {state.value: 0 for state in JobState}


@in_connection
def job_stats(
    owner: str | None = None,
    limits: Mapping[str, Limit] | None = None,
    owners: OwnerLimit | None = None,
) -> dict[str, Any]:
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
    now = utcnow()
    oldest_pending = {
        queue: {"created_at": iso(created_at), "age_secs": (now - created_at).total_seconds()}
        for queue, created_at in job_history.oldest_pending(owner).items()
    }
    return {
        "total": total,
        "by_state": by_state,
        "by_type": by_type,
        "by_queue": by_queue,
        "oldest_pending": oldest_pending,
        "limits": limit_status(limits or {}, owner),
        "owner_limits": owner_status(owners or OwnerLimit(), owner),
    }


@in_connection
def history(minutes: int, owner: str | None = None) -> dict[str, Any]:
    buckets = job_history.queue_history(minutes, owner=owner)
    return {
        "minutes": minutes,
        "buckets": [
            {
                "start": iso(bucket.start),
                "completed": bucket.completed,
                "failed": bucket.failed,
                "pending": bucket.pending,
            }
            for bucket in buckets
        ],
    }


async def stats(request: Request) -> JSONResponse:
    owner = require_viewer(request).owner_filter
    broker = request.app.state.coordinator.broker
    limits, owners = limits_of(broker), owner_limit_of(broker)
    return JSONResponse(await run_in_threadpool(job_stats, owner, limits, owners))


async def stats_history(request: Request) -> JSONResponse:
    owner = require_viewer(request).owner_filter
    minutes = int_param(request, "minutes", 60)
    if not 1 <= minutes <= MAX_HISTORY_MINUTES:
        raise InvalidParams(
            "minutes is out of range",
            [{"path": "minutes", "message": f"must be 1-{MAX_HISTORY_MINUTES}"}],
        )
    return JSONResponse(await run_in_threadpool(history, minutes, owner))


routes = [
    Route("/api/v1/stats", stats, methods=["GET"]),
    Route("/api/v1/stats/history", stats_history, methods=["GET"]),
]
