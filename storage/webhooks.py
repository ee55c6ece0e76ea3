"""Webhook events and their delivery attempts, kept in the store (schema v10).

The store is the outbox: an event's delivery row is written before its first attempt, and
every attempt is a row of its own, so a receiver that is down, or a worker that dies while
sending, loses nothing (`skillq.webhooks` retries whatever is still `pending`).

- `JobWebhook`: a job that has somewhere to report to (its own `callback_url`, or the
  global subscriptions of settings), and which outcome was last turned into events, so each
  outcome gives its events exactly once, whichever process notices it first.
- `WebhookDelivery`: one event to one URL (the Standard Webhooks message: its id is the
  `webhook-id`, its payload the exact body every attempt sends).
- `WebhookAttempt`: one try, with the receiver's status code or the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee

from skillq.storage.models import TERMINAL_STATES, BaseModel, Job, utcnow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class JobWebhook(BaseModel):
    job = peewee.ForeignKeyField(
        Job, column_name="job_id", primary_key=True, on_delete="CASCADE", backref="webhook"
    )
    callback_url = peewee.TextField(null=True)
    #: The `completed_at` of the outcome whose events are recorded (a retried job ends again).
    notified_for = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "skillq_job_webhook"


class WebhookDelivery(BaseModel):
    id = peewee.CharField(max_length=40, primary_key=True)
    job = peewee.ForeignKeyField(Job, column_name="job_id", on_delete="CASCADE", index=True)
    event = peewee.CharField(max_length=32)
    url = peewee.TextField()
    #: `callback` (the job's own URL, the server's secret) or `subscription` (settings).
    source = peewee.CharField(max_length=16)
    payload = peewee.TextField()
    state = peewee.CharField(max_length=16)
    attempts = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField()
    next_attempt_at = peewee.DateTimeField()
    delivered_at = peewee.DateTimeField(null=True)
    last_error = peewee.TextField(null=True)

    class Meta:
        table_name = "skillq_webhook_delivery"
        indexes = ((("state", "next_attempt_at"), False),)


class WebhookAttempt(BaseModel):
    delivery = peewee.ForeignKeyField(
        WebhookDelivery, column_name="delivery_id", on_delete="CASCADE", backref="attempt_rows"
    )
    attempt = peewee.IntegerField()
    started_at = peewee.DateTimeField()
    finished_at = peewee.DateTimeField(null=True)
    status_code = peewee.IntegerField(null=True)
    error = peewee.TextField(null=True)

    class Meta:
        table_name = "skillq_webhook_attempt"
        indexes = ((("delivery", "attempt"), True),)


@dataclass(frozen=True)
class NewDelivery:
    id: str
    event: str
    url: str
    source: str
    payload: str


def watch(job_id: str, callback_url: str | None) -> None:
    """Mark a job as one whose outcome gives events."""
    JobWebhook.insert(job=job_id, callback_url=callback_url).execute()


def watched(job_id: str) -> JobWebhook | None:
    return JobWebhook.get_or_none(JobWebhook.job == job_id)


def unnotified_jobs(limit: int = 100) -> list[str]:
    """Finished watched jobs whose latest outcome has no events yet (a missed notice)."""
    query = (
        JobWebhook.select(JobWebhook.job)
        .join(Job)
        .where(
            Job.state.in_([state.value for state in TERMINAL_STATES]),
            Job.completed_at.is_null(False),
            JobWebhook.notified_for.is_null() | (JobWebhook.notified_for != Job.completed_at),
        )
        .limit(limit)
    )
    return [row.job_id for row in query]


def record_outcome_events(
    job_id: str, completed_at: datetime, deliveries: list[NewDelivery]
) -> bool:
    """Write the events of the outcome that ended at `completed_at`, once: False when another
    process recorded them already (nothing written)."""
    database = JobWebhook._meta.database
    with database.atomic():
        claimed = (
            JobWebhook.update(notified_for=completed_at)
            .where(
                JobWebhook.job == job_id,
                JobWebhook.notified_for.is_null() | (JobWebhook.notified_for != completed_at),
            )
            .execute()
        )
        if claimed:
            add_deliveries(job_id, deliveries)
        return bool(claimed)


def add_deliveries(job_id: str, deliveries: list[NewDelivery]) -> None:
    now = utcnow()
    rows = [
        {
            "id": d.id,
            "job": job_id,
            "event": d.event,
            "url": d.url,
            "source": d.source,
            "payload": d.payload,
            "state": PENDING,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for d in deliveries
    ]
    if rows:
        WebhookDelivery.insert_many(rows).execute()


def get_delivery(delivery_id: str) -> WebhookDelivery | None:
    return WebhookDelivery.get_or_none(WebhookDelivery.id == delivery_id)


def claim_attempt(delivery: WebhookDelivery, attempt: int, lease_secs: float) -> bool:
    """Take attempt number `attempt` of a due pending delivery for this process: it may be
    retried by another only after `lease_secs` (a worker that dies mid-attempt). The attempt's
    row is written before anything is sent; an earlier attempt left without an outcome is
    marked interrupted."""
    now = utcnow()
    database = WebhookDelivery._meta.database
    with database.atomic():
        taken = (
            WebhookDelivery.update(
                attempts=attempt, next_attempt_at=now + timedelta(seconds=lease_secs)
            )
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.state == PENDING,
                WebhookDelivery.attempts == attempt - 1,
                WebhookDelivery.next_attempt_at <= now,
            )
            .execute()
        )
        if not taken:
            return False
        WebhookAttempt.update(
            finished_at=now, error="interrupted: the worker stopped during this attempt"
        ).where(
            WebhookAttempt.delivery == delivery.id, WebhookAttempt.finished_at.is_null()
        ).execute()
        WebhookAttempt.insert(delivery=delivery.id, attempt=attempt, started_at=now).execute()
    return True


def finish_attempt(
    delivery_id: str,
    attempt: int,
    *,
    status_code: int | None,
    error: str | None,
    outcome: str,
    next_attempt_at: datetime | None = None,
) -> None:
    """Record how an attempt went, and the delivery's new state (`outcome`)."""
    now = utcnow()
    changes: dict[str, Any] = {"state": outcome, "last_error": error}
    if outcome == DELIVERED:
        changes["delivered_at"] = now
    if next_attempt_at is not None:
        changes["next_attempt_at"] = next_attempt_at
    with WebhookDelivery._meta.database.atomic():
        WebhookAttempt.update(finished_at=now, status_code=status_code, error=error).where(
            WebhookAttempt.delivery == delivery_id, WebhookAttempt.attempt == attempt
        ).execute()
        WebhookDelivery.update(**changes).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempt
        ).execute()


