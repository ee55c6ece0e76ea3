"""Job queries: every state change is one conditional UPDATE.

A transition names the state it leaves (`WHERE state IN (...)`), so concurrent writers (a
worker finishing a job while a client cancels it, a retry racing its own acknowledgement)
cannot move a job out of a state it has already left; the caller learns from the returned
row count whether its transition happened.

The three queries on the API's hot path (insert, get by id, position in queue) use SQL
written once per database instead of peewee's query builder: building a 23-column
statement costs peewee about 0.2 ms, thirty times what SQLite needs to run it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee

from skillq.json_values import storable_text
from skillq.storage import finish_batches, job_logs, job_metrics
from skillq.storage.database import database_proxy
from skillq.storage.job_writes import Finished
from skillq.storage.models import OPEN_STATES, Job, JobState, in_open_state, utcnow

#: Every column but the job's documents (its params and result).
SUMMARY_COLUMNS = tuple(
    field for field in Job._meta.sorted_fields if field.name not in ("params", "result")
)
WATCHED_COLUMNS = (Job.id, Job.state, Job.attempts, Job.progress, Job.message, Job.owner)


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int


def _placeholder() -> str:
    return database_proxy.param


def _columns() -> list[peewee.Field]:
    return Job._meta.sorted_fields


@functools.cache
def _column_writers() -> list[tuple[str, Callable[[Any], Any]]]:
    """Each column's name and `db_value`, in `_columns()` order. A new row's values are read
    from its `__data__`, not through peewee's field descriptor per column (23 per job): a
    submit's INSERT values in 17 us instead of 26 (best of 200 rounds, load 15)."""
    return [(field.name, field.db_value) for field in _columns()]


def _row_values(job: Job) -> list[Any]:
    data = job.__data__
    return [db_value(data.get(name)) for name, db_value in _column_writers()]


@functools.cache
def _insert_sql(placeholder: str) -> str:
    names = ", ".join(f'"{field.column_name}"' for field in _columns())
    values = ", ".join(placeholder for _ in _columns())
    return f'INSERT INTO "{Job._meta.table_name}" ({names}) VALUES ({values})'


@functools.cache
def _get_sql(placeholder: str) -> str:
    sql, _ = Job.select().where(Job.id == "").sql()
    return sql


def insert_job(**fields: Any) -> Job:
    """Write a new pending job; raises `peewee.IntegrityError` on a duplicate idempotency key."""
    job = Job(state=JobState.PENDING, attempts=0, created_at=utcnow(), **fields)
    database_proxy.execute_sql(_insert_sql(_placeholder()), _row_values(job))
    return job


#: Rows per multi-row INSERT of `insert_jobs`: 23 columns each stay far below SQLite's
#: 32,766 and PostgreSQL's 65,535 bound parameters, and few statement texts are cached.
INSERT_CHUNK_ROWS = 100


@functools.lru_cache(maxsize=16)
def _insert_many_sql(placeholder: str, rows: int) -> str:
    names = ", ".join(f'"{field.column_name}"' for field in _columns())
    row = "(" + ", ".join(placeholder for _ in _columns()) + ")"
    values = ", ".join(row for _ in range(rows))
    return f'INSERT INTO "{Job._meta.table_name}" ({names}) VALUES {values}'


def insert_jobs(rows: list[dict[str, Any]]) -> list[Job]:
    """Write new pending jobs, `INSERT_CHUNK_ROWS` per statement (a batch submit: one
    statement instead of a hundred). Raises `peewee.IntegrityError` on a duplicate
    idempotency key; the caller's transaction keeps all or none."""
    # Each its own `created_at`, in order, so the batch keeps its FIFO order in the queue.
    made = [Job(state=JobState.PENDING, attempts=0, created_at=utcnow(), **row) for row in rows]
    for start in range(0, len(made), INSERT_CHUNK_ROWS):
        chunk = made[start : start + INSERT_CHUNK_ROWS]
        values = [value for job in chunk for value in _row_values(job)]
        database_proxy.execute_sql(_insert_many_sql(_placeholder(), len(chunk)), values)
    return made


