"""`GET /api/v1/jobs/{id}/stream`: a job's state and progress as Server-Sent Events.

The stream polls the store (the source of truth; workers write it from any machine) every
`server.stream_poll_secs`, checking a pooled connection out for each read and returning
it at once, so an idle stream holds no database connection and a hundred open streams
cost a hundred short reads per poll interval, not a hundred connections. A poll reads the
state, attempt, progress and message columns only; the whole job (params and result too)
is read when its state changes, which happens a few times per job. One principal holds at
most `server.max_streams_per_principal` streams at once (429 past it).

Events:
  state     the whole job (as `GET /api/v1/jobs/{id}`) whenever its state or attempt changes
  progress  `{"progress", "message"}` whenever only those change
Each event's id names the snapshot it reports. A client reconnecting with `Last-Event-ID`
gets only what changed since that snapshot, and a stream ends after the terminal state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from skillq.api.auth.access import require_viewer
from skillq.errors import NotFound, TooManyRequests
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


@dataclass
class OpenStreams:
    """How many event streams each principal holds open, against `limit`."""

    limit: int
    open: Counter[str] = field(default_factory=Counter)

    @contextlib.contextmanager
    def held(self, subject: str) -> Iterator[None]:
        if self.open[subject] >= self.limit:
            raise TooManyRequests(
                f"{self.limit} event streams are open for {subject!r}; close one first",
                [{"path": "stream", "message": "server.max_streams_per_principal"}],
            )
        self.open[subject] += 1
        try:
            yield
        finally:
            self.open[subject] -= 1
            if not self.open[subject]:
                del self.open[subject]


def _events(job: Job, seen: Snapshot | None) -> list[ServerSentEvent]:
    now = Snapshot.of(job)
    if seen is not None and (seen.attempt, seen.state) == (now.attempt, now.state):
        if (seen.progress, seen.message) == (now.progress, now.message):
            return []
        data = {"progress": job.progress, "message": job.message}
        return [ServerSentEvent(json.dumps(data), event="progress", id=now.event_id)]
    return [ServerSentEvent(json.dumps(job_to_dict(job)), event="state", id=now.event_id)]


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
            job = await run_in_threadpool(coordinator.get_progress, job.id, owner=owner)
            if (job.attempts, job.state) != (seen.attempt, seen.state):
                # A state event carries the whole job: read it once, now.
                job = await run_in_threadpool(coordinator.get_job, job.id, owner=owner)
        except NotFound:
            return  # purged while we watched; nothing more will happen to it


async def _stream_response(request: Request) -> EventSourceResponse:
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


class _StreamJob:
    """ASGI, so the principal's stream is counted for exactly as long as the response runs
    (a generator's clean-up would not run for a client gone before its first event)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        streams: OpenStreams = request.app.state.streams
        with streams.held(require_viewer(request).subject):
            response = await _stream_response(request)
            await response(scope, receive, send)


routes = [Route("/api/v1/jobs/{job_id}/stream", _StreamJob(), methods=["GET"], name="stream_job")]
