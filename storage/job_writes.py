"""The worker's two writes per job, starting an attempt and finishing it, as SQL written once.

Each is one conditional UPDATE plus its job metrics in one transaction, as in
`storage.jobs`, whose transitions delegate here. What changes is the cost around them: peewee
building an UPDATE took ~0.15 ms of Python per statement, more than SQLite needs to run it,
so the statements are built once per database and column set and only their values bound.

`start_pending` also does the worker's look-up and its transition in one statement: a
pending job (the usual case) starts its next attempt in one UPDATE ... RETURNING instead of a
SELECT and an UPDATE; anything else (a running job being taken over, a duplicate delivery, no
attempts left, a job waiting for its dependencies or for its `scheduled_for`) returns None and
takes the general path in `brokers.job_status`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import peewee

from skillq.storage import job_metrics, prepared
from skillq.storage.database import database_proxy
from skillq.storage.dependencies import JobDependency
from skillq.storage.models import Job, JobState, utcnow

_TABLE = f'"{Job._meta.table_name}"'
_DEPENDENCIES = f'"{JobDependency._meta.table_name}"'


@dataclass(frozen=True)
class Finished:
    """An attempt's outcome, recorded. `has_dependants`: some job's `depends_on` names this
    one, read by the same statement, so that the worker skips looking for dependants to
    release for the usual job, which has none (a query per job: 14 % of a worker's job time
    on PostgreSQL). An edge written after the statement ran is the recovery sweep's."""

    has_dependants: bool


@dataclass(frozen=True)
class StartedAttempt:
    attempt: int
    max_retries: int
    trace_id: str | None


@functools.cache
def _start_sql(p: str) -> str:
    return (
        f"UPDATE {_TABLE} SET state = {p}, attempts = attempts + 1,"
        f" started_at = COALESCE(started_at, {p}), worker_id = {p}, heartbeat_at = {p},"
        " error_type = NULL, error_message = NULL"
        f" WHERE id = {p} AND state = {p} AND attempts <= max_retries"
        # Not one held for its dependencies, nor one whose time has not come: those take the
        # general path, which sends the message back or drops it.
        f" AND NOT waiting AND (scheduled_for IS NULL OR scheduled_for <= {p})"
        " RETURNING attempts, type, created_at, max_retries, trace_id"
    )


@functools.cache
def _start_counted_sql() -> str:
    """PostgreSQL: `_start_sql` and its metrics in one statement (see `_on_postgres`)."""
    waited = "GREATEST(EXTRACT(EPOCH FROM (%s - created_at))::float8, 0)"
    return (
        f"WITH started AS ({_start_sql('%s')}),"
        f" counted AS ({job_metrics.INSERT_SQL}"
        " SELECT type, 'retried', '', %s::smallint, 1, 1.0 FROM started WHERE attempts > 1"
        f" UNION ALL SELECT type, 'wait_seconds', {job_metrics.bucket_sql(waited)},"
        f" %s::smallint, 1, {waited}"
        f" FROM started WHERE attempts = 1 {job_metrics.UPSERT_CONFLICT})"
        " SELECT attempts, type, created_at, max_retries, trace_id FROM started"
    )


def _on_postgres() -> bool:
    """Whether the store runs each statement in its own transaction on a server: there a
    worker's write and its metrics go in one statement, a round trip, instead of the four
    of a transaction (BEGIN, UPDATE, the metrics' upsert, COMMIT); SQLite is in-process,
    where round trips cost nothing and a statement cannot write two tables."""
    return isinstance(database_proxy.obj, peewee.PostgresqlDatabase)