def get_job(job_id: str) -> Job | None:
    rows = list(Job.raw(_get_sql(_placeholder()), job_id))
    return rows[0] if rows else None


def find_by_idempotency_key(owner: str, key: str) -> Job | None:
    return Job.get_or_none((Job.owner == owner) & (Job.idempotency_key == key))


def find_by_idempotency_keys(owner: str, keys: list[str]) -> dict[str, Job]:
    """The owner's jobs named by these idempotency keys (one query), by key."""
    query = Job.select().where((Job.owner == owner) & Job.idempotency_key.in_(keys))
    return {job.idempotency_key: job for job in query}


def list_jobs(
    *,
    states: Iterable[str] = (),
    types: Iterable[str] = (),
    owner: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> JobPage:
    """Newest first, as an operator scanning recent work expects.

    The rows carry every column but `params` and `result` (None here): a page of a hundred
    jobs each holding a large document would cost a hundred documents per listing."""
    query = Job.select(*SUMMARY_COLUMNS)
    states, types = list(states), list(types)
    if states and all(state in OPEN_STATES for state in states):
        query = query.where(in_open_state(*(JobState(state) for state in states)))
    elif states:
        query = query.where(Job.state.in_(states))
    if types:
        query = query.where(Job.type.in_(types))
    if owner is not None:
        query = query.where(Job.owner == owner)
    total = query.count()
    rows = list(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset))
    return JobPage(jobs=rows, total=total)


def get_progress(job_id: str) -> Job | None:
    """The columns a watcher polls (state, attempt, progress, message), never the documents."""
    return Job.select(*WATCHED_COLUMNS).where(Job.id == job_id).first()


def count_by_type_queue_state(owner: str | None = None) -> list[tuple[str, str, str, int]]:
    """`(type, queue, state, count)` for every combination present, in one grouped query."""
    query = Job.select(Job.type, Job.queue, Job.state, peewee.fn.COUNT(Job.id))
    if owner is not None:
        query = query.where(Job.owner == owner)
    query = query.group_by(Job.type, Job.queue, Job.state)
    return [tuple(row) for row in query.tuples()]


def position_in_queue(job: Job, *, now: datetime | None = None) -> int:
    """How many pending jobs of the same queue run before this one (priority, then FIFO).

    Delayed jobs whose time has not come are in no one's way, so they are not counted. Two
    counts, each one range of the queued-jobs index (queue, priority, created_at of the open
    jobs, schema 19): the jobs ahead are read, not every open job."""
    p = _placeholder()
    ahead = (
        f'SELECT COUNT(*) FROM "{Job._meta.table_name}" WHERE completed_at IS NULL'
        f" AND queue = {p} AND state = {p} AND NOT waiting"
        f" AND (scheduled_for IS NULL OR scheduled_for <= {p}) AND"
    )
    sql = f"SELECT ({ahead} priority > {p}) + ({ahead} priority = {p} AND created_at < {p})"
    common = [job.queue, JobState.PENDING.value, Job.scheduled_for.db_value(now or utcnow())]
    created_at = Job.created_at.db_value(job.created_at)
    params = [*common, job.priority, *common, job.priority, created_at]
    return database_proxy.execute_sql(sql, params).fetchone()[0]


def _counted(
    query: peewee.ModelUpdate,
    counter: str | None,
    durations: dict[str, float] | None = None,
) -> bool:
    """Run a transition and, if it happened, count it and record its durations
    (`storage.job_metrics`) in the same transaction: a counter never misses or repeats a
    transition. Two statements: the UPDATE returns the job's type, one upsert adds."""
    if counter is None and not durations:
        return query.execute() == 1
    with database_proxy.atomic():
        changed = list(query.returning(Job.type).tuples().execute())
        if len(changed) != 1:
            return False
        job_metrics.record(changed[0][0], counter, durations)
    return True


