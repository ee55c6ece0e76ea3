"""Job logs: kept per job in the store (bounded, the tail kept, purged with the job), written
by the worker's `JobLogs` middleware, read over REST (paged, and followed as SSE), by the CLI
and by the MCP tool `job_logs`, with the job's owner rules everywhere.

In process on both stores (the `store` fixture), then through real API and worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dramatiq
import httpx
import jwt
import pytest
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient
from typer.testing import CliRunner

from skillq import actors
from skillq.api.app import create_app
from skillq.api.mcp.immediate import IMMEDIATE_TOOLS
from skillq.api.principal import Principal
from skillq.brokers.factory import job_middleware
from skillq.brokers.job_logs import write_job_log
from skillq.cli.main import app as cli_app
from skillq.engine.bubblewrap import Isolation
from skillq.engine.sandbox import run_tool
from skillq.errors import InvalidParams, NotFound
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.types import JobTypeOptions
from skillq.settings import AuthSettings, JwtSettings, Settings, StorageSettings, WorkerSettings
from skillq.storage import job_logs, jobs
from skillq.storage.database import connection
from skillq.storage.job_logs import LogEntry
from skillq.storage.models import Job, JobLogLine, utcnow
from tests.support import (
    api_with_worker,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    wait_for,
)
from tests.test_stream import parse_sse

SECRET = "job-logs-secret-" + "z" * 32


def new_job(owner: str = "alice", **overrides: object) -> Job:
    fields: dict = {
        "id": str(uuid.uuid4()),
        "type": "sleep",
        "queue": "default",
        "params": {},
        "priority": 5,
        "max_retries": 0,
        "expires_at": utcnow() + timedelta(hours=1),
        "owner": owner,
    }
    fields.update(overrides)
    with connection():
        return jobs.insert_job(**fields)


def entry(text: str, source: str = "log", level: str = "INFO") -> LogEntry:
    return LogEntry(utcnow(), source, level, text)


def append(job_id: str, *texts: str, max_bytes: int = 1 << 20) -> None:
    with connection():
        job_logs.append(job_id, [entry(text) for text in texts], max_bytes=max_bytes)


def texts(job_id: str, since: int = 0) -> list[str]:
    with connection():
        return [line.text for line in job_logs.read(job_id, since=since).lines]


# -- the store -----------------------------------------------------------------------------


def test_lines_are_numbered_and_paged_with_since(store: StorageSettings) -> None:
    job = new_job()
    append(job.id, "one", "two")
    append(job.id, "three")  # a second writer reads where the log ends
    with connection():
        first = job_logs.read(job.id, limit=2)
        rest = job_logs.read(job.id, since=first.next_since)
        after = job_logs.read(job.id, since=rest.next_since)
    assert [(line.seq, line.text) for line in first.lines] == [(1, "one"), (2, "two")]
    assert (first.next_since, [line.seq for line in rest.lines], rest.next_since) == (2, [3], 3)
    assert (after.lines, after.next_since) == ([], 3)  # nothing new: the cursor stays


def test_the_log_is_bounded_and_keeps_the_tail(store: StorageSettings) -> None:
    job = new_job()
    cursor = None
    with connection():
        for n in range(50):
            cursor = job_logs.append(job.id, [entry(f"line {n:03}")], max_bytes=40, cursor=cursor)
        kept = job_logs.read(job.id).lines
    # "line NNN" is 8 bytes: five fit in 40, and they are the last five.
    assert [line.text for line in kept] == [f"line {n:03}" for n in range(45, 50)]
    assert [line.seq for line in kept] == [46, 47, 48, 49, 50]
    assert sum(line.size for line in kept) <= 40 and cursor.kept_bytes == 40
    # One line longer than the whole bound keeps its end.
    append(job.id, "x" * 30 + "END" + "y" * 30, max_bytes=40)
    assert texts(job.id) == ["x" * 7 + "END" + "y" * 30]


def test_hostile_text_is_stored_so_that_it_reads_back(store: StorageSettings) -> None:
    job = new_job()
    append(job.id, "nul\x00here", "lone \ud800 surrogate", "é ok", "z" * 100_000)
    nul, surrogate, fine, long = texts(job.id)
    assert (nul, surrogate, fine) == ("nul\ufffdhere", "lone \ufffd surrogate", "é ok")
    assert len(long) <= job_logs.MAX_LINE_CHARS and "characters cut" in long
    assert long.startswith("zzz") and long.endswith("zzz")


def test_logs_are_purged_with_their_job(store: StorageSettings) -> None:
    expired = new_job(expires_at=utcnow() - timedelta(seconds=1))
    with connection():
        assert jobs.cancel_pending(expired.id)
    kept = new_job()
    append(expired.id, "old")
    append(kept.id, "new")
    with connection():
        assert jobs.purge_expired() == 1
        assert not JobLogLine.select().where(JobLogLine.job == expired.id).exists()
    assert texts(kept.id) == ["new"]
    # The foreign key cascades on its own too, for any other way a job row goes.
    append(kept.id, "more")
    with connection():
        Job.delete().where(Job.id == kept.id).execute()
        assert JobLogLine.select().count() == 0


def test_lines_of_a_job_that_is_gone_are_refused(store: StorageSettings) -> None:
    import peewee

    with connection(), pytest.raises(peewee.IntegrityError):
        job_logs.append(str(uuid.uuid4()), [entry("orphan")], max_bytes=1024)


# -- the worker's middleware ---------------------------------------------------------------

WORKER = WorkerSettings(max_retries=0, retry_delay_secs=0, heartbeat_secs=0.1, dead_after_secs=5)
job_logger = logging.getLogger("tests.job_logs.actor")
job_logger.setLevel(logging.INFO)


@dataclasses.dataclass
class Worker:
    coordinator: JobCoordinator
    release: threading.Event

    def run(self, job_type: str, **params: object) -> str:
        return self.coordinator.submit_job({"type": job_type, "params": params}).job.id

    def wait_state(self, job_id: str, *states: str) -> Job:
        return wait_for(
            lambda: (job := self.coordinator.get_job(job_id)).state in states and job,
            what=f"{job_id} {states}",
        )


@pytest.fixture
def worker(store: StorageSettings) -> Iterator[Worker]:
    middleware = job_middleware(WORKER, max_log_bytes=4096)
    broker = StubBroker(middleware=[*middleware, JobTypeOptions()])
    release = threading.Event()
    schema = {"type": "object"}

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=schema)
    def chatty_failure() -> None:
        job_logger.info("starting %s", "work")
        job_logger.debug("below the level: not kept")
        logging.getLogger("dramatiq.test").warning("dramatiq's own: not kept")
        threading.Thread(target=lambda: job_logger.warning("another thread: not kept")).start()
        write_job_log("a tool line", source="tool")
        raise ValueError("it went wrong")

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=schema)
    def slow_talker() -> str:
        job_logger.info("before the wait")
        release.wait(30)
        job_logger.info("after the wait")
        return "done"

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=schema)
    def flood() -> None:
        for n in range(2000):
            job_logger.info("flood %04d %s", n, "x" * 40)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        yield Worker(JobCoordinator(broker, Settings(workers=WORKER)), release)
    finally:
        release.set()
        worker.stop()
        broker.close()


def test_a_failed_job_keeps_its_log_records_and_its_traceback(worker: Worker) -> None:
    job_id = worker.run("chatty_failure")
    worker.wait_state(job_id, "failed")
    _, page = worker.coordinator.read_logs(job_id)
    lines = [(line.source, line.level, line.text) for line in page.lines]
    assert lines[:2] == [("log", "INFO", "starting work"), ("tool", "INFO", "a tool line")]
    source, level, error = lines[2]
    assert (source, level, len(lines)) == ("error", "ERROR", 3)
    assert error.startswith("attempt 1 failed:\nTraceback (most recent call last):")
    assert 'in chatty_failure\n    raise ValueError("it went wrong")' in error
    assert error.endswith("ValueError: it went wrong")


def test_a_running_job_s_lines_are_written_before_it_ends(worker: Worker) -> None:
    job_id = worker.run("slow_talker")
    wait_for(lambda: texts(job_id) == ["before the wait"], what="the first line in the store")
    assert worker.coordinator.get_job(job_id).state == "running"
    worker.release.set()
    worker.wait_state(job_id, "completed")
    # Complete as soon as the job is: the last line was written before the outcome.
    assert texts(job_id) == ["before the wait", "after the wait"]


def test_a_flood_of_lines_keeps_only_the_tail(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = worker.run("flood")
    worker.wait_state(job_id, "completed")
    assert not [r.message for r in caplog.records if r.name == "skillq.brokers.job_logs"]
    with connection():
        kept = job_logs.read(job_id).lines
    assert sum(line.size for line in kept) <= 4096
    assert kept[-1].text == "flood 1999 " + "x" * 40
    # The tail, whole: the last lines, none missing (lines over the bound are dropped
    # while they wait in memory too, so the numbers need not start where the flood did).
    expected = [f"flood {n:04} " + "x" * 40 for n in range(2000 - len(kept), 2000)]
    assert [line.text for line in kept] == expected and len(kept) < 2000


# -- the sandbox hands on stderr lines ----------------------------------------------------

TALKING_TOOL = """
import json, sys, time
task = json.load(sys.stdin)
print("first line", file=sys.stderr, flush=True)
print("PROGRESS 0.5 half way", file=sys.stderr, flush=True)
deadline = time.time() + 60
while task.get("wait_for") and time.time() < deadline:
    try:
        open(task["wait_for"]).close()
        break
    except OSError:
        time.sleep(0.05)
