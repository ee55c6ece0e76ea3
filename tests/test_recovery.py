"""Crash and restart recovery: duplicate deliveries, dead workers, lost messages, shutdown.

The first tests drive the real middleware stack and a real SQLite store in process, on
dramatiq's StubBroker (a unit test of the delivery rules); the rest use real processes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from skillq.brokers.factory import job_middleware
from skillq.brokers.job_status import JOB_ID_OPTION, current_worker_id
from skillq.jobs.recovery import recover_stale_jobs
from skillq.jobs.types import JobTypeOptions
from skillq.settings import Settings, StorageSettings, WorkerSettings
from skillq.storage import jobs
from skillq.storage.database import connection
from skillq.storage.models import Job, utcnow
from tests.reliability import BROKERS, Stack
from tests.support import (
    wait_for,
)

WORKERS = WorkerSettings(max_retries=2, retry_delay_secs=0, heartbeat_secs=0.2, dead_after_secs=2)


@pytest.fixture
def system(store: StorageSettings) -> Iterator[tuple[StubBroker, dramatiq.Actor, list[str]]]:
    """A StubBroker with skillq's middleware, a real store, and an actor recording runs."""
    broker = StubBroker(middleware=[*job_middleware(WORKERS), JobTypeOptions()])
    broker.emit_after("process_boot")
    runs: list[str] = []
    release = threading.Event()

    @dramatiq.actor(
        broker=broker, actor_name="record", queue_name="default", params_schema={"type": "object"}
    )
    def record(label: str, wait: bool = False) -> str:
        runs.append(label)
        if wait:
            release.wait(10)
        return label

    record.release = release  # type: ignore[attr-defined]
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        yield broker, record, runs
    finally:
        release.set()
        worker.stop()
        broker.close()


def _job(state: str = "pending", **fields: object) -> Job:
    with connection():
        job = jobs.insert_job(
            id=str(uuid.uuid4()),
            type="record",
            queue="default",
            params={"label": "resent"},
            priority=5,
            max_retries=2,
            expires_at=utcnow() + timedelta(hours=1),
            owner="local",
        )
        if state != "pending" or fields:
            Job.update(state=state, **fields).where(Job.id == job.id).execute()
        return jobs.get_job(job.id)


def _send(actor: dramatiq.Actor, job: Job, label: str, **kwargs: object) -> None:
    actor.send_with_options(kwargs={"label": label, **kwargs}, **{JOB_ID_OPTION: job.id})


def _reload(job: Job) -> Job:
    with connection():
        return jobs.get_job(job.id)


def test_a_message_of_a_finished_job_is_dropped(system) -> None:
    broker, actor, runs = system
    job = _job()
    _send(actor, job, "first")
    broker.join("default")
    _send(actor, job, "redelivered")
    broker.join("default")
    assert runs == ["first"]
    assert (_reload(job).state, _reload(job).attempts) == ("completed", 1)


def test_a_duplicate_of_a_job_a_live_worker_runs_is_deferred_not_run(
    system, caplog: pytest.LogCaptureFixture
) -> None:
    _, actor, runs = system
    caplog.set_level(logging.INFO, logger="skillq.brokers.job_starts")
    job = _job()
    _send(actor, job, "original", wait=True)
    wait_for(lambda: runs == ["original"], what="the original attempt to start")
    _send(actor, job, "duplicate")
    # The duplicate is put back with a delay while the original runs...
    wait_for(lambda: "Deferring message" in caplog.text, what="the duplicate deferred")
    actor.release.set()  # type: ignore[attr-defined]
    wait_for(lambda: _reload(job).state == "completed", what="the original to finish")
    # ...and dropped when it comes back to a finished job.
    wait_for(lambda: "is completed" in caplog.text, what="the duplicate dropped")
    assert runs == ["original"]
    assert _reload(job).attempts == 1


def test_a_redelivery_takes_over_the_job_of_a_dead_worker(system) -> None:
    broker, actor, runs = system
    # Attempt 1 started on a worker process of this host that no longer exists.
    dead = _job("running", attempts=1, worker_id=f"{current_worker_id()}0", heartbeat_at=utcnow())
    _send(actor, dead, "redelivered")
    broker.join("default")
    job = _reload(dead)
    assert runs == ["redelivered"]
    assert (job.state, job.attempts, job.worker_id) == ("completed", 2, current_worker_id())


