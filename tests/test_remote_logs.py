"""A remote worker's job logs, in process on each store: the worker collects what a local
worker keeps (log records of the job's thread, tool lines, the error) and posts it in
batches, the last before its outcome; the server appends it under the local bound, only
from the lease holder, and refuses garbage with 4xx, never 500."""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.brokers.job_logs import write_job_log
from skillq.brokers.progress import report_progress
from skillq.client.worker import WorkerClient
from skillq.errors import Conflict, InvalidParams
from skillq.jobs import remote_logs, remote_reports
from skillq.jobs.remote_reports import MAX_LOG_LINES
from skillq.jobs.remote_runner import RemoteRunner
from skillq.settings import StorageSettings
from skillq.storage import job_logs, jobs, worker_tokens
from skillq.storage.database import connection
from skillq.storage.job_logs import MAX_LINE_CHARS, LogEntry
from skillq.storage.models import utcnow
from tests.support import LOCAL_URL, wait_for

job_logger = logging.getLogger("tests.remote_logs.actor")
job_logger.setLevel(logging.INFO)


def _running_job(worker_id: str, type_: str = "remote_talker") -> str:
    """A job whose attempt 1 `worker_id` holds, as a fetch leaves it."""
    job_id = str(uuid.uuid4())
    with connection():
        jobs.insert_job(
            id=job_id,
            type=type_,
            queue="default",
            params={},
            priority=5,
            max_retries=0,
            expires_at=utcnow() + timedelta(hours=1),
            owner="alice",
        )
        assert jobs.mark_running(job_id, attempt=1, worker_id=worker_id)
    return job_id


def _remote_worker(name: str) -> tuple[worker_tokens.RemoteWorker, str]:
    with connection():
        token, secret = worker_tokens.create_token(name, ["default"], [])
        worker = worker_tokens.register_worker(
            token.name, queues=["default"], capabilities=[], skills=None
        )
    return worker, secret


def _kept(job_id: str) -> list[tuple[str, str, str]]:
    with connection():
        return [(line.source, line.level, line.text) for line in job_logs.read(job_id).lines]


def test_only_the_lease_holder_appends_and_the_log_keeps_its_bounded_tail(
    store: StorageSettings,
) -> None:
    holder, _ = _remote_worker("holder")
    other, _ = _remote_worker("other")
    job_id = _running_job(holder.id)
    lines = [LogEntry(utcnow(), "log", "INFO", f"line {n:03}") for n in range(50)]
    with connection():
        with pytest.raises(Conflict):
            remote_reports.append_logs(other, job_id, 1, lines[:1], 1024)
        with pytest.raises(Conflict):
            remote_reports.append_logs(holder, job_id, 2, lines[:1], 1024)
        for line in lines:
            remote_reports.append_logs(holder, job_id, 1, [line], 40)
    # "line NNN" is 8 bytes: five fit in 40, the last five, as for a local worker.
    assert [text for _, _, text in _kept(job_id)] == [f"line {n:03}" for n in range(45, 50)]


def test_a_report_s_times_are_iso_8601_read_as_utc() -> None:
    lines = [
        {"at": "2026-11-30T10:00:00Z", "source": "log", "level": "INFO", "text": "a"},
        {"at": "2026-11-30T11:00:00+01:00", "source": "tool", "level": "INFO", "text": "b"},
        {"at": "2026-11-30T10:00:00", "source": "error", "level": "ERROR", "text": "c"},
    ]
    assert {entry.at.isoformat() for entry in remote_reports.log_entries(lines)} == {
        "2026-11-30T10:00:00"
    }
    bad = [dict(lines[0], at=at) for at in ["yesterday", "0001-01-01T00:00:00+01:00"]]
    with pytest.raises(InvalidParams) as refused:
        remote_reports.log_entries(bad)
    assert [d["path"] for d in refused.value.details] == ["body.lines.0.at", "body.lines.1.at"]


