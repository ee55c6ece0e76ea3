"""Open jobs are found through the `completed_at` index, and a start writes no index (schema
19)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import peewee
import pytest

from skillq.settings import StorageSettings
from skillq.storage import job_history, job_recovery, job_writes, jobs, owner_counts
from skillq.storage.database import database_proxy
from skillq.storage.dependencies import ready_waiting
from skillq.storage.migrations import downgrade, upgrade
from skillq.storage.models import Job, JobState, in_open_state, utcnow
from tests.statement_plans import plan_of, recorded_statements
from tests.store_invariants import ended_exactly_when_closed

#: What a start (`job_writes.start_pending`) writes.
START_COLUMNS = {"state", "attempts", "started_at", "worker_id", "heartbeat_at", "error_type",
                 "error_message"}  # fmt: skip


NEW_JOB = {"type": "sleep", "queue": "default", "params": {}, "priority": 5, "max_retries": 1,
           "expires_at": utcnow() + timedelta(days=1), "owner": "alice"}  # fmt: skip


def new_job(priority: int = 5) -> Job:
    return jobs.insert_job(**dict(NEW_JOB, id=str(uuid.uuid4()), priority=priority))


def on_postgres() -> bool:
    return isinstance(database_proxy.obj, peewee.PostgresqlDatabase)


def indexed_columns() -> set[str]:
    """Every column of the job table that an index covers: its keys, expressions and
    predicates (each stops an update changing the column from being HOT)."""
    if on_postgres():
        sql = (
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index"
            " WHERE indrelid = 'skillq_job'::regclass"
        )
    else:
        sql = "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'skillq_job'"
    definitions = [row[0] or "" for row in database_proxy.execute_sql(sql).fetchall()]
    names = {field.column_name for field in Job._meta.sorted_fields}
    return {name for name in names for text in definitions if re.search(rf"\b{name}\b", text)}


def test_a_start_changes_no_indexed_column(store: StorageSettings) -> None:
    assert not START_COLUMNS & indexed_columns()
    assert "completed_at" in indexed_columns()  # the open jobs' and the history's index


def test_a_start_is_a_heap_only_update_on_postgres(store: StorageSettings) -> None:
    if not on_postgres():
        pytest.skip("HOT updates are PostgreSQL's")
    job = new_job()
    with database_proxy.atomic():
        assert job_writes.start_pending(job.id, worker_id="w:1") is not None
        hot = database_proxy.execute_sql(
            "SELECT pg_stat_get_xact_tuples_updated('skillq_job'::regclass),"
            " pg_stat_get_xact_tuples_hot_updated('skillq_job'::regclass)"
        ).fetchone()
    assert hot == (1, 1)


def test_every_open_job_query_reads_the_open_jobs(store: StorageSettings) -> None:
    """On a table of any size, finding pending or running jobs reads the `completed_at`
    index's NULL entries (the open jobs) or the open jobs' queue index, never the whole table
    nor all of an owner's jobs."""
    ahead, held, running = new_job(priority=9), new_job(), new_job()
    Job.update(waiting=True).where(Job.id == held.id).execute()
    job_writes.start_pending(running.id, worker_id="w:1")
    for _ in range(3):
        done = new_job()
        job_writes.start_pending(done.id, worker_id="w:1")
        jobs.mark_completed(done.id, attempt=1, result=None)
    # Most of a store is ended jobs, most of an owner's too. PostgreSQL plans by statistics
    # (so it learns that); SQLite has none (and must not need them).
    ended = [dict(NEW_JOB, id=str(uuid.uuid4())) for _ in range(2000)]
    with database_proxy.atomic():
        made = jobs.insert_jobs(ended)
        Job.update(state=JobState.COMPLETED, completed_at=utcnow()).where(
            Job.id.in_([job.id for job in made])
        ).execute()
    if on_postgres():
        database_proxy.execute_sql("ANALYZE skillq_job")
    with recorded_statements() as seen:
        found = {
            "lost": job_recovery.lost_pending(timedelta(seconds=-60)),
            "stale": job_recovery.stale_running(timedelta(seconds=-60)),
            "pending of alice": owner_counts.pending_count("alice"),
            "ahead": jobs.position_in_queue(new_job()),
            "ready": ready_waiting(),
            "listed": jobs.list_jobs(states=["pending", "running"]).total,
            "oldest": len(job_history.oldest_pending()),
        }
    # The answers are right, and none counts a completed job: pending are `ahead`, `held`
    # (waiting for its dependencies, so its message is not lost) and, from the position's
    # question on, the job asked about; `running` runs.
    assert [job.id for job in found["lost"]] == [ahead.id]
    assert [job.id for job in found["stale"]] == [running.id]
    assert found["pending of alice"] == 2 and found["ahead"] == 1
    assert found["ready"] == [held.id] and found["listed"] == 4 and found["oldest"] == 1
    queries = [(sql, params) for sql, params in seen if sql.startswith("SELECT")]
    assert len(queries) >= len(found)  # `list_jobs` counts and reads
    for sql, params in queries:
        plan = plan_of(sql, params)
        # A queue position reads the jobs ahead only, in the open jobs' queue order, where
        # nothing tells the planner that the open jobs are few (SQLite has no statistics).
        index = "completed_at_owner_type|skillq_job_queued"
        if "priority >" in sql and not on_postgres():
            index = "skillq_job_queued"
        assert re.search(index, plan), (sql, plan)
        assert not re.search(r"Seq Scan on skillq_job\b|SCAN (skillq_job|t1)\b(?! USING)", plan), (
            sql,
            plan,
        )


def test_open_states_are_checked() -> None:
    with pytest.raises(ValueError, match="not open states"):
        in_open_state(JobState.PENDING, JobState.COMPLETED)
    with pytest.raises(ValueError, match="not open states"):
        in_open_state()


def test_the_row_check_catches_an_open_job_with_an_end_and_an_ended_one_without(
    store: StorageSettings,
) -> None:
    job = new_job()
    Job.update(completed_at=utcnow()).where(Job.id == job.id).execute()
    with pytest.raises(AssertionError, match="disagrees"):
        ended_exactly_when_closed()
    Job.update(state=JobState.FAILED, completed_at=None).where(Job.id == job.id).execute()
    with pytest.raises(AssertionError, match="disagrees"):
        ended_exactly_when_closed()
    Job.update(completed_at=utcnow()).where(Job.id == job.id).execute()
    ended_exactly_when_closed()


def test_schema_19_clears_the_end_of_an_open_job_and_goes_back(store: StorageSettings) -> None:
    downgrade(18)
    assert "state" in indexed_columns() and "started_at" in indexed_columns()
    job = new_job()
    Job.update(completed_at=utcnow()).where(Job.id == job.id).execute()
    assert upgrade() == [19]
    assert Job.get_by_id(job.id).completed_at is None
    assert not START_COLUMNS & indexed_columns()
    assert [row.id for row in job_recovery.lost_pending(timedelta(seconds=-60))] == [job.id]