def test_a_job_whose_attempts_a_dead_worker_spent_fails_with_worker_lost(system) -> None:
    broker, actor, runs = system
    spent = _job(
        "running", attempts=3, worker_id="elsewhere:1", heartbeat_at=utcnow() - timedelta(minutes=5)
    )
    _send(actor, spent, "too late")
    broker.join("default")
    job = _reload(spent)
    assert runs == []
    assert (job.state, job.error_type) == ("failed", "WorkerLost")


def test_a_run_once_job_of_a_dead_worker_fails_instead_of_running_again(system) -> None:
    broker, _, runs = system

    def charge(label: str) -> None:
        runs.append(label)

    actor = dramatiq.actor(
        charge, broker=broker, actor_name="charge", queue_name="default", run_once=True
    )
    dead = _job("running", attempts=1, worker_id=f"{current_worker_id()}0", heartbeat_at=utcnow())
    _send(actor, dead, "charged twice")
    fresh = _job()
    _send(actor, fresh, "charged once")
    broker.join("default")
    assert runs == ["charged once"]
    job = _reload(dead)
    assert (job.state, job.error_type, job.attempts) == ("failed", "WorkerLost", 1)
    assert "run_once" in job.error_message


def test_an_immediate_retry_follows_on_without_waiting_for_the_failed_attempt(
    system, caplog: pytest.LogCaptureFixture
) -> None:
    broker, _, runs = system
    caplog.set_level(logging.INFO, logger="skillq.brokers.job_starts")

    def flaky(label: str) -> None:
        runs.append(label)
        if len(runs) == 1:
            raise RuntimeError("first attempt fails")

    actor = dramatiq.actor(flaky, broker=broker, actor_name="flaky", queue_name="default")
    job = _job()
    _send(actor, job, "try")
    wait_for(lambda: _reload(job).state == "completed", what="the retry to complete")
    assert runs == ["try", "try"] and _reload(job).attempts == 2
    assert "Deferring" not in caplog.text


def test_recovery_releases_stale_running_jobs_and_resends_lost_pending_ones(system) -> None:
    broker, _, runs = system
    settings = Settings(workers=WorkerSettings(dead_after_secs=2, requeue_pending_after_secs=60))
    old = utcnow() - timedelta(minutes=5)
    stale = _job("running", attempts=1, worker_id="elsewhere:1", heartbeat_at=old)
    spent = _job("running", attempts=3, worker_id="elsewhere:1", heartbeat_at=old)
    cancelled = _job(
        "running", attempts=1, worker_id="elsewhere:1", heartbeat_at=old, cancel_requested_at=old
    )
    lost = _job(created_at=old)
    live = _job("running", attempts=1, worker_id="elsewhere:2", heartbeat_at=utcnow())
    waiting = _job()

    recovery = recover_stale_jobs(settings, broker)

    assert (recovery.released, recovery.failed, recovery.cancelled, recovery.resent) == (1, 1, 1, 1)
    assert (_reload(stale).state, _reload(stale).error_type) == ("pending", "WorkerLost")
    assert (_reload(spent).state, _reload(spent).error_type) == ("failed", "WorkerLost")
    assert _reload(cancelled).state == "cancelled"
    assert _reload(live).state == "running" and _reload(waiting).state == "pending"
    broker.join("default")  # the re-sent message of the lost job runs it
    assert _reload(lost).state == "completed" and runs == ["resent"]
    # A second pass finds nothing: the stale job was just released, not yet lost.
    assert recover_stale_jobs(settings, broker).resent == 0


# --- real processes ---


@pytest.fixture(params=BROKERS)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    running = Stack.create(request.param, tmp_path)
    try:
        running.start_api()
        yield running
    finally:
        running.close()


