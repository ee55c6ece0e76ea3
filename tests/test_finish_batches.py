"""The group commit of finish writes (storage.finish_batches) on real stores.

To make threads finish "at the same time" without relying on timing, another connection
holds the store's write lock (SQLite: `BEGIN IMMEDIATE` on the file; PostgreSQL: a SHARE lock
on the job table): the first thread's write waits for it, the others queue behind, and the
test lets go once they all wait.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from skillq.settings import StorageSettings
from skillq.storage import dependencies, job_metrics, job_writes, jobs
from skillq.storage.database import connection, database_proxy
from skillq.storage.finish_batches import FinishBatches
from skillq.storage.job_writes import Finished, FinishWrite
from skillq.storage.models import Job, JobState
from tests.support import wait_for
from tests.test_store import new_job

THREADS = 8


@contextlib.contextmanager
def store_locked(settings: StorageSettings) -> Iterator[Any]:
    """Writes to the job table wait while this is held, as behind another process's; gives
    the connection that holds the lock."""
    if settings.backend == "postgres":
        conn = psycopg2.connect(settings.url)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f'LOCK TABLE "{Job._meta.table_name}" IN SHARE MODE')
            yield conn
        finally:
            conn.rollback()
            conn.close()
        return
    conn = sqlite3.connect(settings.path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
    finally:
        conn.rollback()
        conn.close()


def running_job(**fields: Any) -> Job:
    job = new_job(**fields)
    assert job_writes.start_pending(job.id, worker_id="w:1") is not None
    return job


def finish_together(
    settings: StorageSettings, batches: FinishBatches, writes: list[FinishWrite]
) -> list[Finished | BaseException | None]:
    """Each write from a thread of its own, all queued behind a held lock, then let go."""
    outcomes: list[Finished | BaseException | None] = [None] * len(writes)

    def finish(index: int) -> None:
        with connection():
            try:
                outcomes[index] = batches.finish(writes[index])
            except Exception as error:
                outcomes[index] = error

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(writes))]
    with store_locked(settings):
        for thread in threads:
            thread.start()
        # One leads (its write waits for the lock), the others queue behind it.
        wait_for(lambda: batches.queued == len(writes) - 1, what="the writes to queue")
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def completed(job: Job, attempt: int = 1, **result: Any) -> FinishWrite:
    changes = {"state": JobState.COMPLETED, "result": result or {"id": job.id}, "progress": 1.0}
    return FinishWrite(job.id, attempt, 0.01, changes)


def completed_count(job_type: str = "sleep") -> int:
    return job_metrics.counters().get(("completed", job_type), 0)


def test_jobs_finishing_together_commit_together_each_with_its_own_outcome(
    store: StorageSettings,
) -> None:
    batches = FinishBatches()
    started = [running_job() for _ in range(THREADS)]
    outcomes = finish_together(
        store, batches, [completed(job, n=i) for i, job in enumerate(started)]
    )
    assert all(isinstance(outcome, Finished) for outcome in outcomes), outcomes
    # The leader's own write, then the seven that queued behind it in one transaction.
    assert (batches.writes, batches.transactions) == (THREADS, 2)
    for i, job in enumerate(started):
        row = jobs.get_job(job.id)
        assert (row.state, row.attempts, row.result, row.progress) == (
            "completed",
            1,
            {"n": i},
            1.0,
        )
        assert row.completed_at is not None and row.heartbeat_at is None
    assert completed_count() == THREADS  # each counted once
    histogram = job_metrics.histograms()[("run_seconds", "sleep")]
    assert histogram.count == THREADS


def test_a_finish_for_a_job_that_left_its_attempt_gets_none(store: StorageSettings) -> None:
    batches = FinishBatches()
    started = [running_job() for _ in range(THREADS)]
    late = started[3]
    writes = [completed(job, attempt=2 if job is late else 1) for job in started]
    outcomes = finish_together(store, batches, writes)
    assert outcomes[3] is None
    assert all(isinstance(o, Finished) for i, o in enumerate(outcomes) if i != 3), outcomes
    assert jobs.get_job(late.id).state == "running"
    assert completed_count() == THREADS - 1


def test_a_dependant_is_reported_for_its_own_job_only(store: StorageSettings) -> None:
    batches = FinishBatches()
    started = [running_job() for _ in range(4)]
    dependant = new_job(waiting=True)
    dependencies.add_edges(dependant.id, [(started[2].id, "fail")])
    outcomes = finish_together(store, batches, [completed(job) for job in started])
    assert [o.has_dependants for o in outcomes] == [False, False, True, False]


def poison_results(settings: StorageSettings) -> Callable[[], None]:
    """A trigger refusing a job row whose result is "poison", as a store refuses a bad row;
    returns how to drop it."""
    table = Job._meta.table_name
    if settings.backend == "postgres":
        database_proxy.execute_sql(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.result = '\"poison\"' THEN RAISE EXCEPTION 'poisoned row'; END IF;"
            " RETURN NEW; END $$"
        )
        database_proxy.execute_sql(
            f'CREATE TRIGGER refuse_poison BEFORE UPDATE ON "{table}"'
            " FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
        )
    else:
        database_proxy.execute_sql(
            f'CREATE TRIGGER refuse_poison BEFORE UPDATE ON "{table}"'
            " WHEN NEW.result = '\"poison\"' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        )
    return lambda: database_proxy.execute_sql(f'DROP TRIGGER refuse_poison ON "{table}"')


def test_a_failing_batch_falls_back_and_the_good_rows_still_land(store: StorageSettings) -> None:
    batches = FinishBatches()
    poison_results(store)
    started = [running_job() for _ in range(THREADS)]
    writes = [completed(job) for job in started]
    bad = 5
    changes = {"state": JobState.COMPLETED, "result": "poison", "progress": 1.0}
    writes[bad] = FinishWrite(started[bad].id, 1, 0.01, changes)
    outcomes = finish_together(store, batches, writes)
    assert isinstance(outcomes[bad], Exception) and "poisoned row" in str(outcomes[bad])
    assert all(isinstance(o, Finished) for i, o in enumerate(outcomes) if i != bad), outcomes
    # The bad job is not half-written: still running, its attempt free to be finished again.
    row = jobs.get_job(started[bad].id)
    assert (row.state, row.result, row.completed_at) == ("running", None, None)
    for i, job in enumerate(started):
        if i != bad:
            assert jobs.get_job(job.id).state == "completed"
    assert completed_count() == THREADS - 1
    assert job_metrics.histograms()[("run_seconds", "sleep")].count == THREADS - 1


def test_outcomes_of_different_kinds_in_one_batch(store: StorageSettings) -> None:
    batches = FinishBatches()
    started = [running_job() for _ in range(6)]
    failed = {"state": JobState.FAILED, "error_type": "E", "error_message": "boom"}
    cancelled = {"state": JobState.CANCELLED, "message": "cancelled"}
    writes = [
        completed(started[0]),
        FinishWrite(started[1].id, 1, None, failed),
        completed(started[2]),
        FinishWrite(started[3].id, 1, 0.5, cancelled),
        FinishWrite(started[4].id, 1, 0.5, failed),
        completed(started[5]),
    ]
    outcomes = finish_together(store, batches, writes)
    assert all(isinstance(o, Finished) for o in outcomes), outcomes
    states = [jobs.get_job(job.id).state for job in started]
    assert states == ["completed", "failed", "completed", "cancelled", "failed", "completed"]
    assert jobs.get_job(started[4].id).error_message == "boom"
    counted = job_metrics.counters()
    assert (counted[("completed", "sleep")], counted[("failed", "sleep")]) == (3, 2)
    assert counted[("cancelled", "sleep")] == 1


def test_a_finish_inside_a_transaction_is_written_in_it(store: StorageSettings) -> None:
    batches = FinishBatches()
    job = running_job()
    with connection(), database_proxy.atomic() as transaction:
        assert isinstance(batches.finish(completed(job)), Finished)
        transaction.rollback()
    assert jobs.get_job(job.id).state == "running"
    assert batches.transactions == 0


@pytest.mark.parametrize("threads", [1, 3])
def test_the_process_wide_path_marks_jobs_completed(store: StorageSettings, threads: int) -> None:
    started = [running_job() for _ in range(threads)]
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = []

    def finish(job: Job) -> None:
        with connection():
            barrier.wait()
            outcomes.append(jobs.mark_completed(job.id, attempt=1, result={"ok": True}))

    workers = [threading.Thread(target=finish, args=(job,)) for job in started]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert len(outcomes) == threads and all(isinstance(o, Finished) for o in outcomes)
    assert all(jobs.get_job(job.id).state == "completed" for job in started)
