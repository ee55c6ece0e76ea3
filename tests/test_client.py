"""`skillq.client`: the sync and async clients against a real API and worker, on the
embedded default (SQLite) and on Redis + PostgreSQL, in auth mode `jwt`; plus the retry
policy against a test double that answers 503 before it answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from skillq import errors
from skillq.client import AsyncClient, Client, Job, SearchHit
from skillq.settings import JwtSettings
from skillq.tokens import mint_token
from tests.support import (
    REDIS_URL,
    api_with_worker,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    serve_http,
)

SECRET = "client-test-secret-" + "k" * 32
JWT = JwtSettings(secret=SECRET)


@pytest.fixture(scope="module", params=["sqlite", "redis-postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    directory = tmp_path_factory.mktemp(f"client-{request.param}")
    sections: dict[str, dict] = {
        "server": {"data_dir": str(directory / "data")},
        "auth": {"mode": "jwt"},
        "auth.jwt": {"secret": SECRET},
        "workers": {"retry_delay_secs": 0},
    }
    schema = None
    if request.param == "redis-postgres":
        require_service("redis")
        require_service("postgres")
        schema = create_postgres_schema()
        sections["broker"] = {
            "backend": "redis",
            "url": REDIS_URL,
            "namespace": f"c{uuid.uuid4().hex[:8]}",
        }
        sections["storage"] = {"backend": "postgres", "url": postgres_schema_url(schema)}
    try:
        with api_with_worker(directory, sections) as url:
            yield url
    finally:
        if schema:
            drop_postgres_schema(schema)


def client_for(url: str, subject: str = "alice", roles: tuple[str, ...] = ("submitter",)) -> Client:
    return Client(url, token=mint_token(JWT, subject, list(roles)))


def test_submit_wait_with_progress_and_result(server: str) -> None:
    seen: list[float | None] = []
    with client_for(server) as skillq:
        job = skillq.submit(
            "sleep", {"seconds": 0.5, "steps": 5, "echo": {"n": 1}}, priority="high"
        )
        assert isinstance(job, Job) and job.state == "pending" and job.priority == 8
        done = skillq.wait(job.id, timeout=60, on_progress=lambda p, m: seen.append(p))
    assert done.state == "completed"
    assert done.result["echo"] == {"n": 1}
    assert done.completed_at >= done.started_at >= done.created_at
    assert seen and max(p for p in seen if p is not None) >= 0.6


def test_list_iterates_every_page(server: str) -> None:
    with client_for(server, subject=f"lister-{uuid.uuid4().hex[:6]}") as skillq:
        ids = {skillq.submit("sleep", {"seconds": 0, "echo": i}).id for i in range(5)}
        listed = [job.id for job in skillq.list(type=["sleep"], page_size=2)]
    assert set(listed) == ids
    assert len(listed) == len(ids)


def test_cancel_then_retry(server: str) -> None:
    with client_for(server) as skillq:
        job = skillq.submit("sleep", {"seconds": 30, "steps": 60})
        cancelled = skillq.cancel(job.id)
        assert cancelled.state == "cancelled" or cancelled.cancel_requested_at is not None
        assert skillq.wait(job.id, timeout=60).state == "cancelled"
        again = skillq.retry(job.id)
        assert again.state == "pending" and again.id == job.id
        skillq.cancel(job.id)


def test_events_stream_until_the_job_ends(server: str) -> None:
    with client_for(server) as skillq:
        job = skillq.submit("sleep", {"seconds": 0.3, "steps": 3})
        events = list(skillq.events(job.id))
    assert events[0].kind == "state"
    assert events[-1].kind == "state" and events[-1].job.state == "completed"
    assert all(event.id for event in events)


def test_errors_are_skillqs_own_exceptions(server: str) -> None:
    with client_for(server) as skillq:
        with pytest.raises(errors.NotFound) as missing:
            skillq.get(str(uuid.uuid4()))
        assert missing.value.http_status == 404
        with pytest.raises(errors.InvalidParams) as invalid:
            skillq.submit("sleep", {"seconds": -1})
        assert invalid.value.http_status == 422
        assert any("seconds" in detail["path"] for detail in invalid.value.details)
        with pytest.raises(errors.UnknownJobType):
            skillq.submit("no_such_type")
        done = skillq.submit("sleep", {"seconds": 0})
        skillq.wait(done.id, timeout=60)
        with pytest.raises(errors.Conflict):
            skillq.cancel(done.id)
    with Client(server) as anonymous, pytest.raises(errors.Unauthorized):
        anonymous.get(done.id)
    viewer = client_for(server, subject="alice", roles=("viewer",))
    with viewer, pytest.raises(errors.Forbidden):
        viewer.submit("sleep")


def test_owners_see_only_their_jobs(server: str) -> None:
    with client_for(server, subject="bob") as bob, client_for(server, subject="carol") as carol:
        job = bob.submit("sleep", {"seconds": 0})
        with pytest.raises(errors.NotFound):
            carol.get(job.id)
        assert job.id not in {j.id for j in carol.list()}


def test_search_finds_what_a_job_indexed(server: str) -> None:
    documents = [
        {"id": "walrus", "text": "A walrus basks on the ice."},
        {"id": "heron", "text": "The heron stands in the reeds."},
    ]
    with client_for(server) as skillq:
        job = skillq.submit("index_documents", {"collection": "zoo", "documents": documents})
        assert skillq.wait(job.id, timeout=60).state == "completed"
        hits = skillq.search("zoo", "walrus", k=1)
    assert hits and isinstance(hits[0], SearchHit) and hits[0].id == "walrus"
    with client_for(server, subject="mallory") as other, pytest.raises(errors.NotFound):
        other.search("zoo", "walrus")
    admin = client_for(server, subject="root", roles=("admin",))
    with admin:
        assert admin.search("zoo", "walrus", owner="alice")[0].id == "walrus"


def test_wait_gives_up_at_its_timeout(server: str) -> None:
    with client_for(server) as skillq:
        job = skillq.submit("sleep", {"seconds": 30, "steps": 30})
        with pytest.raises(TimeoutError):
            skillq.wait(job.id, timeout=1.5)
        skillq.cancel(job.id)


def test_the_async_client_does_the_same(server: str) -> None:
    async def scenario() -> tuple[Job, list[str], Job]:
        token = mint_token(JWT, "dora", ["submitter"])
        async with AsyncClient(server, token=token) as skillq:
            job = await skillq.submit("sleep", {"seconds": 0.2, "steps": 2})
            done = await skillq.wait(job.id, timeout=60)
            listed = [j.id async for j in skillq.list(page_size=1)]
            with pytest.raises(errors.NotFound):
                await skillq.get(str(uuid.uuid4()))
            kinds = [event.kind async for event in skillq.events(job.id)]
            return done, listed, kinds

    done, listed, kinds = asyncio.run(scenario())
    assert done.state == "completed" and done.id in listed
    assert kinds == ["state"]  # a finished job's stream is its final state


def test_submit_many_runs_every_job_or_refuses_them_all(server: str) -> None:
    key = uuid.uuid4().hex
    batch = [
        {"type": "sleep", "params": {"seconds": 0.1, "steps": 1}, "idempotency_key": key},
        {"type": "sleep", "params": {"seconds": 0}, "priority": "high"},
        {"type": "sleep", "run_at": datetime.now(UTC) + timedelta(seconds=1)},
    ]
    with client_for(server, "erin") as skillq:
        jobs = skillq.submit_many(batch)
        assert [job.priority for job in jobs] == [5, 8, 5] and jobs[2].scheduled_for
        for job in jobs:
            assert skillq.wait(job.id, timeout=60).state == "completed"
        assert skillq.submit_many(batch[:1])[0].id == jobs[0].id
        with pytest.raises(errors.InvalidParams) as refused:
            skillq.submit_many([batch[1], {"type": "sleep", "params": {"seconds": "x"}}])
        assert refused.value.details[0]["path"] == "body.jobs[1].params.seconds"

    async def scenario() -> list[Job]:
        async with AsyncClient(server, token=mint_token(JWT, "erin", ["submitter"])) as skillq:
            made = await skillq.submit_many(batch[1:2] * 2)
            return [await skillq.wait(job.id, timeout=60) for job in made]

    assert [job.state for job in asyncio.run(scenario())] == ["completed"] * 2


def test_the_job_model_has_exactly_the_documents_fields(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json", timeout=10).json()
    documented = set(document["components"]["schemas"]["Job"]["properties"])
    modelled = {field.name for field in dataclasses.fields(Job)} - {"raw"}
    assert modelled == documented


class _FlakyServer(BaseHTTPRequestHandler):
    """Answers 503 (with Retry-After) to the first two requests of each path, then a job."""

    answered: dict[str, int] = {}

    def do_GET(self) -> None:
        count = self.answered.get(self.path, 0)
        self.answered[self.path] = count + 1
        if count < 2:
            body = {
                "error": {"code": "service_unavailable", "message": "store away", "details": None}
            }
            self._answer(503, body, {"Retry-After": "0"})
        else:
            self._answer(200, FAKE_JOB, {})

    def do_POST(self) -> None:
        """A batch the broker took in part: its 503 names the jobs, queued or failed."""
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answered[self.path] = self.answered.get(self.path, 0) + 1
        detail = {"path": "body.jobs[0]", "job_id": FAKE_JOB["id"], "message": "queued"}
        body = {"error": {"code": "service_unavailable", "message": "x", "details": [detail]}}
        self._answer(503, body, {"Retry-After": "0"})

    def _answer(self, status: int, body: dict, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


FAKE_JOB = {
    "id": "4f1c2a9e-3b7d-4e8a-9c61-2d5f7a8b9c0d",
    "type": "sleep",
    "queue": "default",
    "params": {},
    "state": "pending",
    "priority": 5,
    "attempts": 0,
}


def test_503_is_retried_with_back_off_then_answered() -> None:
    with serve_http(_FlakyServer) as url:
        with Client(url, retries=3) as patient:
            assert patient.get(FAKE_JOB["id"]).id == FAKE_JOB["id"]
        _FlakyServer.answered.clear()
        with Client(url, retries=1) as impatient, pytest.raises(errors.ServiceUnavailable) as down:
            impatient.get(FAKE_JOB["id"])
        assert down.value.http_status == 503


def test_a_partly_queued_batch_is_not_sent_again() -> None:
    with (
        serve_http(_FlakyServer) as url,
        Client(url, retries=3) as patient,
        pytest.raises(errors.ServiceUnavailable) as down,
    ):
        patient.submit_many([{"type": "sleep"}])
    assert down.value.details[0]["job_id"] == FAKE_JOB["id"]
    assert _FlakyServer.answered["/api/v1/jobs:batch"] == 1
