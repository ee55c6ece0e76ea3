"""The recovery sweep's queries: jobs whose worker or message is gone.

Like every transition in `storage.jobs`, each release or claim is one conditional UPDATE
that names what it read (state, attempt, heartbeat, last send), so that of several sweeps,
or a sweep racing the job's own worker, only one moves the job.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import peewee

from skillq.storage.limit_tables import PostponedJob
from skillq.storage.models import Job, JobState, in_open_state, utcnow


def release_abandoned(job_id: str, *, attempt: int) -> bool:
    """Back to pending an attempt its worker gave up at shutdown; the broker redelivers it."""
    query = Job.update(
        state=JobState.PENDING, worker_id=None, heartbeat_at=None, enqueued_at=utcnow()
    ).where((Job.id == job_id) & (Job.state == JobState.RUNNING) & (Job.attempts == attempt))
    return query.execute() == 1


def stale_running(dead_after: timedelta, *, now: datetime | None = None) -> list[Job]:
    """Running jobs whose worker has not beaten for `dead_after`: it died or hangs."""
    cutoff = (now or utcnow()) - dead_after
    beat = peewee.fn.COALESCE(Job.heartbeat_at, Job.started_at, Job.created_at)
    return list(Job.select().where(in_open_state(JobState.RUNNING) & (beat < cutoff)))


def release_stale(job: Job, *, error_message: str) -> bool:
    """Back to pending a running job whose worker is gone, if nothing touched it since it was
    read (same attempt, same heartbeat); the broker's redelivery or a re-send runs it again."""
    query = Job.update(
        state=JobState.PENDING,
        worker_id=None,
        heartbeat_at=None,
        enqueued_at=utcnow(),
        error_type="WorkerLost",
        error_message=error_message,
    ).where(
        (Job.id == job.id)
        & (Job.state == JobState.RUNNING)
        & (Job.attempts == job.attempts)
        & (
            peewee.fn.COALESCE(Job.heartbeat_at, Job.started_at)
            == (job.heartbeat_at or job.started_at)
        )
    )
    return query.execute() == 1


def lost_pending(
    requeue_after: timedelta, *, now: datetime | None = None, limit: int = 1000
) -> list[Job]:
    """Pending jobs last sent to the broker longer ago than `requeue_after`: their message was
    probably lost (the API died between insert and enqueue, a broker lost its data).

    A delayed job counts from its `scheduled_for` when that is later: its message rightly
    waits in the broker until then, and is lost only if the job has not started by then."""
    cutoff = (now or utcnow()) - requeue_after
    sent = peewee.fn.COALESCE(Job.enqueued_at, Job.created_at)
    # A job waiting for its dependencies has no message yet (`storage.dependencies`); one
    # postponed by its type's limit is kept with its message, not lost; a delayed one's
    # message counts as lost only that long after its start time.
    postponed = PostponedJob.select().where(PostponedJob.job_id == Job.id)
    expected = peewee.Case(None, [(Job.scheduled_for > sent, Job.scheduled_for)], sent)
    query = Job.select().where(
        in_open_state(JobState.PENDING)
        & (Job.waiting == False)  # noqa: E712
        & (expected < cutoff)
        & ~peewee.fn.EXISTS(postponed)
    )
    return list(query.order_by(Job.created_at).limit(limit))


def claim_resend(job: Job) -> bool:
    """Only one of several recovery passes re-sends a lost job: the one whose update lands."""
    sent = peewee.fn.COALESCE(Job.enqueued_at, Job.created_at)
    query = Job.update(enqueued_at=utcnow()).where(
        (Job.id == job.id)
        & (Job.state == JobState.PENDING)
        & (sent == (job.enqueued_at or job.created_at))
    )
    return query.execute() == 1
