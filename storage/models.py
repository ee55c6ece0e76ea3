"""The `Job` row and its states, exactly the job model of DESIGN.md."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import peewee

from skillq.storage.database import database_proxy


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
#: The states a job can still leave: exactly its rows whose `completed_at` is NULL (v19).
OPEN_STATES = (JobState.PENDING, JobState.RUNNING)


def utcnow() -> datetime:
    """Naive UTC: both SQLite and PostgreSQL `timestamp` columns store it unchanged."""
    return datetime.now(UTC).replace(tzinfo=None)


def stored_size(document: Any) -> int:
    """Bytes `document` takes as a JSONField stores it (compact JSON, ASCII-escaped)."""
    return len(json.dumps(document, separators=(",", ":")))


class JSONField(peewee.TextField):
    """JSON kept as text, so the same schema works on SQLite and PostgreSQL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy


class Job(BaseModel):
    id = peewee.CharField(max_length=36, primary_key=True)
    type = peewee.CharField(max_length=100, index=True)
    queue = peewee.CharField(max_length=100)
    params = JSONField()
    #: Not indexed, so that a start is a HOT update on PostgreSQL (v19): open jobs are found
    #: through `completed_at` (`in_open_state`), the others through their other columns.
    state = peewee.CharField(max_length=16)
    priority = peewee.SmallIntegerField(default=5)
    progress = peewee.FloatField(null=True)
    message = peewee.TextField(null=True)
    result = JSONField(null=True)
    error_type = peewee.CharField(max_length=200, null=True)
    error_message = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    max_retries = peewee.IntegerField()
    created_at = peewee.DateTimeField(index=True)
    #: Not indexed (v19, as `state`); the queue history finds starts through `completed_at`.
    started_at = peewee.DateTimeField(null=True)
    #: NULL exactly while the job is pending or running: every way of ending sets it, an
    #: explicit retry clears it. Indexed with `owner` and `type` (v19, below): the queue
    #: history's ranges, and the open jobs, all or an owner's.
    completed_at = peewee.DateTimeField(null=True)
    expires_at = peewee.DateTimeField(index=True)
    owner = peewee.CharField(max_length=200, index=True)
    trace_id = peewee.CharField(max_length=64, null=True, index=True)
    idempotency_key = peewee.CharField(max_length=200, null=True)
    worker_id = peewee.CharField(max_length=200, null=True)
    heartbeat_at = peewee.DateTimeField(null=True)
    #: Set when a client cancels a running job; the worker side interrupts it (v2).
    cancel_requested_at = peewee.DateTimeField(null=True)
    #: When the job's message was last handed to the broker; stale-job recovery re-sends a
    #: job pending far longer than that, as its message was lost (v3).
    enqueued_at = peewee.DateTimeField(null=True)
    #: Pending and held back until its dependencies end: not on the broker yet (v11).
    waiting = peewee.BooleanField(default=False)
    #: Its dependencies as submitted, `[{"job", "on_failure", "name"}]`, or null (v11); the
    #: edges themselves, for finding a job's dependants, are `storage.dependencies`'.
    depends_on = JSONField(null=True)
    #: The workflow that created it, if any (v11).
    workflow_id = peewee.CharField(max_length=36, null=True, index=True)
    #: A delayed job's start time (`run_at` / `delay_secs`): no worker starts it before, and
    #: recovery counts a lost message from it rather than from the send (v12).
    scheduled_for = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "skillq_job"
        indexes = (
            # NULL keys never collide, so jobs without a key are unconstrained.
            (("owner", "idempotency_key"), True),
            (("completed_at", "owner", "type"), False),
            # And (v19) `skillq_job_queued`: (queue, priority, created_at) of the open jobs
            # only, a partial index, for `storage.jobs.position_in_queue`.
        )

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


def in_open_state(*states: JobState) -> peewee.Expression:
    """Jobs in these open (pending or running) states, said so that the `completed_at` index,
    whose NULL entries are the open jobs, serves the query: `state` has no index since
    schema 19. A lookup by key needs no more than the state."""
    if not states or any(state.is_terminal for state in states):
        raise ValueError(f"not open states: {states}")
    wanted = Job.state == states[0] if len(states) == 1 else Job.state.in_(list(states))
    return Job.completed_at.is_null() & wanted


class JobLogLine(BaseModel):
    """One kept line of what a job printed (v5): a log record, a tool's stderr line, the error.

    `seq` numbers a job's lines from 1 and is the paging cursor; `size` is the text's UTF-8
    length, summed to keep each job's log within its byte bound without reading the text."""

    job = peewee.ForeignKeyField(Job, column_name="job_id", on_delete="CASCADE", backref="log")
    seq = peewee.IntegerField()
    at = peewee.DateTimeField()
    source = peewee.CharField(max_length=16)
    level = peewee.CharField(max_length=16)
    text = peewee.TextField()
    size = peewee.IntegerField()

    class Meta:
        table_name = "skillq_job_log"
        indexes = ((("job", "seq"), True),)