def start_pending(job_id: str, *, worker_id: str) -> StartedAttempt | None:
    """Start the next attempt of `job_id` if it is pending with attempts left; None if not.

    The attempt's number comes from the row (`attempts + 1`), so of two deliveries of the
    same job only one can start it. Counts a retry when the attempt is not the first, and
    the first attempt's wait (since submission), in the same transaction."""
    now = utcnow()
    stamp = Job.started_at.db_value(now)
    values = [JobState.RUNNING.value, stamp, worker_id, stamp, job_id, JobState.PENDING.value]
    values.append(Job.scheduled_for.db_value(now))
    if _on_postgres():
        shard = job_metrics.writer_shard()
        values += [shard, stamp, shard, stamp]
        row = prepared.execute(_start_counted_sql(), values).fetchone()
        if row is None:
            return None
        return StartedAttempt(attempt=row[0], max_retries=row[3], trace_id=row[4])
    with database_proxy.atomic():
        row = database_proxy.execute_sql(_start_sql(database_proxy.param), values).fetchone()
        if row is None:
            return None
        attempt, job_type, created_at, max_retries, trace_id = row
        durations = None
        if attempt == 1:
            created = Job.created_at.python_value(created_at)
            durations = {"wait_seconds": (now - created).total_seconds()}
        job_metrics.record(job_type, "retried" if attempt > 1 else None, durations)
    return StartedAttempt(attempt=attempt, max_retries=max_retries, trace_id=trace_id)


@functools.cache
def _finish_sql(p: str, columns: tuple[str, ...]) -> str:
    sets = ", ".join(f'"{column}" = {p}' for column in columns)
    return (
        f"UPDATE {_TABLE} SET completed_at = {p}, heartbeat_at = NULL, {sets}"
        f" WHERE id = {p} AND state = {p} AND attempts = {p} RETURNING type,"
        f" EXISTS (SELECT 1 FROM {_DEPENDENCIES} WHERE dependency_id = {_TABLE}.id)"
    )


@functools.cache
def _finish_counted_sql(columns: tuple[str, ...], metrics: int) -> str:
    """PostgreSQL: `_finish_sql` and its `metrics` rows in one statement (`_on_postgres`)."""
    rows = ", ".join(["(%s, %s, %s::integer, %s::float8)"] * metrics)
    return (
        f"WITH finished AS ({_finish_sql('%s', columns)} AS has_dependants),"
        f" counted AS ({job_metrics.INSERT_SQL} SELECT finished.type, m.name, m.bucket,"
        f" %s::smallint, m.observations, m.total FROM finished, (VALUES {rows})"
        f" AS m (name, bucket, observations, total) {job_metrics.UPSERT_CONFLICT})"
        " SELECT type, has_dependants FROM finished"
    )


def finish(job_id: str, attempt: int, run_seconds: float | None, **changes: Any) -> Finished | None:
    """End running attempt `attempt` with `changes` (a terminal `state` among them); None if
    the job had left that attempt (nothing written). Counts the outcome and records the
    attempt's run time in the same transaction. worker_id stays: which worker ran a finished
    job is worth keeping."""
    fields = Job._meta.fields
    columns = tuple(sorted(changes))
    values: list[Any] = [Job.completed_at.db_value(utcnow())]
    values += [fields[name].db_value(changes[name]) for name in columns]
    values += [job_id, JobState.RUNNING.value, attempt]
    durations = None if run_seconds is None else {"run_seconds": run_seconds}
    state = JobState(changes["state"]).value
    column_names = tuple(fields[c].column_name for c in columns)
    if _on_postgres():
        metrics = job_metrics.metric_rows(state, durations)
        sql = _finish_counted_sql(column_names, len(metrics))
        values += [job_metrics.writer_shard(), *(value for row in metrics for value in row)]
        rows = prepared.execute(sql, values).fetchall()
        return Finished(has_dependants=bool(rows[0][1])) if len(rows) == 1 else None
    sql = _finish_sql(database_proxy.param, column_names)
    with database_proxy.atomic():
        rows: Sequence[tuple[str, Any]] = database_proxy.execute_sql(sql, values).fetchall()
        if len(rows) != 1:
            return None
        job_metrics.record(rows[0][0], state, durations)
    return Finished(has_dependants=bool(rows[0][1]))