def test_batches_stay_under_the_line_and_byte_bounds() -> None:
    entries = [LogEntry(utcnow(), "custom", "INFO", "x" * 100) for _ in range(2500)]
    lines = [remote_logs.line_of(entry) for entry in entries]
    assert lines[0]["source"] == "log"  # a source the server does not know
    sizes = [len(batch) for batch in remote_logs.batches(lines, 1 << 30)]
    assert sizes == [MAX_LOG_LINES, MAX_LOG_LINES, 500]
    small = list(remote_logs.batches(lines[:100], 2000))
    assert sum(map(len, small)) == 100 and max(map(len, small)) < 20
    huge = remote_logs.line_of(LogEntry(utcnow(), "tool", "INFO", "\ud800" + "y" * 10**5))
    assert len(huge["text"]) <= MAX_LINE_CHARS and huge["text"].startswith("\ufffd")


@pytest.fixture
def api(store: StorageSettings) -> Iterator[TestClient]:
    jobs_settings = dataclasses.replace(actors.settings.jobs, max_log_bytes=2048)
    server = dataclasses.replace(actors.settings.server, max_body_size=256 * 1024)
    settings = dataclasses.replace(actors.settings, jobs=jobs_settings, server=server)
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        yield client


def _register(api: TestClient, name: str) -> tuple[str, dict[str, str]]:
    _, secret = _remote_worker(name)
    headers = {"Authorization": f"Bearer {secret}"}
    answer = api.post("/api/v1/workers/register", json={}, headers=headers)
    assert answer.status_code == 201, answer.text
    assert (answer.json()["max_log_bytes"], answer.json()["max_body_size"]) == (2048, 262144)
    return answer.json()["worker_id"], headers


def test_the_logs_route_appends_for_the_holder_and_refuses_the_rest(api: TestClient) -> None:
    holder, as_holder = _register(api, "holder")
    intruder, as_intruder = _register(api, "intruder")
    job_id = _running_job(holder)
    url = f"/api/v1/jobs/{job_id}/logs"
    line = {"at": "2026-11-30T10:00:00Z", "source": "tool", "level": "INFO", "text": "hi\x00"}
    report = {"worker_id": holder, "attempt": 1, "lines": [line]}
    answer = api.post(url, json=report, headers=as_holder)
    assert answer.status_code == 204, answer.text
    forged = dict(report, worker_id=intruder, lines=[dict(line, text="forged")])
    assert api.post(url, json=forged, headers=as_intruder).status_code == 409
    assert api.post(url, json=forged, headers=as_holder).status_code == 404  # not its worker
    assert api.post(url, json=report).status_code == 401
    # Readers and remote workers share the path; a 405 names both methods.
    refused = api.request("OPTIONS", url)
    assert refused.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in refused.headers["allow"].split(",")}
    missing = f"/api/v1/jobs/{uuid.uuid4()}/logs"
    assert api.post(missing, json=report, headers=as_holder).status_code == 404
    garbage = [
        [],
        "hi",
        [dict(line, source="stdout")],
        [dict(line, text="x" * (MAX_LINE_CHARS + 1))],
        [dict(line, at="not a time")],
        [dict(line, at="9999-12-31T23:59:59-01:00")],
        [dict(line, extra=1)],
        [{"text": "no time"}],
        [line] * (MAX_LOG_LINES + 1),
    ]
    for lines in garbage:
        refused = api.post(url, json=dict(report, lines=lines), headers=as_holder)
        assert refused.status_code == 422, (lines, refused.text)
    too_big = [dict(line, text="z" * 16_000)] * 20  # 320 kB: over the 256 kB limit
    assert api.post(url, json=dict(report, lines=too_big), headers=as_holder).status_code == 413
    json_type = {**as_holder, "content-type": "application/json"}
    assert api.post(url, content=b"{", headers=json_type).status_code == 400
    assert _kept(job_id) == [("tool", "INFO", "hi\ufffd")]
    # The local bound (`jobs.max_log_bytes`, 2048 here) keeps the tail.
    tail = [dict(line, text=f"{n:04} " + "t" * 95) for n in range(30)]
    assert api.post(url, json=dict(report, lines=tail), headers=as_holder).status_code == 204
    kept = [text for _, _, text in _kept(job_id)]
    assert len(kept) == 20 and kept[-1].startswith("0029 ") and kept[0].startswith("0010 ")