def claim_overdue(grace: timedelta, limit: int = 100) -> list[tuple[str, int]]:
    """Pending deliveries whose next attempt is `grace` late (its message was lost, or the
    worker sending it died), each claimed for a re-send (made due now, so another sweep
    leaves it alone for `grace`): (id, the attempt to make)."""
    now = utcnow()
    query = (
        WebhookDelivery.select(
            WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.next_attempt_at
        )
        .where(WebhookDelivery.state == PENDING, WebhookDelivery.next_attempt_at < now - grace)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    claimed = []
    for row in list(query):
        taken = (
            WebhookDelivery.update(next_attempt_at=now)
            .where(
                WebhookDelivery.id == row.id,
                WebhookDelivery.state == PENDING,
                WebhookDelivery.next_attempt_at == row.next_attempt_at,
            )
            .execute()
        )
        if taken:
            claimed.append((row.id, row.attempts + 1))
    return claimed


def for_job(job_id: str, *, source: str | None = None) -> list[WebhookDelivery]:
    """A job's deliveries, oldest first, each with its attempts (`attempt_list`)."""
    query = WebhookDelivery.select().where(WebhookDelivery.job == job_id)
    if source is not None:
        query = query.where(WebhookDelivery.source == source)
    deliveries = list(query.order_by(WebhookDelivery.created_at, WebhookDelivery.id))
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        rows = WebhookAttempt.select().where(WebhookAttempt.delivery.in_(list(attempts)))
        for row in rows.order_by(WebhookAttempt.attempt):
            attempts[row.delivery_id].append(row)
    for delivery in deliveries:
        delivery.attempt_list = attempts[delivery.id]
    return deliveries
