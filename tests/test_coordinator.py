"""The jobs coordinator and the progress middleware, in process, on real brokers."""

from __future__ import annotations

import uuid

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from skillq import actors
from skillq.actors.diagnostics import SLEEP_PARAMS
from skillq.brokers.factory import job_middleware
from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.brokers.progress import JobProgress, report_progress
from skillq.brokers.running import RunningJobs
from skillq.errors import Conflict, InvalidParams, NotFound, ServiceUnavailable
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.types import JobTypeOptions
from skillq.storage import JobState, jobs
from skillq.storage.database import connection


@pytest.fixture
def coordinator() -> JobCoordinator:
    return JobCoordinator(actors.broker, actors.settings)


def test_refused_enqueue_fails_the_job_instead_of_leaving_it_pending() -> None:
    # A real Redis broker on a port where nothing listens: enqueue raises.
    unreachable = RedisBroker(
        url="redis://127.0.0.1:1/0",
        middleware=[*job_middleware(actors.settings.workers), JobTypeOptions()],
    )
    dramatiq.actor(
        lambda **params: None, broker=unreachable, actor_name="sleep", params_schema=SLEEP_PARAMS
    )
    coordinator = JobCoordinator(unreachable, actors.settings)
    before = jobs_total()
    with pytest.raises(ServiceUnavailable):
        coordinator.submit_job({"type": "sleep"})
    with connection():
        page = jobs.list_jobs(limit=1)
    assert page.total == before + 1
    job = page.jobs[0]
    assert job.state == JobState.FAILED
    assert job.error_type == "EnqueueError"


def jobs_total() -> int:
    with connection():
        return jobs.list_jobs(limit=1).total


def test_cancel_only_pending_jobs(coordinator: JobCoordinator) -> None:
    job = coordinator.submit_job({"type": "sleep"}).job
    assert coordinator.cancel_job(job.id).state == JobState.CANCELLED
    with pytest.raises(Conflict, match="only a pending or running job"):
        coordinator.cancel_job(job.id)
    with pytest.raises(NotFound):
        coordinator.cancel_job(str(uuid.uuid4()))


def test_other_owners_jobs_are_not_found(coordinator: JobCoordinator) -> None:
    job = coordinator.submit_job({"type": "sleep"}, owner="alice").job
    assert coordinator.get_job(job.id, owner="alice").id == job.id
    assert coordinator.get_job(job.id).id == job.id
    with pytest.raises(NotFound):
        coordinator.get_job(job.id, owner="bob")


def test_retry_requeues_a_cancelled_job_with_a_fresh_start(coordinator: JobCoordinator) -> None:
    actors.broker.flush_all()
    job = coordinator.submit_job({"type": "sleep", "params": {"seconds": 0}}).job
    with pytest.raises(Conflict, match="only failed or cancelled"):
        coordinator.retry_job(job.id)
    coordinator.cancel_job(job.id)
    retried = coordinator.retry_job(job.id)
    assert (retried.state, retried.attempts) == (JobState.PENDING, 0)

    consumer = actors.broker.consume("default", prefetch=10, timeout=100)
    delivered = []
    for _ in range(20):
        message = next(consumer)
        if message is not None:
            delivered.append(message.options[JOB_ID_OPTION])
            consumer.ack(message)
    consumer.close()
    assert delivered.count(job.id) == 2  # the first submission and the retry


def test_idempotency_key_returns_the_existing_job(coordinator: JobCoordinator) -> None:
    first = coordinator.submit_job({"type": "sleep", "idempotency_key": "nightly-1"})
    again = coordinator.submit_job({"type": "sleep", "idempotency_key": "nightly-1"})
    other = coordinator.submit_job({"type": "sleep", "idempotency_key": "nightly-1"}, owner="x")
    assert first.created and not again.created and other.created
    assert again.job.id == first.job.id != other.job.id


def test_list_filters_are_validated(coordinator: JobCoordinator) -> None:
    with pytest.raises(InvalidParams) as error:
        coordinator.list_jobs(states=["done"], limit=101, offset=-1)
    assert [d["path"] for d in error.value.details] == ["state", "limit", "offset"]


def test_progress_writes_are_throttled_and_the_last_value_is_kept(
    coordinator: JobCoordinator,
) -> None:
    job = coordinator.submit_job({"type": "sleep"}).job
    with connection():
        assert jobs.mark_running(job.id, attempt=1, worker_id="test")
    middleware = JobProgress(min_interval_secs=3600)
    message = dramatiq.Message(
        queue_name="default",
        actor_name="sleep",
        args=(),
        kwargs={},
        options={JOB_ID_OPTION: job.id},
    )
    running = RunningJobs()
    running.start(job.id, message, attempt=1)  # what JobStatus does once the job is running
    middleware.before_process_message(actors.broker, message)
    with connection():
        for step in range(1, 1001):
            report_progress(step / 1000, f"step {step}")
        stored = jobs.get_job(job.id)
        assert (stored.progress, stored.message) == (0.001, "step 1")  # one write, then throttled
        middleware.after_process_message(actors.broker, message)
        running.finish(job.id)
        stored = jobs.get_job(job.id)
        assert (stored.progress, stored.message) == (1.0, "step 1000")
        report_progress(0.5, "after the job")  # outside a job: nowhere
        assert jobs.get_job(job.id).progress == 1.0
    with pytest.raises(ValueError, match=r"between 0\.0 and 1\.0"):
        report_progress(1.5)
