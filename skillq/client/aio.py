"""`AsyncClient`: skillq's REST API from Python, for asyncio (httpx)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from skillq.client import wire
from skillq.client.models import Job, JobEvent, SearchHit

ProgressCallback = Callable[[float | None, str | None], None]


class AsyncClient:
    """A connection pool to one skillq server, for asyncio; the same calls as `Client`.

    `api_key` or `token` authenticates (auth modes `jwt`/`oidc`, or API keys); `retries` is
    how often an answer of 502/503/504 (or a dropped connection, for reads) is tried again,
    with exponential back-off that honours `Retry-After`.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        token: str | None = None,
        api_key_header: str = "X-API-Key",
        timeout: float = 10.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=wire.auth_headers(api_key, token, api_key_header),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: wire.Call) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.send(call.request(self._http))
            except httpx.TransportError:
                if call.method not in wire.IDEMPOTENT_METHODS or attempt == self.retries:
                    raise
                await asyncio.sleep(wire.backoff_secs(attempt, None))
                continue
            if not wire.should_retry(response) or attempt == self.retries:
                return wire.decode(response)
            await asyncio.sleep(wire.backoff_secs(attempt, response))
        raise AssertionError("unreachable")

    async def submit(
        self,
        job_type: str,
        params: dict[str, Any] | None = None,
        *,
        priority: int | str | None = None,
        ttl_hours: int | None = None,
        idempotency_key: str | None = None,
        trace_id: str | None = None,
        run_at: datetime | str | None = None,
        delay_secs: float | None = None,
        **options: Any,
    ) -> Job:
        """Submit a job; with an `idempotency_key`, a repeat returns the first job. With
        `run_at` (an aware datetime or ISO 8601 text) or `delay_secs`, it starts no earlier."""
        call = wire.submit_call(
            job_type,
            params,
            priority=priority,
            ttl_hours=ttl_hours,
            idempotency_key=idempotency_key,
            trace_id=trace_id,
            options={**options, **wire.delay_options(run_at, delay_secs)},
        )
        return Job.from_json(await self._send(call))

    async def submit_many(self, submissions: Iterable[dict[str, Any]]) -> list[Job]:
        """Submit many jobs in one request (`POST /api/v1/jobs:batch`), all or none: each
        item is a submit body, `{"type": ..., "params": ..., "priority": ...}`. Returns the
        jobs in order (an item repeating an `idempotency_key` gives the earlier job). A bad
        item raises for the whole batch, its `details` naming each bad item's index."""
        call = wire.batch_call(list(submissions))
        return [Job.from_json(job) for job in (await self._send(call))["jobs"]]

    async def get(self, job_id: str) -> Job:
        return Job.from_json(await self._send(wire.Call("GET", wire.job_path(job_id))))

    async def list(
        self,
        *,
        state: list[str] | None = None,
        type: list[str] | None = None,
        page_size: int = 50,
    ) -> AsyncIterator[Job]:
        """Every matching job, newest first, fetching a page at a time as you iterate."""
        offset = 0
        while True:
            call = wire.list_call(states=state, types=type, limit=page_size, offset=offset)
            page = await self._send(call)
            for job in page["jobs"]:
                yield Job.from_json(job)
            offset += len(page["jobs"])
            if len(page["jobs"]) < page_size or offset >= page["total"]:
                return

    async def page(
        self,
        *,
        state: list[str] | None = None,
        type: list[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """One page of matching jobs, newest first, and how many match in all."""
        call = wire.list_call(states=state, types=type, limit=limit, offset=offset)
        answer = await self._send(call)
        return [Job.from_json(job) for job in answer["jobs"]], answer["total"]

    async def cancel(self, job_id: str) -> Job:
        """Cancel a pending job at once, or ask a running one to stop (`cancel_requested_at`)."""
        return Job.from_json(await self._send(wire.Call("DELETE", wire.job_path(job_id))))

    async def retry(self, job_id: str) -> Job:
        return Job.from_json(await self._send(wire.Call("POST", wire.job_path(job_id, "/retry"))))

    async def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[JobEvent]:
        """The job's Server-Sent Events until it ends (a `state` event first, then changes).

        `last_event_id` resumes after an event already seen; `read_timeout` bounds a quiet
        wait (httpx.ReadTimeout), since keep-alive pings are not events.
        """
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        path = wire.job_path(job_id, "/stream")
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
        async with aconnect_sse(
            self._http, "GET", path, headers=headers, timeout=timeout
        ) as source:
            if not source.response.is_success:
                await source.response.aread()
                raise wire.error_of(source.response)
            async for sse in source.aiter_sse():
                yield JobEvent(sse.event, sse.id or None, json.loads(sse.data))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        """Follow the job until it ends and return it; `TimeoutError` after `timeout` s."""
        deadline = wire.deadline_of(timeout)
        last_event_id = None
        while True:
            try:
                events = self.events(
                    job_id, last_event_id=last_event_id, read_timeout=wire.read_slice(deadline)
                )
                async for event in events:
                    last_event_id = event.id or last_event_id
                    job = wire.report(event, on_progress)
                    if job is not None and job.finished:
                        return job
                    wire.read_slice(deadline)  # busy streams too end at the deadline
            except httpx.ReadTimeout:
                continue  # quiet for a slice: check the deadline, then listen again
            job = await self.get(job_id)  # the stream ended early (server restart): look, go on
            if job.finished:
                return job

    async def logs(self, job_id: str, *, since: int = 0) -> dict[str, Any]:
        """One page of the job's kept log lines after `since`: `lines`, `next_since`,
        and the job's `state`."""
        return await self._send(
            wire.Call("GET", wire.job_path(job_id, "/logs"), params={"since": since})
        )

    async def search(
        self, collection: str, query: str, *, k: int = 10, owner: str | None = None
    ) -> list[SearchHit]:
        """Search one of your collections (an admin may name another `owner`'s)."""
        answer = await self._send(wire.search_call(collection, query, k, owner))
        return [SearchHit.from_json(hit) for hit in answer["hits"]]