@dataclasses.dataclass
class Runner:
    runner: RemoteRunner
    release: threading.Event

    def lease(self, job_type: str) -> tuple[str, dict]:
        """A job of `job_type` leased to this worker, and its assignment, as a fetch hands
        them out."""
        job_id = _running_job(self.runner.client.worker_id, job_type)
        assignment = {
            "job_id": job_id,
            "attempt": 1,
            "max_attempts": 1,
            "queue": "default",
            "type": job_type,
            "args": [],
            "kwargs": {},
            "owner": "alice",
            "time_limit_ms": None,
        }
        return job_id, assignment


@pytest.fixture
def runner(api: TestClient) -> Iterator[Runner]:
    """A remote worker's runner in this process, its client speaking to the in-process API."""
    broker = StubBroker()
    release = threading.Event()

    @dramatiq.actor(broker=broker, actor_name="remote_talker", queue_name="default")
    def remote_talker() -> None:
        job_logger.info("starting %s", "work")
        report_progress(0.5, "half")
        write_job_log("a tool line", source="tool")
        raise ValueError("it went wrong")

    @dramatiq.actor(broker=broker, actor_name="remote_waiter", queue_name="default")
    def remote_waiter() -> None:
        job_logger.info("before the wait")
        release.wait(30)
        job_logger.info("after the wait")

    _, secret = _remote_worker("runner")
    client = WorkerClient(LOCAL_URL, secret)
    client.http.close()
    client.http = api  # the in-process API, with the worker token
    api.headers["Authorization"] = f"Bearer {secret}"
    remote = RemoteRunner(client, broker)
    remote.max_log_bytes = client.register()["max_log_bytes"]
    remote.logs.flush_secs = 0.05
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    httpx_logger.setLevel(logging.INFO)  # its request lines are logged in the job's thread
    try:
        yield Runner(remote, release)
    finally:
        release.set()
        httpx_logger.setLevel(level)
        remote.logs.stop()
        broker.close()


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
def test_a_remote_worker_s_job_log_is_complete_when_its_outcome_is_recorded(
    runner: Runner,
) -> None:
    """The runner's own HTTP calls (progress from the job's thread) stay out of the log."""
    job_id, assignment = runner.lease("remote_talker")
    runner.runner._run(assignment)
    with connection():
        job = jobs.get_job(job_id)
    assert (job.state, job.progress) == ("failed", 0.5)
    lines = _kept(job_id)
    assert lines[:2] == [("log", "INFO", "starting work"), ("tool", "INFO", "a tool line")]
    source, level_name, error = lines[2]
    assert (source, level_name, len(lines)) == ("error", "ERROR", 3), lines
    assert error.startswith("attempt 1 failed:\nTraceback (most recent call last):")
    assert error.endswith("ValueError: it went wrong")


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
def test_a_running_remote_job_s_lines_reach_the_store_before_it_ends(runner: Runner) -> None:
    job_id, assignment = runner.lease("remote_waiter")
    thread = threading.Thread(target=runner.runner._run, args=(assignment,))
    thread.start()
    try:
        wait_for(lambda: _kept(job_id) == [("log", "INFO", "before the wait")], what="a line")
        with connection():
            assert jobs.get_job(job_id).state == "running"
    finally:
        runner.release.set()
        thread.join(30)
    with connection():
        assert jobs.get_job(job_id).state == "completed"
    assert [text for _, _, text in _kept(job_id)] == ["before the wait", "after the wait"]
