"""Delayed jobs (issue 14), in process: `run_at` / `delay_secs` on every way in, the
`scheduled_for` a client sees, the 422s, `position_in_queue`, and recovery's view of a
delayed job. Runs on real brokers: tests/test_delayed_runs.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from dramatiq.middleware import SkipMessage
from starlette.testclient import TestClient
from typer.testing import CliRunner

from skillq import actors
from skillq.api.app import create_app
from skillq.brokers.job_status import JOB_ID_OPTION, JobStatus
from skillq.brokers.running import RunningJobs
from skillq.cli.main import app as cli_app
from skillq.client import wire
from skillq.jobs.coordinator import JobCoordinator
from skillq.settings import StorageSettings
from skillq.storage import job_recovery, jobs
from skillq.storage.database import connection
from tests.test_hostile_values import mcp_call


@pytest.fixture
def client(store: StorageSettings) -> Iterator[TestClient]:
    """On a fresh store of each backend: for what the store's SQL decides."""
    with TestClient(create_app(), base_url="http://127.0.0.1:8000") as client:
        yield client


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    """On the session's embedded store: for what is decided before the store is reached."""
    with TestClient(create_app(), base_url="http://127.0.0.1:8000") as client:
        yield client


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _submit(client: TestClient, **options: object):
    return client.post("/api/v1/jobs", json={"type": "sleep", "params": {}, **options})


def test_delay_secs_and_run_at_set_scheduled_for(client: TestClient) -> None:
    before = datetime.now(UTC)
    delayed = _submit(client, delay_secs=90)
    assert delayed.status_code == 202, delayed.text
    job = delayed.json()
    assert job["state"] == "pending"
    due = _time(job["scheduled_for"])
    assert before + timedelta(seconds=90) <= due <= datetime.now(UTC) + timedelta(seconds=90)
    # Any offset is accepted and kept as UTC.
    at = _submit(client, run_at="2026-12-01T12:00:00+02:00")
    if datetime.now(UTC) < datetime(2026, 12, 1, 10, tzinfo=UTC):
        assert at.status_code == 202, at.text
        assert at.json()["scheduled_for"] == "2026-12-01T10:00:00Z"
    plain = _submit(client).json()
    assert plain["scheduled_for"] is None
    shown = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert shown["scheduled_for"] == job["scheduled_for"]


def test_position_in_queue_skips_jobs_not_yet_due(client: TestClient) -> None:
    delayed = _submit(client, delay_secs=600, priority="high").json()
    first = _submit(client).json()
    second = _submit(client).json()
    assert client.get(f"/api/v1/jobs/{delayed['id']}").json()["position_in_queue"] is None
    assert client.get(f"/api/v1/jobs/{first['id']}").json()["position_in_queue"] == 0
    assert client.get(f"/api/v1/jobs/{second['id']}").json()["position_in_queue"] == 1
    # Once due, it counts like any pending job (priority, then submission order).
    with connection():
        job = jobs.get_job(second["id"])
        assert jobs.position_in_queue(job, now=datetime.now() + timedelta(hours=1)) == 2


@pytest.mark.parametrize(
    ("options", "path", "words"),
    [
        ({"delay_secs": 5, "run_at": "2030-01-01T00:00:00Z"}, "body.delay_secs", "not both"),
        ({"run_at": "2026-12-01T10:00:00"}, "body.run_at", "needs a UTC offset"),
        ({"run_at": "tomorrow"}, "body.run_at", "not an ISO 8601 time"),
        ({"run_at": "2020-01-01T00:00:00Z"}, "body.run_at", "in the past"),
        ({"run_at": "2099-01-01T00:00:00Z"}, "body.run_at", "too far ahead"),
        ({"delay_secs": 168 * 3600 + 1}, "body.delay_secs", "too large"),
        ({"delay_secs": 1e308}, "body.delay_secs", "too large"),
        ({"delay_secs": -1}, "body.delay_secs", "does not match"),
        ({"delay_secs": "10"}, "body.delay_secs", "does not match"),
    ],
)
def test_bad_delays_are_422_and_nothing_is_written(
    app_client: TestClient, options: dict, path: str, words: str
) -> None:
    client = app_client
    total = client.get("/api/v1/jobs").json()["total"]
    response = _submit(client, **options)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert words in error["message"], error
    assert any(detail["path"] == path for detail in error["details"]), error
    assert client.get("/api/v1/jobs").json()["total"] == total