def _seconds(name: str, value: float | None) -> dict[str, float] | None:
    return None if value is None else {name: value}


def _transition(job_id: str, from_states: Iterable[str], **changes: Any) -> bool:
    query = Job.update(**changes).where((Job.id == job_id) & (Job.state.in_(list(from_states))))
    return query.execute() == 1


def mark_running(
    job_id: str, *, attempt: int, worker_id: str, wait_seconds: float | None = None
) -> bool:
    """Start attempt number `attempt`, which must follow the last one begun; `wait_seconds`
    (how long the job waited for it) goes to the job metrics.

    `running` is allowed as a source so that a message redelivered after its worker died can
    take over the job; the `attempts` guard lets only one of two concurrent deliveries win."""
    now = utcnow()
    query = Job.update(
        state=JobState.RUNNING,
        attempts=attempt,
        started_at=peewee.fn.COALESCE(Job.started_at, now),
        worker_id=worker_id,
        heartbeat_at=now,
        error_type=None,
        error_message=None,
    ).where((Job.id == job_id) & (Job.state.in_(list(OPEN_STATES))) & (Job.attempts == attempt - 1))
    # A retry is counted when it starts, whichever way it came: a failed attempt's retry (it
    # may start before the failure is recorded), or a lost worker's job run again.
    counter = "retried" if attempt > 1 else None
    return _counted(query, counter, _seconds("wait_seconds", wait_seconds))


def mark_completed(
    job_id: str, *, attempt: int, result: Any, run_seconds: float | None = None
) -> Finished | None:
    """`run_seconds`, the attempt's run time, here and below goes to the job metrics."""
    changes = {"state": JobState.COMPLETED, "result": result, "progress": 1.0}
    return _finish(job_id, attempt, run_seconds, **changes)


def _error(error_type: str, error_message: str) -> dict[str, str]:
    """An error as both stores hold it: an exception's text may carry NUL or lone
    surrogates (a tool's stderr, a file name), which PostgreSQL refuses and SQLite stores
    but cannot hand back; and a failure that cannot be recorded leaves its job running."""
    return {"error_type": storable_text(error_type), "error_message": storable_text(error_message)}


def mark_failed(
    job_id: str,
    *,
    attempt: int,
    error_type: str,
    error_message: str,
    run_seconds: float | None = None,
) -> Finished | None:
    changes = {"state": JobState.FAILED, **_error(error_type, error_message)}
    return _finish(job_id, attempt, run_seconds, **changes)


def mark_retrying(
    job_id: str,
    *,
    attempt: int,
    error_type: str,
    error_message: str,
    run_seconds: float | None = None,
) -> bool:
    """Back to pending after a failed attempt; the last error stays visible until it runs."""
    query = Job.update(
        state=JobState.PENDING,
        **_error(error_type, error_message),
        worker_id=None,
        heartbeat_at=None,
        enqueued_at=utcnow(),
    ).where((Job.id == job_id) & (Job.state == JobState.RUNNING) & (Job.attempts == attempt))
    # The retry is counted when it starts (see `mark_running`); this attempt's run time now.
    return _counted(query, None, _seconds("run_seconds", run_seconds))


def mark_cancelled(
    job_id: str, *, attempt: int, run_seconds: float | None = None
) -> Finished | None:
    """A running attempt stopped because a client cancelled the job."""
    return _finish(job_id, attempt, run_seconds, state=JobState.CANCELLED, message="cancelled")


def fail_unfinished(job_id: str, *, attempt: int, error_type: str, error_message: str) -> bool:
    """Fail a job whose last attempt (`attempt`) never finished and may not be run again."""
    return _transition_from_attempt(
        job_id,
        attempt,
        state=JobState.FAILED,
        **_error(error_type, error_message),
        completed_at=utcnow(),
        heartbeat_at=None,
    )


