"""The job store on SQLite and PostgreSQL: schema versions, transitions, concurrency."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from datetime import timedelta

import peewee
import pytest

from skillq.settings import StorageSettings
from skillq.storage import JobState, bind_database, jobs, open_database
from skillq.storage.database import connection, database_proxy
from skillq.storage.migrations import LATEST_VERSION, MIGRATIONS, downgrade, schema_status, upgrade
from skillq.storage.models import Job, utcnow


def new_job(**overrides: object) -> Job:
    fields = {
        "id": str(uuid.uuid4()),
        "type": "sleep",
        "queue": "default",
        "params": {"seconds": 1},
        "priority": 5,
        "max_retries": 3,
        "expires_at": utcnow() + timedelta(hours=24),
        "owner": "local",
    }
    fields.update(overrides)
    return jobs.insert_job(**fields)


def test_schema_upgrades_downgrades_and_reports_status(store: StorageSettings) -> None:
    status = schema_status()
    assert status.current == LATEST_VERSION and not status.pending
    assert upgrade() == []

    versions = [migration.version for migration in MIGRATIONS]
    assert downgrade(0) == versions[::-1]
    assert schema_status().current == 0
    assert not database_proxy.table_exists("skillq_job")

    assert upgrade() == versions
    assert database_proxy.table_exists("skillq_job")
    with pytest.raises(ValueError, match="between 0 and"):
        upgrade(LATEST_VERSION + 1)


def test_job_lifecycle_round_trips_every_field(store: StorageSettings) -> None:
    job = new_job(params={"nested": {"list": [1, 2.5, None, "x"]}}, trace_id="t-1")
    assert jobs.get_job(job.id).state == JobState.PENDING

    assert jobs.mark_running(job.id, attempt=1, worker_id="host:1")
    assert jobs.set_progress(job.id, 0.5, "half way")
    running = jobs.get_job(job.id)
    assert (running.state, running.progress, running.message) == ("running", 0.5, "half way")
    assert running.worker_id == "host:1" and running.heartbeat_at is not None

    assert jobs.mark_completed(job.id, attempt=1, result={"answer": [42]})
    done = jobs.get_job(job.id)
    assert done.state == JobState.COMPLETED
    assert done.result == {"answer": [42]}
    assert done.params == {"nested": {"list": [1, 2.5, None, "x"]}}
    assert done.completed_at >= done.started_at >= done.created_at
    assert done.trace_id == "t-1"


def test_transitions_only_leave_the_states_they_name(store: StorageSettings) -> None:
    job = new_job()
    assert not jobs.mark_completed(job.id, attempt=1, result=None)  # never ran
    assert jobs.cancel_pending(job.id)
    assert not jobs.mark_running(job.id, attempt=1, worker_id="w")  # cancelled stays cancelled
    assert not jobs.cancel_pending(job.id)
    assert jobs.get_job(job.id).state == JobState.CANCELLED

    assert jobs.reset_for_retry(job.id, expires_at=utcnow() + timedelta(hours=1))
    again = jobs.get_job(job.id)
    assert (again.state, again.attempts) == (JobState.PENDING, 0)


def test_a_superseded_attempt_cannot_overwrite_the_newer_one(store: StorageSettings) -> None:
    job = new_job()
    assert jobs.mark_running(job.id, attempt=1, worker_id="w1")
    # Attempt 2 (a redelivery) took over before attempt 1 reported.
    assert jobs.mark_running(job.id, attempt=2, worker_id="w2")
    assert not jobs.mark_retrying(job.id, attempt=1, error_type="E", error_message="old")
    assert not jobs.mark_failed(job.id, attempt=1, error_type="E", error_message="old")
    assert jobs.mark_failed(job.id, attempt=2, error_type="E", error_message="new")
    assert jobs.get_job(job.id).error_message == "new"


def test_idempotency_key_is_unique_per_owner(store: StorageSettings) -> None:
    new_job(owner="alice", idempotency_key="k")
    new_job(owner="bob", idempotency_key="k")
    new_job(owner="alice")
    new_job(owner="alice")
    with pytest.raises(peewee.IntegrityError), database_proxy.atomic():
        new_job(owner="alice", idempotency_key="k")
    assert jobs.find_by_idempotency_key("alice", "k").owner == "alice"


def test_list_filters_paginates_newest_first(store: StorageSettings) -> None:
    created = [new_job(type="sleep" if i % 2 else "other") for i in range(7)]
    jobs.cancel_pending(created[0].id)
    page = jobs.list_jobs(limit=3)
    assert page.total == 7
    assert [j.id for j in page.jobs] == [j.id for j in reversed(created)][:3]
    assert jobs.list_jobs(types=["sleep"]).total == 3
    assert jobs.list_jobs(states=["cancelled"]).total == 1
    assert len(jobs.list_jobs(limit=5, offset=5).jobs) == 2


def test_position_in_queue_counts_higher_priority_then_older(store: StorageSettings) -> None:
    low = new_job(priority=2)
    first = new_job(priority=5)
    high = new_job(priority=8)
    second = new_job(priority=5)
    assert jobs.position_in_queue(high) == 0
    assert jobs.position_in_queue(first) == 1
    assert jobs.position_in_queue(second) == 2
    assert jobs.position_in_queue(low) == 3


def test_purge_removes_only_expired_terminal_jobs(store: StorageSettings) -> None:
    past = utcnow() - timedelta(seconds=1)
    expired_done = new_job(expires_at=past)
    jobs.cancel_pending(expired_done.id)
    expired_pending = new_job(expires_at=past)
    fresh_done = new_job()
    jobs.cancel_pending(fresh_done.id)
    assert jobs.purge_expired() == 1
    assert jobs.get_job(expired_done.id) is None
    assert jobs.get_job(expired_pending.id) is not None
    assert jobs.get_job(fresh_done.id) is not None


def test_concurrent_cancels_take_effect_exactly_once(store: StorageSettings) -> None:
    job = new_job()
    winners: list[int] = []
    errors: list[BaseException] = []

    def start(attempt: int) -> None:
        # Every thread races to leave `pending`; only one conditional UPDATE can.
        try:
            with connection():
                if jobs.cancel_pending(job.id):
                    winners.append(attempt)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(winners) == 1
    assert jobs.get_job(job.id).state == JobState.CANCELLED


def _insert_many(settings: StorageSettings, count: int) -> None:
    bind_database(open_database(settings.backend, **settings.database_args()))
    for _ in range(count):
        new_job()


def test_many_processes_write_the_store_at_once(store: StorageSettings) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_insert_many, args=(store, 40)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert jobs.list_jobs().total == 160


def test_every_serialised_job_matches_the_documented_schema(store: StorageSettings) -> None:
    """The OpenAPI `Job` schema and `job_to_dict` come from one table; a job in each state,
    with every optional field set, still validates against what the document promises."""
    from jsonschema import Draft202012Validator

    from skillq.jobs.fields import JOB_FIELDS, JOB_SCHEMA, job_to_dict

    validator = Draft202012Validator(JOB_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
    pending = new_job()
    running = new_job()
    assert jobs.mark_running(running.id, worker_id="w-1", attempt=1)
    failed = new_job()
    assert jobs.mark_running(failed.id, worker_id="w-1", attempt=1)
    assert jobs.mark_failed(failed.id, attempt=1, error_type="Boom", error_message="it broke")
    for job in (pending, running, failed):
        shown = job_to_dict(jobs.get_job(job.id), position_in_queue=3)
        assert list(shown) == [field.name for field in JOB_FIELDS]
        assert sorted(validator.iter_errors(shown), key=str) == []
    assert job_to_dict(jobs.get_job(failed.id))["error"] == {"type": "Boom", "message": "it broke"}