print("second line", file=sys.stderr, flush=True)
print("PROGRESS not-a-number", file=sys.stderr, flush=True)
sys.stderr.write("no newline at the end")
if task.get("fail"):
    sys.exit(3)
json.dump({"ok": True}, sys.stdout)
"""


def talking_skill(root: Path) -> Path:
    folder = root / "talker"
    folder.mkdir(parents=True)
    (folder / "talk.py").write_text(textwrap.dedent(TALKING_TOOL))
    (folder / "skill.toml").write_text(
        'name = "talker"\n[[tools]]\nname = "talk"\n'
        'command = ["{python}", "{skill_dir}/talk.py"]\ntimeout_secs = 120\n'
    )
    return root


def test_the_sandbox_passes_on_every_stderr_line_but_progress(tmp_path: Path) -> None:
    script = talking_skill(tmp_path) / "talker" / "talk.py"
    logged: list[str] = []
    progress: list[tuple] = []
    run_tool(
        [__import__("sys").executable, str(script)],
        {},
        timeout_secs=30,
        isolation=Isolation("process"),
        on_log=logged.append,
        on_progress=lambda *update: progress.append(update),
    )
    assert logged == ["first line", "second line", "PROGRESS not-a-number", "no newline at the end"]
    assert progress == [(0.5, "half way")]


# -- REST, CLI and MCP, in process ---------------------------------------------------------


def bearer(subject: str, role: str = "viewer") -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": subject, "roles": [role], "iss": "skillq", "aud": "skillq-api"}
    token = jwt.encode({**claims, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(store: StorageSettings) -> Iterator[TestClient]:
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET))
    settings = dataclasses.replace(actors.settings, auth=auth)
    settings = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, stream_poll_secs=0.05)
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_rest_pages_a_job_s_log(client: TestClient) -> None:
    job = new_job("alice")
    append(job.id, "one", "two", "three")
    url = f"/api/v1/jobs/{job.id}/logs"
    first = client.get(url, params={"limit": 2}, headers=bearer("alice")).json()
    assert [line["text"] for line in first["lines"]] == ["one", "two"]
    assert (first["job_id"], first["state"], first["next_since"]) == (job.id, "pending", 2)
    assert set(first["lines"][0]) == {"seq", "at", "source", "level", "text"}
    rest = client.get(url, params={"since": 2}, headers=bearer("alice")).json()
    assert [(line["seq"], line["text"]) for line in rest["lines"]] == [(3, "three")]
    assert client.get(url, headers=bearer("root", "admin")).status_code == 200
    for bad in [{"since": -1}, {"since": 2**31}, {"since": "x"}, {"limit": 0}, {"limit": 1001}]:
        response = client.get(url, params=bad, headers=bearer("alice"))
        assert response.status_code == 422, (bad, response.text)


def test_another_owner_s_job_logs_are_not_found(client: TestClient) -> None:
    job = new_job("alice")
    append(job.id, "secret")
    logs, stream = f"/api/v1/jobs/{job.id}/logs", f"/api/v1/jobs/{job.id}/logs/stream"
    assert client.get(logs, headers=bearer("alice")).status_code == 200
    for path in [logs, stream]:
        response = client.get(path, headers=bearer("bob"))
        assert response.status_code == 404, (path, response.text)
        assert "secret" not in response.text
        missing = path.replace(job.id, str(uuid.uuid4()))
        assert client.get(missing, headers=bearer("alice")).status_code == 404
        assert client.get(path).status_code == 401


def test_the_stream_follows_new_lines_and_ends_with_the_job(client: TestClient) -> None:
    job = new_job("alice")
    append(job.id, "already there")
    with connection():
        assert jobs.mark_running(job.id, attempt=1, worker_id="w")

    def later() -> None:
        time.sleep(0.3)
        append(job.id, "while it runs")
        time.sleep(0.3)
        append(job.id, "last words")
        with connection():
            jobs.mark_completed(job.id, attempt=1, result=None)

    writer = threading.Thread(target=later)
    writer.start()
    url = f"/api/v1/jobs/{job.id}/logs/stream"
    with client.stream("GET", url, headers=bearer("alice")) as response:
        assert response.status_code == 200
        events = list(parse_sse(response.iter_lines()))
    writer.join()
    lines = [(event.id, event.data["text"]) for event in events if event.event == "line"]
    assert lines == [("1", "already there"), ("2", "while it runs"), ("3", "last words")]
    assert (events[-1].event, events[-1].data) == ("end", {"state": "completed"})
    # Resuming after line 2 (Last-Event-ID, or ?since=) sends only what follows.
    for headers, params in [({"Last-Event-ID": "2"}, {}), ({}, {"since": 2})]:
        with client.stream(
            "GET", url, headers={**bearer("alice"), **headers}, params=params
        ) as response:
            resumed = list(parse_sse(response.iter_lines()))
        assert [event.data.get("text") for event in resumed] == ["last words", None]


def test_cli_prints_a_log_and_follows_it(store: StorageSettings) -> None:
    job = new_job("alice")
    append(job.id, "printed")
    runner = CliRunner()
    printed = runner.invoke(cli_app, ["jobs", "logs", job.id])
    assert printed.exit_code == 0, printed.output
    assert printed.output.rstrip().endswith("INFO printed")
    with connection():
        jobs.mark_running(job.id, attempt=1, worker_id="w")

    def later() -> None:
        time.sleep(0.7)
        append(job.id, "followed")
        with connection():
            jobs.mark_failed(job.id, attempt=1, error_type="E", error_message="m")

    writer = threading.Thread(target=later)
    writer.start()
    followed = runner.invoke(cli_app, ["jobs", "logs", job.id, "-f"])
    writer.join()
    assert followed.exit_code == 0, followed.output
    assert [line.split(" ", 2)[2] for line in followed.output.splitlines()] == [
        "printed",
        "followed",
    ]
    since = runner.invoke(cli_app, ["jobs", "logs", job.id, "--since", "1"])
    assert since.output.splitlines()[0].endswith("INFO followed")
    missing = runner.invoke(cli_app, ["jobs", "logs", str(uuid.uuid4())])
    assert missing.exit_code != 0


def test_mcp_job_logs_tool_reads_pages_with_owner_rules(store: StorageSettings) -> None:
    job = new_job("alice")
    append(job.id, "one", "two")
    coordinator = JobCoordinator(actors.broker, actors.settings)
    tool = IMMEDIATE_TOOLS["job_logs"]
    alice = Principal("alice", frozenset({"viewer"}), "jwt")
    bob = Principal("bob", frozenset({"viewer"}), "jwt")
    page = tool(coordinator, alice, {"job_id": job.id})
    assert [line["text"] for line in page["lines"]] == ["one", "two"]
    assert tool(coordinator, alice, {"job_id": job.id, "since": 1})["lines"][0]["seq"] == 2
    with pytest.raises(NotFound):
        tool(coordinator, bob, {"job_id": job.id})
    with pytest.raises(InvalidParams):
        tool(coordinator, alice, {"job_id": job.id, "since": -1})


# -- through real API and worker processes ------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_skill_job_s_stderr_is_kept_and_followed_live(tmp_path: Path, backend: str) -> None:
    skills = talking_skill(tmp_path / "skills")
    go = tmp_path / "go"
    sections: dict = {
        "server": {"data_dir": str(tmp_path / "data"), "stream_poll_secs": 0.05},
        "skills": {"paths": [str(skills)], "sandbox": "process"},
    }
    schema = None
    if backend == "postgres":
        require_service("postgres")
        schema = create_postgres_schema()
        sections["storage"] = {"backend": "postgres", "url": postgres_schema_url(schema)}
    try:
        seen, page = _follow_a_talking_job(tmp_path, sections, go)
    finally:
        if schema:
            drop_postgres_schema(schema)

    assert seen[:4] == [
        ("tool", "first line"),
        ("tool", "second line"),
        ("tool", "PROGRESS not-a-number"),
        ("tool", "no newline at the end"),
    ]
    source, error = seen[4]
    assert source == "error" and "ToolCrashed: the tool exited with status 3" in error
    assert "Traceback (most recent call last)" in error
    assert seen[5:] == [("end", "failed")]
    assert [line["text"] for line in page["lines"]][:2] == ["first line", "second line"]
    assert all("half way" not in line["text"] for line in page["lines"])
    assert page["state"] == "failed"


def _follow_a_talking_job(tmp_path: Path, sections: dict, go: Path) -> tuple[list, dict]:
    with api_with_worker(tmp_path, sections) as url, httpx.Client(base_url=url) as http:
        params = {"skill": "talker", "tool": "talk", "input": {"wait_for": str(go), "fail": True}}
        job = http.post("/api/v1/jobs", json={"type": "execute_skill", "params": params}).json()
        seen: list[tuple[str, str]] = []
        with http.stream("GET", f"/api/v1/jobs/{job['id']}/logs/stream", timeout=60) as stream:
            for event in parse_sse(stream.iter_lines()):
                if event.event == "line":
                    seen.append((event.data["source"], event.data["text"]))
                    if event.data["text"] == "first line":
                        go.touch()  # only now may the tool go on: the line came live
                else:
                    seen.append((event.event, event.data["state"]))
        page = http.get(f"/api/v1/jobs/{job['id']}/logs").json()
    return seen, page
