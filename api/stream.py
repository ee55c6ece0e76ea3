"""`GET /api/v1/jobs/{id}/stream`: a job's state and progress as Server-Sent Events.

The stream polls the store (the source of truth; workers write it from any machine) every
`server.stream_poll_secs`, checking a pooled connection out for each read and returning
it at once, so an idle stream holds no database connection and a hundred open streams
cost a hundred short reads per poll interval, not a hundred connections.

Events:
  state     the whole job (as `GET /api/v1/jobs/{id}`) whenever its state or attempt changes
  progress  `{"progress", "message"}` whenever only those change, and once more just before
            a terminal `state` event that changes them (a completed job's final 1.0): a
            client following progress events alone sees the bar reach its end
Each event's id names the snapshot it reports. A client reconnecting with `Last-Event-ID`
gets only what changed since that snapshot, and a stream ends after the terminal state.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.errors import NotFound
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.fields import job_to_dict
from skillq.storage.models import Job


@dataclass(frozen=True)
class Snapshot:
    """What a client has seen: the attempt and state, then progress and message."""

    attempt: int
    state: str
    progress: int | None  # in thousandths, so ids stay short and exact
    message: int  # CRC-32 of the message text

    @classmethod
    def of(cls, job: Job) -> Snapshot:
        progress = None if job.progress is None else round(job.progress * 1000)
        return cls(job.attempts, job.state, progress, zlib.crc32((job.message or "").encode()))

    @property
    def event_id(self) -> str:
        progress = "-" if self.progress is None else str(self.progress)
        return f"{self.attempt}.{self.state}.{progress}.{self.message:x}"

    @classmethod
    def parse(cls, event_id: str | None) -> Snapshot | None:
        """The snapshot a `Last-Event-ID` names; None (send everything) if it is not ours."""
        try:
            attempt, state, progress, message = (event_id or "").split(".")
            return cls(
                int(attempt), state, None if progress == "-" else int(progress), int(message, 16)
            )
        except ValueError:
            return None


def _progress_event(job: Job, snapshot: Snapshot) -> ServerSentEvent:
    data = {"progress": job.progress, "message": job.message}
    return ServerSentEvent(json.dumps(data), event="progress", id=snapshot.event_id)


def _events(job: Job, seen: Snapshot | None) -> list[ServerSentEvent]:
    now = Snapshot.of(job)
    if seen is not None and (seen.attempt, seen.state) == (now.attempt, now.state):
        if (seen.progress, seen.message) == (now.progress, now.message):
            return []
        return [_progress_event(job, now)]
    events = []
    if (
        seen is not None
        and seen.attempt == now.attempt
        and job.job_state.is_terminal
        and job.progress is not None
        and seen.progress != now.progress
    ):
        # The last progress first, named as the snapshot before the state changed, so a
        # client resuming from it still gets the terminal state.
        before = Snapshot(seen.attempt, seen.state, now.progress, now.message)
        events.append(_progress_event(job, before))
    events.append(ServerSentEvent(json.dumps(job_to_dict(job)), event="state", id=now.event_id))
    return events


async def _follow(
    coordinator: JobCoordinator,
    job: Job,
    owner: str | None,
    seen: Snapshot | None,
    poll_secs: float,
) -> AsyncIterator[ServerSentEvent]:
    while True:
        for event in _events(job, seen):
            yield event
        seen = Snapshot.of(job)
        if job.job_state.is_terminal:
            return
        await asyncio.sleep(poll_secs)
        try:
            job = await run_in_threadpool(coordinator.get_job, job.id, owner=owner)
        except NotFound:
            return  # purged while we watched; nothing more will happen to it


async def stream_job(request: Request) -> EventSourceResponse:
    owner = require_viewer(request).owner_filter
    coordinator: JobCoordinator = request.app.state.coordinator
    server = request.app.state.settings.server
    job = await run_in_threadpool(coordinator.get_job, request.path_params["job_id"], owner=owner)
    seen = Snapshot.parse(request.headers.get("last-event-id"))
    events = _follow(coordinator, job, owner, seen, server.stream_poll_secs)
    return EventSourceResponse(
        events,
        ping=server.stream_keepalive_secs,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


routes = [Route("/api/v1/jobs/{job_id}/stream", stream_job, methods=["GET"])]