def test_a_past_run_at_within_the_tolerance_runs_at_once(client: TestClient) -> None:
    just_now = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    job = _submit(client, run_at=just_now).json()
    assert job["state"] == "pending" and job["scheduled_for"] is not None
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["position_in_queue"] == 0


def test_recovery_resends_a_delayed_job_only_once_it_is_overdue(client: TestClient) -> None:
    job = _submit(client, delay_secs=600).json()
    due = _time(job["scheduled_for"]).replace(tzinfo=None)
    requeue_after = timedelta(seconds=300)
    with connection():
        # Past the send + requeue_after, but the message rightly waits in the broker.
        lost = job_recovery.lost_pending(requeue_after, now=due - timedelta(seconds=1))
        assert job["id"] not in {j.id for j in lost}
        # Not started requeue_after past its time: its message was lost; re-send it.
        lost = job_recovery.lost_pending(
            requeue_after, now=due + requeue_after + timedelta(seconds=1)
        )
        assert job["id"] in {j.id for j in lost}


def test_mcp_job_options_carry_a_delay(app_client: TestClient) -> None:
    client = app_client
    options = {"skillq/job_options": {"delay_secs": 120}, "skillq/inline_wait_secs": 0}
    result = mcp_call(client, "sleep", '{"seconds": 0}', **options)
    job_id = result["_meta"]["skillq/job"]["id"]
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "pending" and job["scheduled_for"] is not None
    both = {"skillq/job_options": {"delay_secs": 1, "run_at": "2030-01-01T00:00:00Z"}}
    refused = mcp_call(client, "sleep", '{"seconds": 0}', **both)
    assert refused["isError"] is True
    assert refused["structuredContent"]["error"]["code"] == "invalid_params"


def test_cli_delay_and_at() -> None:
    runner = CliRunner()
    submitted = runner.invoke(cli_app, ["jobs", "submit", "sleep", "--delay", "1h30m", "--json"])
    assert submitted.exit_code == 0, submitted.output
    job = json.loads(submitted.output)
    wait = _time(job["scheduled_for"]) - _time(job["created_at"])
    assert timedelta(seconds=5399) < wait <= timedelta(seconds=5401)
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    text = at.isoformat().replace("+00:00", "Z")
    submitted = runner.invoke(cli_app, ["jobs", "submit", "sleep", "--at", text, "--json"])
    assert submitted.exit_code == 0, submitted.output
    assert json.loads(submitted.output)["scheduled_for"] == text
    bad = runner.invoke(cli_app, ["jobs", "submit", "sleep", "--delay", "10 parsecs"])
    assert bad.exit_code == 2 and "--delay" in bad.output


def test_client_refuses_a_naive_run_at() -> None:
    with pytest.raises(ValueError, match="timezone"):
        wire.delay_options(datetime(2026, 12, 1, 10), None)
    aware = datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert wire.delay_options(aware, None) == {"run_at": "2026-12-01T10:00:00+00:00"}


class _RecordingBroker:
    """Stands in for the broker a worker's JobStatus re-sends an early message through."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None]] = []

    def enqueue(self, message, *, delay: int | None = None):
        self.sent.append((message.options[JOB_ID_OPTION], delay))
        return message


def test_a_message_delivered_early_goes_back_to_wait(store: StorageSettings) -> None:
    """Whatever delivers a delayed job's message early (a duplicate sent without the delay,
    a clock ahead), the worker does not start the job: it re-sends it for the time left."""
    coordinator = JobCoordinator(actors.broker, actors.settings)
    job = coordinator.submit_job({"type": "sleep", "delay_secs": 30}).job
    message = actors.broker.get_actor("sleep").message_with_options(**{JOB_ID_OPTION: job.id})
    broker = _RecordingBroker()
    with pytest.raises(SkipMessage):
        JobStatus(RunningJobs()).before_process_message(broker, message)
    ((sent_id, delay),) = broker.sent
    assert sent_id == job.id and 28_000 < delay <= 30_001
    assert coordinator.get_job(job.id).state == "pending"