def cancel_unfinished(job_id: str, *, attempt: int) -> bool:
    """Cancel a job whose worker died after the client asked to cancel it."""
    return _transition_from_attempt(
        job_id, attempt, state=JobState.CANCELLED, completed_at=utcnow(), heartbeat_at=None
    )


def _transition_from_attempt(job_id: str, attempt: int, **changes: Any) -> bool:
    query = Job.update(**changes).where(
        (Job.id == job_id) & (Job.state.in_(list(OPEN_STATES))) & (Job.attempts == attempt)
    )
    return _counted(query, changes["state"].value)


def cancel_requested_among(job_ids: Iterable[str]) -> list[str]:
    """Which of these running jobs a client has asked to cancel (one indexed lookup)."""
    ids = list(job_ids)
    if not ids:
        return []
    query = Job.select(Job.id).where(
        Job.id.in_(ids) & (Job.state == JobState.RUNNING) & Job.cancel_requested_at.is_null(False)
    )
    return [row.id for row in query]


def _finish(
    job_id: str, attempt: int, run_seconds: float | None, **changes: Any
) -> Finished | None:
    # The attempt guard keeps a slow, superseded attempt from overwriting a newer one; the
    # write commits with those other threads of the process make at the same time.
    return finish_batches.finish(job_id, attempt, run_seconds, **changes)


def mark_enqueue_failed(job_id: str, error_message: str) -> bool:
    """The broker refused the message: the job can never run, so it must not stay pending."""
    query = Job.update(
        state=JobState.FAILED,
        **_error("EnqueueError", error_message),
        completed_at=utcnow(),
    ).where((Job.id == job_id) & (Job.state == JobState.PENDING))
    return _counted(query, "failed")


def set_progress(job_id: str, progress: float | None, message: str | None) -> bool:
    changes: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None and not 0.0 <= progress <= 1.0:
        progress = None  # NaN or out of range: it would poison every read of the job
    if progress is not None:
        changes["progress"] = progress
    if message is not None:
        changes["message"] = storable_text(message)
    return _transition(job_id, (JobState.RUNNING,), **changes)


def cancel_pending(job_id: str) -> bool:
    query = Job.update(state=JobState.CANCELLED, completed_at=utcnow(), waiting=False).where(
        (Job.id == job_id) & (Job.state == JobState.PENDING)
    )
    return _counted(query, "cancelled")


def request_cancel(job_id: str) -> bool:
    """Mark a running job for cancellation; the worker side interrupts it and ends it
    `cancelled`. A repeated request keeps the first time."""
    return _transition(
        job_id,
        (JobState.RUNNING,),
        cancel_requested_at=peewee.fn.COALESCE(Job.cancel_requested_at, utcnow()),
    )


def reset_for_retry(job_id: str, *, expires_at: datetime) -> bool:
    """An explicit retry of a failed or cancelled job: a fresh start with a fresh TTL."""
    return _transition(
        job_id,
        (JobState.FAILED, JobState.CANCELLED),
        state=JobState.PENDING,
        attempts=0,
        progress=None,
        message=None,
        result=None,
        error_type=None,
        error_message=None,
        started_at=None,
        completed_at=None,
        worker_id=None,
        heartbeat_at=None,
        cancel_requested_at=None,
        enqueued_at=utcnow(),
        expires_at=expires_at,
    )


def purge_expired(now: datetime | None = None) -> int:
    """Delete terminal jobs past their TTL; active jobs are never purged."""
    now = now or utcnow()
    terminal = [s.value for s in JobState if s.is_terminal]
    expired = (Job.expires_at < now) & (Job.state.in_(terminal))
    with database_proxy.atomic():
        # A job's log goes with it (the foreign key cascades as well).
        job_logs.delete_for_jobs(Job.select(Job.id).where(expired))
        return Job.delete().where(expired).execute()
