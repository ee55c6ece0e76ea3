"""The worker's one-statement writes (storage.job_writes) keep the guards of the general path."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from skillq.settings import StorageSettings
from skillq.storage import dependencies, job_metrics, job_writes, jobs
from skillq.storage.database import connection, database_proxy
from skillq.storage.models import Job, utcnow
from tests.test_store import new_job


def test_a_pending_job_starts_once_of_eight_concurrent_deliveries(store: StorageSettings) -> None:
    job = new_job()
    won: list[int] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        with connection():
            barrier.wait()
            started = job_writes.start_pending(job.id, worker_id="w:1")
            if started is not None:
                won.append(started.attempt)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert won == [1]
    row = jobs.get_job(job.id)
    assert (row.state, row.attempts, row.worker_id) == ("running", 1, "w:1")
    assert row.started_at is not None and row.heartbeat_at is not None
    assert job_writes.start_pending(job.id, worker_id="w:2") is None  # running: general path


def test_a_retry_is_counted_and_a_job_without_attempts_left_is_not_started(
    store: StorageSettings,
) -> None:
    job = new_job(max_retries=1)
    assert job_writes.start_pending(job.id, worker_id="w:1").attempt == 1
    assert jobs.mark_retrying(job.id, attempt=1, error_type="E", error_message="boom")
    second = job_writes.start_pending(job.id, worker_id="w:1")
    assert second is not None and second.attempt == 2 and second.max_retries == 1
    assert jobs.get_job(job.id).error_type is None  # the last error clears when it runs
    assert jobs.mark_retrying(job.id, attempt=2, error_type="E", error_message="boom")
    assert job_writes.start_pending(job.id, worker_id="w:1") is None  # 3 > max_retries + 1
    assert jobs.get_job(job.id).state == "pending"
    assert job_metrics.counters()[("retried", "sleep")] == 1


def test_finish_writes_only_the_attempt_it_names(store: StorageSettings) -> None:
    job = new_job()
    job_writes.start_pending(job.id, worker_id="w:1")
    assert not jobs.mark_completed(job.id, attempt=2, result={"late": True})
    assert jobs.mark_completed(job.id, attempt=1, result={"n": 1}, run_seconds=0.01)
    assert not jobs.mark_completed(job.id, attempt=1, result={"n": 2})
    row = jobs.get_job(job.id)
    assert (row.state, row.result, row.progress, row.heartbeat_at) == (
        "completed",
        {"n": 1},
        1.0,
        None,
    )
    assert row.worker_id == "w:1" and row.completed_at is not None
    assert job_metrics.counters()[("completed", "sleep")] == 1
    assert job_metrics.histograms()[("run_seconds", "sleep")].count == 1


def test_finish_says_whether_a_job_names_it_in_depends_on(store: StorageSettings) -> None:
    """Read by the finish statement itself, so the worker looks for dependants to release only
    when there are some."""
    alone, parent, child = new_job(), new_job(), new_job()
    dependencies.add_edges(child.id, [(parent.id, "fail")])
    for job in (alone, parent):
        job_writes.start_pending(job.id, worker_id="w:1")
    assert jobs.mark_completed(alone.id, attempt=1, result=None).has_dependants is False
    assert jobs.mark_failed(
        parent.id, attempt=1, error_type="E", error_message="boom"
    ).has_dependants


def test_a_start_and_a_finish_count_in_the_buckets_their_durations_fall_in(
    store: StorageSettings,
) -> None:
    """On PostgreSQL the metrics ride in the transition's own statement, buckets chosen in
    SQL; both backends must count alike, and a transition that does not happen counts
    nothing."""
    job = new_job()
    Job.update(created_at=utcnow() - timedelta(seconds=3)).where(Job.id == job.id).execute()
    assert job_writes.start_pending(job.id, worker_id="w:1").attempt == 1
    assert job_writes.start_pending(job.id, worker_id="w:2") is None
    assert jobs.mark_completed(job.id, attempt=1, result=None, run_seconds=0.3)
    assert not jobs.mark_completed(job.id, attempt=1, result=None, run_seconds=0.3)

    histograms = job_metrics.histograms()
    waited = histograms[("wait_seconds", "sleep")]
    assert dict(waited.buckets)["2.5"] == 0 and dict(waited.buckets)["5"] == 1
    assert waited.count == 1 and 3.0 <= waited.sum < 4.0
    ran = histograms[("run_seconds", "sleep")]
    assert dict(ran.buckets)["0.25"] == 0 and dict(ran.buckets)["0.5"] == 1
    assert ran.count == 1 and ran.sum == pytest.approx(0.3)
    assert job_metrics.counters() == {("completed", "sleep"): 1}


def test_on_postgresql_the_writes_are_prepared_once_per_connection_and_again_when_lost(
    store: StorageSettings,
) -> None:
    """Prepared statements spare the server a parse and plan per job; a session that lost
    them (a pooler's DISCARD ALL) prepares them again instead of failing the job."""
    if store.backend != "postgres":
        pytest.skip("SQLite runs the statements as text")

    def prepared() -> int:
        cursor = database_proxy.execute_sql(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'skillq_%%'"
        )
        return cursor.fetchone()[0]

    first, second = new_job(), new_job()
    with connection():
        assert job_writes.start_pending(first.id, worker_id="w:1").attempt == 1
        assert jobs.mark_completed(first.id, attempt=1, result={"n": 1})
        assert prepared() == 2
        database_proxy.execute_sql("DISCARD ALL")
        assert job_writes.start_pending(second.id, worker_id="w:1").attempt == 1
        assert jobs.mark_completed(second.id, attempt=1, result=None)
        assert prepared() == 2
    assert [jobs.get_job(job.id).state for job in (first, second)] == ["completed"] * 2
    assert job_metrics.counters() == {("completed", "sleep"): 2}


def test_on_postgresql_a_start_commits_without_waiting_for_the_disk_unless_asked(
    store: StorageSettings,
) -> None:
    """Only the start's own commit skips the flush: not an end, not a start inside a caller's
    transaction, not a store opened with `synchronous_starts`; and the start is committed,
    seen at once by another session."""
    if store.backend != "postgres":
        pytest.skip("SQLite commits every write alike (synchronous=NORMAL)")
    import psycopg2

    from skillq.storage import open_database
    from tests.statement_plans import recorded_statements
    from tests.support import POSTGRES_URL

    def sent(write) -> list[str]:
        with connection(), recorded_statements() as seen:
            write()
        return [sql for sql, _ in seen if "EXECUTE" in sql]

    asynchronous = "SET LOCAL synchronous_commit TO off; EXECUTE "
    job, other, third = new_job(), new_job(), new_job()
    [start] = sent(lambda: job_writes.start_pending(job.id, worker_id="w:1"))
    assert start.startswith(asynchronous)
    watcher = psycopg2.connect(store.url)
    try:
        with watcher.cursor() as cursor:
            cursor.execute("SELECT state, attempts FROM skillq_job WHERE id = %s", [job.id])
            assert cursor.fetchone() == ("running", 1)
    finally:
        watcher.close()
    [end] = sent(lambda: jobs.mark_completed(job.id, attempt=1, result=None))
    assert "synchronous_commit" not in end

    def in_a_transaction() -> None:
        with database_proxy.atomic():
            job_writes.start_pending(other.id, worker_id="w:1")

    [start] = sent(in_a_transaction)
    assert start.startswith("EXECUTE ")
    store_default = database_proxy.obj.synchronous_starts
    database_proxy.obj.synchronous_starts = True
    try:
        [start] = sent(lambda: job_writes.start_pending(third.id, worker_id="w:1"))
    finally:
        database_proxy.obj.synchronous_starts = store_default
    assert start.startswith("EXECUTE ")
    assert [jobs.get_job(j.id).state for j in (other, third)] == ["running"] * 2
    with connection():
        for j in (other, third):
            assert jobs.mark_completed(j.id, attempt=1, result=None)
    # The setting reaches the store the worker opens.
    settings = StorageSettings(backend="postgres", url=POSTGRES_URL, synchronous_starts=True)
    database = open_database(settings.backend, **settings.database_args())
    assert database.synchronous_starts is True
    assert open_database("postgres", url=POSTGRES_URL).synchronous_starts is False
