"""`GET /api/v1/jobs/{id}/stream` against real API and worker processes: the events of a
real job, resuming with Last-Event-ID, keep-alives, and 100 open streams that leave the
API (and a 4-connection PostgreSQL pool) free for other requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support import (
    ChildProcess,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    start_api,
    start_worker,
    write_settings,
)


@dataclass
class Event:
    event: str
    id: str | None
    data: dict


def parse_sse(lines: Iterator[str], comments: list[str] | None = None) -> Iterator[Event]:
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield Event(
                    fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])
                )
            fields = {}
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line)
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


@dataclass
class Api:
    url: str
    process: ChildProcess

    def submit(self, params: dict) -> dict:
        response = httpx.post(f"{self.url}/api/v1/jobs", json={"type": "sleep", "params": params})
        assert response.status_code == 202, response.text
        return response.json()

    def events(self, job_id: str, last_event_id: str | None = None) -> list[Event]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        url = f"{self.url}/api/v1/jobs/{job_id}/stream"
        with httpx.stream("GET", url, headers=headers, timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return list(parse_sse(response.iter_lines()))


@pytest.fixture(scope="module")
def api_with_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp("stream")
    settings = write_settings(
        directory,
        {"server": {"data_dir": str(directory / "data"), "stream_poll_secs": 0.05}},
    )
    process, url = start_api(settings, directory)
    worker = start_worker(settings, directory)
    try:
        yield Api(url, process)
    finally:
        worker.stop()
        process.stop()


def test_stream_delivers_a_real_jobs_state_and_progress_then_ends(api_with_worker: Api) -> None:
    job = api_with_worker.submit({"seconds": 1.5, "steps": 5, "echo": "hi"})
    events = api_with_worker.events(job["id"])

    states = [e.data["state"] for e in events if e.event == "state"]
    assert states[-1] == "completed" and "running" in states
    assert events[-1].event == "state" and events[-1].data["result"]["echo"] == "hi"
    progress = [e.data["progress"] for e in events if e.event == "progress"]
    assert progress and progress == sorted(progress) and 0 < progress[0] < 1
    # The bar reaches its end before the terminal state (a progress event at 1.0).
    assert events[-2].event == "progress" and events[-2].data["progress"] == 1.0
    assert all(set(e.data) == {"progress", "message"} for e in events if e.event == "progress")
    ids = [e.id for e in events]
    assert all(ids) and len(set(ids)) == len(ids)

    # Resuming after the terminal event: nothing more to say.
    assert api_with_worker.events(job["id"], last_event_id=events[-1].id) == []
    # Resuming from a running snapshot: only the change since then (the terminal state).
    resumed = api_with_worker.events(job["id"], last_event_id=events[-2].id)
    assert [(e.event, e.data["state"]) for e in resumed] == [("state", "completed")]
    # An id that is not ours: everything from the current snapshot.
    assert len(api_with_worker.events(job["id"], last_event_id="garbage")) == 1


def test_stream_of_unknown_job_is_404(api_with_worker: Api) -> None:
    response = httpx.get(f"{api_with_worker.url}/api/v1/jobs/nope/stream")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.fixture(scope="module")
def idle_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """No worker, so jobs stay pending; PostgreSQL with a 4-connection pool."""
    require_service("postgres")
    directory = tmp_path_factory.mktemp("stream-idle")
    schema = create_postgres_schema()
    settings = write_settings(
        directory,
        {
            "server": {
                "data_dir": str(directory / "data"),
                "stream_poll_secs": 0.2,
                "stream_keepalive_secs": 0.3,
            },
            "storage": {"backend": "postgres", "url": postgres_schema_url(schema), "pool_size": 4},
        },
    )
    process, url = start_api(settings, directory)
    try:
        yield Api(url, process)
    finally:
        process.stop()
        drop_postgres_schema(schema)


def test_idle_stream_sends_keep_alives_and_ends_on_cancel(idle_api: Api) -> None:
    job = idle_api.submit({"seconds": 0})
    comments: list[str] = []
    url = f"{idle_api.url}/api/v1/jobs/{job['id']}/stream"
    with httpx.stream("GET", url, timeout=30) as response:
        lines = response.iter_lines()
        events = parse_sse(lines, comments)
        first = next(events)
        assert (first.event, first.data["state"]) == ("state", "pending")
        while not comments:  # keep-alive comments are not events
            if (line := next(lines)).startswith(":"):
                comments.append(line)
        assert httpx.delete(f"{idle_api.url}/api/v1/jobs/{job['id']}").status_code == 200
        rest = list(events)
    assert comments[0].startswith(": ping")
    assert [(e.event, e.data["state"]) for e in rest] == [("state", "cancelled")]


def test_a_hundred_open_streams_do_not_starve_the_api(idle_api: Api) -> None:
    jobs = [idle_api.submit({"seconds": 0}) for _ in range(100)]

    async def scenario() -> tuple[list[list[Event]], list[int]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=idle_api.url, timeout=20, limits=limits) as client:
            opened = asyncio.Queue()

            async def follow(job_id: str) -> list[Event]:
                async with client.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
                    assert response.status_code == 200
                    lines: list[str] = []
                    events: list[Event] = []
                    async for line in response.aiter_lines():
                        lines.append(line)
                        if not line:
                            events = list(parse_sse(iter(lines)))
                            if len(events) == 1 and len(lines) <= 5:
                                opened.put_nowait(job_id)
                    return list(parse_sse(iter([*lines, ""])))

            streams = [asyncio.create_task(follow(job["id"])) for job in jobs]
            for _ in jobs:
                await asyncio.wait_for(opened.get(), timeout=30)
            # Every stream is open and polling; ordinary requests still get answers.
            statuses = []
            for job in jobs[:20]:
                statuses.append((await client.get(f"/api/v1/jobs/{job['id']}")).status_code)
                statuses.append((await client.get("/api/v1/stats")).status_code)
            cancels = await asyncio.gather(
                *(client.delete(f"/api/v1/jobs/{job['id']}") for job in jobs)
            )
            statuses += [response.status_code for response in cancels]
            return await asyncio.gather(*streams), statuses

    streams, statuses = asyncio.run(scenario())
    assert set(statuses) == {200}
    for events in streams:
        assert [e.data["state"] for e in events if e.event == "state"] == ["pending", "cancelled"]
