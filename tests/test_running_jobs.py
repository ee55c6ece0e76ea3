"""The worker's one list of running jobs, and the worker's settings for the jobs it runs.

In process: `RunningJobs` itself, then skillq's whole middleware stack on dramatiq's
StubBroker with a real store (cancel hooks, heartbeats, time limits).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import SimpleNamespace

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from skillq.brokers.cancellation import Cancellation, JobCancelled, raise_if_cancelled
from skillq.brokers.factory import job_middleware
from skillq.brokers.job_status import CANCELLED_OPTION, JOB_ID_OPTION, JobStatus, time_limit
from skillq.brokers.progress import current_job_id, report_progress
from skillq.brokers.running import RunningJob, RunningJobs, current_job
from skillq.brokers.worker_registry import WorkerRegistry
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.types import JobTypeOptions
from skillq.settings import Settings, StorageSettings, WorkerSettings
from skillq.storage import Job, jobs, workers
from skillq.storage.database import connection
from skillq.storage.models import utcnow
from tests.support import wait_for


def _message(job_id: str) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name="default", actor_name="a", args=(), kwargs={}, options={JOB_ID_OPTION: job_id}
    )


def _in_thread(fn: Callable[[], object]) -> object:
    """`fn()`, run in a thread of its own (another worker thread)."""
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(fn()))
    thread.start()
    thread.join()
    return box[0]


def test_a_job_belongs_to_the_thread_that_started_it() -> None:
    running = RunningJobs()
    job = running.start("a", _message("a"), attempt=2)
    assert (current_job(), current_job_id()) == (job, "a")
    assert (job.attempt, job.thread_id) == (2, threading.get_ident())
    assert _in_thread(current_job) is None  # another worker thread runs no job

    # A skipped duplicate delivery of the same job, on another thread, lets go of nothing.
    _in_thread(lambda: running.finish("a"))
    assert running.get("a") is job and running.snapshot() == [job]

    running.finish("a")
    assert (running.get("a"), current_job(), len(running)) == (None, None, 0)
    running.finish("a")  # twice is harmless


def test_a_job_a_thread_left_behind_is_over_when_it_starts_the_next() -> None:
    running = RunningJobs()
    running.start("cut-short", _message("cut-short"), attempt=1)  # its finish never ran
    running.start("next", _message("next"), attempt=1)
    assert [job.job_id for job in running.snapshot()] == ["next"]
    running.finish("next")


def test_cancel_hooks_count_only_inside_their_block() -> None:
    job = RunningJob("a", _message("a"), attempt=1, thread_id=threading.get_ident())
    killed: list[str] = []
    with job.on_cancel(lambda: killed.append("tool")):
        assert len(job.cancel_hooks()) == 1
        for hook in job.cancel_hooks():
            hook()
    assert job.cancel_hooks() == [] and killed == ["tool"]
    with pytest.raises(RuntimeError), job.on_cancel(lambda: None):
        raise RuntimeError("the block fails")
    assert job.cancel_hooks() == []


def test_the_cooperative_check_reads_the_jobs_flag() -> None:
    running = RunningJobs()
    job = running.start("a", _message("a"), attempt=1)
    try:
        raise_if_cancelled()
        report_progress(0.5)  # no progress writer: nothing written, nothing raised
        job.message.options[CANCELLED_OPTION] = True
        with pytest.raises(JobCancelled, match="job a was cancelled"):
            report_progress(0.6)
    finally:
        running.finish("a")
    raise_if_cancelled()  # outside a job
    report_progress(0.7)


def test_the_middleware_of_one_stack_share_one_running_jobs() -> None:
    stack = job_middleware(WorkerSettings())
    shared = {
        id(m.running) for m in stack if isinstance(m, (JobStatus, WorkerRegistry, Cancellation))
    }
    assert len(shared) == 1
    other = job_middleware(WorkerSettings())
    assert not shared & {id(m.running) for m in other if isinstance(m, JobStatus)}


def test_only_the_catalogue_declares_the_job_type_options() -> None:
    declared = {name for m in job_middleware(WorkerSettings()) for name in m.actor_options}
    assert not declared & {"params_schema", "description", "params_check"}
    status = next(m for m in job_middleware(WorkerSettings()) if isinstance(m, JobStatus))
    assert status.actor_options == {"run_once"}
    broker = StubBroker(middleware=job_middleware(WorkerSettings()))
    with pytest.raises(ValueError, match="params_schema"):
        dramatiq.actor(lambda: None, broker=broker, actor_name="t", params_schema={})
    broker.add_middleware(JobTypeOptions())
    dramatiq.actor(lambda: None, broker=broker, actor_name="t", params_schema={})


# -- the whole stack, on a StubBroker and a real store ------------------------------------

WORKER = WorkerSettings(
    max_retries=0, retry_delay_secs=0, heartbeat_secs=0.1, dead_after_secs=5, job_timeout_secs=1
)
#: The API's file says otherwise; the worker's settings must win.
API = Settings(workers=WorkerSettings(job_timeout_secs=3600, max_retries=0))


class Stack:
    def __init__(self, broker: StubBroker, release: threading.Event) -> None:
        self.broker = broker
        self.release = release
        self.coordinator = JobCoordinator(broker, API)
        self.running = next(m.running for m in broker.middleware if isinstance(m, JobStatus))

    def submit(self, job_type: str, **params: object) -> str:
        return self.coordinator.submit_job({"type": job_type, "params": params}).job.id

    def job(self, job_id: str) -> Job:
        with connection():
            return jobs.get_job(job_id)

    def wait_state(self, job_id: str, *states: str) -> Job:
        return wait_for(
            lambda: (job := self.job(job_id)).state in states and job, what=f"{job_id} {states}"
        )


@pytest.fixture
def stack(store: StorageSettings) -> Iterator[Stack]:
    broker = StubBroker(middleware=[*job_middleware(WORKER), JobTypeOptions()])
    broker.emit_after("process_boot")
    release = threading.Event()
    schema = {"type": "object"}

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=schema)
    def blocked() -> str:
        # A wait no thread exception can cut short; only the cancel hook ends it.
        job = current_job()
        assert job is not None
        with job.on_cancel(release.set):
            release.wait(30)
        return "released"

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=schema)
    def busy(seconds: float = 30) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return "done"

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=schema, time_limit=3_600_000)
    def own_limit(seconds: float = 1) -> str:
        return busy.fn(seconds)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        yield Stack(broker, release)
    finally:
        release.set()
        worker.stop()
        broker.close()


def test_cancel_calls_the_hook_the_job_registered(stack: Stack) -> None:
    job_id = stack.submit("blocked")
    wait_for(lambda: stack.running.get(job_id), what="the job to run")
    with connection():
        assert jobs.request_cancel(job_id)
    job = stack.wait_state(job_id, "cancelled", "completed", "failed")
    assert (job.state, job.attempts, job.result) == ("cancelled", 1, None)
    assert stack.release.is_set()  # it was the hook that ended the wait
    wait_for(lambda: stack.running.get(job_id) is None, what="the job to leave the list")


def test_the_heartbeat_lists_the_running_job_and_forgets_it_after(stack: Stack) -> None:
    registry = next(m for m in stack.broker.middleware if isinstance(m, WorkerRegistry))
    assert registry.running is stack.running
    job_id = stack.submit("blocked")

    def beat() -> list[str]:
        with connection():
            return workers.Worker.get_by_id(registry.worker_id).running_jobs

    wait_for(lambda: beat() == [job_id], what="the beat to carry the job")
    stack.release.set()
    stack.wait_state(job_id, "completed")
    wait_for(lambda: beat() == [], what="the beat to drop the job")


def test_a_queued_job_follows_the_time_limit_of_the_worker_that_runs_it(stack: Stack) -> None:
    job_id = stack.submit("busy", seconds=30)
    job = stack.wait_state(job_id, "failed", "completed")
    assert job.error_type == "TimeLimitExceeded"
    assert job.error_message == "the job ran past its time limit of 1 s"  # not the API's 3600


def test_a_job_types_own_time_limit_beats_the_workers(stack: Stack) -> None:
    # Past the worker's 1 s (its TimeLimit looks once a second), well within its own hour.
    job_id = stack.submit("own_limit", seconds=3)
    assert stack.wait_state(job_id, "failed", "completed").state == "completed"


def test_the_time_limit_is_the_messages_then_the_actors_then_the_workers() -> None:
    broker = StubBroker(middleware=job_middleware(WORKER))
    plain = dramatiq.actor(lambda: None, broker=broker, actor_name="plain")
    typed = dramatiq.actor(lambda: None, broker=broker, actor_name="typed", time_limit=7000)
    assert time_limit(broker, plain.message()) == 1000
    assert time_limit(broker, typed.message()) == 7000
    assert time_limit(broker, typed.message_with_options(time_limit=300)) == 300
    unknown = dramatiq.Message(
        queue_name="default", actor_name="gone", args=(), kwargs={}, options={}
    )
    assert time_limit(broker, unknown) == 1000


def test_a_queued_message_carries_no_time_limit(store: StorageSettings) -> None:
    broker = StubBroker(middleware=[*job_middleware(WORKER), JobTypeOptions()])
    dramatiq.actor(lambda: None, broker=broker, actor_name="typed", params_schema={})
    job = JobCoordinator(broker, API).submit_job({"type": "typed"}).job
    message = dramatiq.Message.decode(broker.queues["default"].get(timeout=1))
    assert message.options[JOB_ID_OPTION] == job.id
    assert "time_limit" not in message.options


def test_a_shutdown_releases_running_jobs_but_not_one_recording_its_outcome(
    store: StorageSettings,
) -> None:
    running = RunningJobs()
    registry = WorkerRegistry(running, heartbeat_secs=1, dead_after_secs=5)
    ids = []
    with connection():
        for _ in range(2):
            job = jobs.insert_job(
                id=str(uuid.uuid4()),
                type="busy",
                queue="default",
                params={},
                priority=5,
                max_retries=0,
                expires_at=utcnow() + timedelta(hours=1),
                owner="local",
            )
            assert jobs.mark_running(job.id, attempt=1, worker_id=registry.worker_id)
            ids.append(job.id)
    stuck, returning = (
        _in_thread(lambda job_id=job_id: running.start(job_id, _message(job_id), attempt=1))
        for job_id in ids
    )
    returning.finishing = True  # what Cancellation's after-hook marks first

    registry.after_worker_shutdown(StubBroker(), None)  # type: ignore[arg-type]

    with connection():
        assert jobs.get_job(stuck.job_id).state == "pending"  # the broker redelivers it
        assert jobs.get_job(returning.job_id).state == "running"  # its outcome is on the way
        assert jobs.mark_completed(returning.job_id, attempt=1, result=None)


def test_a_slow_recovery_pass_does_not_hold_back_the_beats(store: StorageSettings) -> None:
    """Were recovery on the beat thread, a pass longer than `dead_after_secs` would make the
    other workers' passes take this live worker's jobs for a dead one's and run them again."""
    in_pass, end_pass = threading.Event(), threading.Event()

    def slow_pass() -> None:
        in_pass.set()
        end_pass.wait(30)

    registry = WorkerRegistry(
        RunningJobs(), heartbeat_secs=0.05, dead_after_secs=60, recover=slow_pass
    )
    worker = SimpleNamespace(worker_threads=1, consumer_whitelist=["default"])

    def last_beat() -> object:
        with connection():
            return workers.Worker.get_by_id(registry.worker_id).last_beat_at

    registry.after_worker_boot(StubBroker(), worker)  # type: ignore[arg-type]
    try:
        assert in_pass.wait(10), "no recovery pass at boot"
        during = last_beat()
        wait_for(lambda: last_beat() > during, timeout=10, what="a beat during the slow pass")
        assert not end_pass.is_set() and in_pass.is_set()
    finally:
        end_pass.set()
        registry.after_worker_shutdown(StubBroker(), None)  # type: ignore[arg-type]
    with connection():
        assert workers.Worker.get_by_id(registry.worker_id).stopped_at is not None