def test_the_job_of_a_sigkilled_worker_runs_again_on_a_new_one(stack: Stack) -> None:
    worker = stack.start_worker(queue="default")
    job = stack.submit({"type": "sleep", "params": {"seconds": 60, "steps": 600}})
    first = stack.wait_state(job["id"], {"running"})
    wait_for(lambda: (stack.job(job["id"])["progress"] or 0) > 0, what="the job to run")
    stack.kill_worker(worker)
    stack.start_worker(queue="default")
    # The redelivered message takes the job over: attempt 2 on the new worker.
    second = wait_for(
        lambda: (j := stack.job(job["id"]))["attempts"] == 2 and j["state"] == "running" and j,
        timeout=60,
        what="the job to run again",
    )
    assert second["worker_id"] != first["worker_id"]
    assert stack.cancel(job["id"]).status_code == 202
    stack.wait_state(job["id"], {"cancelled"})


def test_workers_are_listed_alive_then_dead_or_stopped(stack: Stack) -> None:
    # One queue each, so that each is one worker process in the registry.
    killed = stack.start_worker(queue="default")
    stopped = stack.start_worker(queue="default")
    listed = wait_for(
        lambda: (w := stack.client.get("/api/v1/workers").json())["counts"]["alive"] == 2 and w,
        what="two live workers",
    )
    row = listed["workers"][0]
    assert {"id", "host", "pid", "queues", "threads", "started_at", "last_beat_at"} <= set(row)
    assert "default" in row["queues"] and row["threads"] == 4
    stack.kill_worker(killed)
    stack.stop_worker(stopped)
    listed = wait_for(
        lambda: (w := stack.client.get("/api/v1/workers").json())["counts"]["dead"] == 1 and w,
        what="the killed worker to be dead",
    )
    assert listed["counts"] == {"alive": 0, "stopped": 1, "dead": 1}


def test_sigterm_lets_a_short_job_finish_and_requeues_a_long_one(tmp_path: Path) -> None:
    """Shutdown does not depend on the broker; the embedded default shows it."""
    stack = Stack.create("sqlite", tmp_path)
    try:
        stack.start_api()
        _stop_gracefully(stack)
    finally:
        stack.close()


def _stop_gracefully(stack: Stack) -> None:
    worker = stack.start_worker(queue="default")
    short = stack.submit({"type": "sleep", "params": {"seconds": 2, "steps": 20}})
    long = stack.submit({"type": "sleep", "params": {"seconds": 120, "steps": 1000}})
    for job in (short, long):
        stack.wait_state(job["id"], {"running"})
    stack.stop_worker(worker)  # grace period: 5 s (shutdown_grace_secs)
    assert stack.job(short["id"])["state"] == "completed"
    requeued = stack.job(long["id"])
    assert requeued["state"] == "pending", requeued
    stack.start_worker(queue="default")
    again = wait_for(
        lambda: (j := stack.job(long["id"]))["state"] == "running" and j, timeout=30, what="rerun"
    )
    assert again["attempts"] == 2
    stack.cancel(long["id"])
    stack.wait_state(long["id"], {"cancelled"})


def test_a_pending_job_survives_an_api_and_worker_restart_on_sqlite(tmp_path: Path) -> None:
    stack = Stack.create("sqlite", tmp_path)
    try:
        stack.start_api()
        worker = stack.start_worker(queue="default")
        blocker = stack.submit({"type": "sleep", "params": {"seconds": 0.5}})
        stack.wait_state(blocker["id"], {"completed"})
        worker.stop()
        stack.workers.remove(worker)
        job = stack.submit({"type": "sleep", "params": {"seconds": 0, "echo": "kept"}})
        stack.stop_api()
        stack.start_api()
        assert stack.job(job["id"])["state"] == "pending"
        stack.start_worker(queue="default")
        done = stack.wait_state(job["id"], {"completed"})
        assert done["result"]["echo"] == "kept" and done["attempts"] == 1
    finally:
        stack.close()


def test_a_job_written_but_never_enqueued_is_resent(tmp_path: Path) -> None:
    """As if the API died between writing the job and enqueueing it."""
    stack = Stack.create("sqlite", tmp_path, requeue_pending_after_secs=1)
    try:
        stack.start_api()
        job = stack.submit({"type": "sleep", "params": {"seconds": 0}})
        with sqlite3.connect(tmp_path / "data" / "broker.db") as broker_db:
            broker_db.execute("DELETE FROM skillq_messages")  # the message never made it
        stack.start_worker()
        done = stack.wait_state(job["id"], {"completed"}, timeout=30)
        assert done["attempts"] == 1
    finally:
        stack.close()
