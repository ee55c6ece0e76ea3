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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    the first attempt's wait (since submission), in the same transaction.

    On PostgreSQL the commit does not wait for the disk unless the store says so
    (`storage.synchronous_starts`; why that is safe: `storage.database._PostgresStore`)."""
    now = utcnow()
    stamp = Job.started_at.db_value(now)
    values = [JobState.RUNNING.value, stamp, worker_id, stamp, job_id, JobState.PENDING.value]
    values.append(Job.scheduled_for.db_value(now))
    if _on_postgres():
        shard = job_metrics.writer_shard()
        values += [shard, stamp, shard, stamp]
        asynchronous = not getattr(database_proxy.obj, "synchronous_starts", True)
        cursor = prepared.execute(_start_counted_sql(), values, asynchronous_commit=asynchronous)
        row = cursor.fetchone()
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


@dataclass(frozen=True)
class FinishWrite:
    """One attempt's end, as its thread asks for it: `changes` holds a terminal `state`.
    `completed_at` is taken when the thread asks, not when a batch it joined is written."""

    job_id: str
    attempt: int
    run_seconds: float | None
    changes: Mapping[str, Any]
    completed_at: datetime = field(default_factory=utcnow)

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns it sets besides the guards': writes with the same go in one statement."""
        return tuple(sorted(self.changes))


def _changed_values(write: FinishWrite) -> list[Any]:
    fields = Job._meta.fields
    return [fields[name].db_value(write.changes[name]) for name in write.columns]


def _finish_values(write: FinishWrite) -> list[Any]:
    """`_finish_sql`'s values for `write`: its end time, its changes, then the guards'."""
    values = [Job.completed_at.db_value(write.completed_at), *_changed_values(write)]
    return [*values, write.job_id, JobState.RUNNING.value, write.attempt]


def _column_names(columns: tuple[str, ...]) -> tuple[str, ...]:
    fields = Job._meta.fields
    return tuple(fields[name].column_name for name in columns)


def _durations(write: FinishWrite) -> dict[str, float] | None:
    return None if write.run_seconds is None else {"run_seconds": write.run_seconds}


def finish_one(write: FinishWrite) -> Finished | None:
    """End running attempt `write.attempt` with `write.changes` (a terminal `state` among
    them), in its own transaction (one statement on PostgreSQL); None if the job had left
    that attempt (nothing written). Counts the outcome and records the attempt's run time in
    the same transaction. worker_id stays: which worker ran a finished job is worth keeping."""
    values = _finish_values(write)
    durations = _durations(write)
    state = JobState(write.changes["state"]).value
    column_names = _column_names(write.columns)
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


def finish_many(writes: Sequence[FinishWrite]) -> list[Finished | None]:
    """`finish_one` of several `writes` of distinct jobs that set the same columns, in one
    transaction, their metrics added up in one upsert: each one's outcome, in their order.
    One statement on PostgreSQL (`_finish_many_sql`); on SQLite, where statements cost no
    round trip, one UPDATE each and the commit shared. All or nothing: an error rolls every
    write back and is raised."""
    columns = writes[0].columns
    if any(write.columns != columns for write in writes):
        raise ValueError("writes finished together must set the same columns")
    if _on_postgres():
        return _finish_many_postgres(writes, columns)
    sql = _finish_sql(database_proxy.param, _column_names(columns))
    outcomes: list[Finished | None] = []
    added: dict[tuple[str, str, str], list[float]] = {}
    with database_proxy.atomic():
        for write in writes:
            rows = database_proxy.execute_sql(sql, _finish_values(write)).fetchall()
            if len(rows) != 1:
                outcomes.append(None)
                continue
            outcomes.append(Finished(has_dependants=bool(rows[0][1])))
            state = JobState(write.changes["state"]).value
            for name, bucket, n, total in job_metrics.metric_rows(state, _durations(write)):
                sums = added.setdefault((rows[0][0], name, bucket), [0, 0.0])
                sums[0] += n
                sums[1] += total
        job_metrics.add([(*key, int(n), total) for key, (n, total) in sorted(added.items())])
    return outcomes


def _postgres_type(name: str) -> str:
    """The type a column's values travel as in `_finish_many_sql`'s arrays: PostgreSQL casts
    an array's elements to the column on assignment only from a type it knows (text goes to
    a varchar, not to a float)."""
    column = Job._meta.fields[name]
    if isinstance(column, peewee.FloatField):
        return "float8"
    if isinstance(column, peewee.IntegerField):
        return "bigint"
    if isinstance(column, peewee.BooleanField):
        return "boolean"
    if isinstance(column, peewee.DateTimeField):
        return "timestamp"
    return "text"


@functools.cache
def _finish_many_sql(columns: tuple[str, ...]) -> str:
    """One UPDATE of many rows from arrays (one statement text for any number of rows, so it
    is prepared once), its metrics added up per (type, name, bucket) in one upsert: an
    upsert may not touch a row twice. The metric rows go in a fixed order so two processes'
    upserts lock shared rows in the same order."""
    types = ["text", "integer", "timestamp", *map(_postgres_type, columns), "float8"]
    arrays = ", ".join(f"%s::{kind}[]" for kind in types)
    names = ", ".join(["id", "attempt", "completed_at", *(f"c{i}" for i in range(len(columns)))])
    sets = ", ".join(f'"{name}" = v.c{i}' for i, name in enumerate(_column_names(columns)))
    return (
        f"WITH v AS (SELECT * FROM unnest({arrays}) AS v ({names}, run)),"
        f" finished AS (UPDATE {_TABLE} SET completed_at = v.completed_at,"
        f" heartbeat_at = NULL, {sets} FROM v WHERE {_TABLE}.id = v.id"
        f" AND {_TABLE}.state = %s AND {_TABLE}.attempts = v.attempt"
        f" RETURNING {_TABLE}.id, {_TABLE}.type, {_TABLE}.state, v.run,"
        f" EXISTS (SELECT 1 FROM {_DEPENDENCIES} WHERE dependency_id = {_TABLE}.id)"
        " AS has_dependants),"
        f" counted AS ({job_metrics.INSERT_SQL} SELECT type, name, bucket, %s::smallint,"
        " COUNT(*), SUM(total) FROM (SELECT type, state AS name, '' AS bucket,"
        " 1.0::float8 AS total FROM finished UNION ALL SELECT type, 'run_seconds',"
        f" {job_metrics.bucket_sql('run')}, GREATEST(run, 0) FROM finished"
        " WHERE run IS NOT NULL) AS m GROUP BY type, name, bucket ORDER BY type, name, bucket"
        f" {job_metrics.UPSERT_CONFLICT})"
        " SELECT id, has_dependants FROM finished"
    )


def _finish_many_postgres(
    writes: Sequence[FinishWrite], columns: tuple[str, ...]
) -> list[Finished | None]:
    fields = Job._meta.fields
    values: list[Any] = [
        [write.job_id for write in writes],
        [write.attempt for write in writes],
        [Job.completed_at.db_value(write.completed_at) for write in writes],
    ]
    for name in columns:
        values.append([fields[name].db_value(write.changes[name]) for write in writes])
    values += [[write.run_seconds for write in writes], JobState.RUNNING.value]
    values.append(job_metrics.writer_shard())
    rows = prepared.execute(_finish_many_sql(columns), values).fetchall()
    finished = {job_id: Finished(has_dependants=bool(dependants)) for job_id, dependants in rows}
    return [finished.get(write.job_id) for write in writes]
