"""A job's kept log: `GET /api/v1/jobs/{id}/logs` pages it, `.../logs/stream` follows it.

Every line has a number (`seq`, from 1 in each job); `?since=N` answers the lines after N
and `next_since`, the cursor for the next read. The oldest lines of a long log are dropped
(`jobs.max_log_bytes`), so a reader may see the numbers start above `since + 1`.

The stream polls the store like the job stream (`api.stream`): each `line` event carries
one line with its `seq` as the event id, so a client reconnecting with `Last-Event-ID`
continues where it stopped; once the job is finished and its last lines are sent, an `end`
event with its state closes the stream. Owner rules are the job's: another owner's job is
a 404.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.api.jobs import by_method, coordinator_of, int_param
from skillq.api.remote_workers import report_logs
from skillq.errors import InvalidParams, NotFound
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.logs import line_to_dict, log_page_to_dict
from skillq.storage.job_logs import MAX_READ_LINES, MAX_SEQ


def _bounded(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidParams(
            f"{name} must be between {low} and {high}", [{"path": name, "message": f"got {value}"}]
        )
    return value


def _since(request: Request, *, header: bool = False) -> int:
    """`?since=`, else (for a stream) the `Last-Event-ID` a reconnecting client sends."""
    last_event = request.headers.get("last-event-id", "") if header else ""
    digits = last_event.isascii() and last_event.isdigit() and len(last_event) < 12
    default = int(last_event) if digits else 0
    return _bounded("since", int_param(request, "since", default), 0, MAX_SEQ)


async def read_logs(request: Request) -> JSONResponse:
    owner = require_viewer(request).owner_filter
    since = _since(request)
    limit = _bounded("limit", int_param(request, "limit", MAX_READ_LINES), 1, MAX_READ_LINES)
    job, page = await run_in_threadpool(
        coordinator_of(request).read_logs,
        request.path_params["job_id"],
        owner=owner,
        since=since,
        limit=limit,
    )
    return JSONResponse(log_page_to_dict(job.id, job.state, page))


async def _follow(
    coordinator: JobCoordinator, job_id: str, owner: str | None, since: int, poll_secs: float
) -> AsyncIterator[ServerSentEvent]:
    while True:
        try:
            job, page = await run_in_threadpool(
                coordinator.read_logs, job_id, owner=owner, since=since
            )
        except NotFound:
            return  # purged while we watched: its log went with it
        for line in page.lines:
            yield ServerSentEvent(json.dumps(line_to_dict(line)), event="line", id=str(line.seq))
        since = page.next_since
        if len(page.lines) == MAX_READ_LINES:
            continue  # more is waiting
        if job.job_state.is_terminal:
            # The job was read before its lines: a finished job's lines were all written.
            yield ServerSentEvent(json.dumps({"state": job.state}), event="end")
            return
        await asyncio.sleep(poll_secs)


async def stream_logs(request: Request) -> EventSourceResponse:
    owner = require_viewer(request).owner_filter
    coordinator = coordinator_of(request)
    server = request.app.state.settings.server
    since = _since(request, header=True)
    # Unknown or another owner's job: a 404 now, not an empty stream.
    job = await run_in_threadpool(coordinator.get_job, request.path_params["job_id"], owner=owner)
    events = _follow(coordinator, job.id, owner, since, server.stream_poll_secs)
    return EventSourceResponse(
        events,
        ping=server.stream_keepalive_secs,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


routes = [
    # A client reads a job's log, its remote worker adds to it: one route for both methods,
    # so a 405 lists them both in `Allow`.
    by_method("/api/v1/jobs/{job_id}/logs", get=read_logs, post=report_logs),
    Route("/api/v1/jobs/{job_id}/logs/stream", stream_logs, methods=["GET"]),
]
