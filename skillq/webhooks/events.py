"""A job's events, written to the store before anything is sent (the outbox), then sent.

A job is *watched* when it is submitted with a `callback_url` or when settings subscribe to
its outcomes. When a watched job ends (completed, failed, cancelled), its events are
recorded once per outcome, one delivery per URL, in the same transaction that marks the
outcome as notified: whichever process notices first (the worker that ran it, the API that
cancelled it, or the recovery sweep for anything missed) records them, and no one twice.
Each delivery is then handed to the `deliver_webhook` actor on the `webhooks` queue, so a
job's completion never waits for a receiver.

`job.progress` events go to subscriptions only (a `callback_url` receives outcomes), at most
one per job per `[webhooks] progress_interval_secs` in each worker process; reports in
between are not sent (the outcome event follows anyway).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import dramatiq

from skillq.errors import InvalidParams
from skillq.jobs.fields import iso, job_to_dict
from skillq.settings import Settings, WebhookSettings
from skillq.storage import Job, JobState, jobs, webhooks
from skillq.storage.database import connection
from skillq.storage.models import utcnow
from skillq.webhooks.addresses import UrlRefused, check_url

logger = logging.getLogger(__name__)

#: The delivery actor and its queue (declared in `skillq.actors.webhooks`).
QUEUE = "webhooks"
ACTOR = "deliver_webhook"
OUTCOME_EVENTS = {
    JobState.COMPLETED: "job.completed",
    JobState.FAILED: "job.failed",
    JobState.CANCELLED: "job.cancelled",
}
PROGRESS_EVENT = "job.progress"
#: A pending delivery this late past its next attempt had its message lost: send it again.
SWEEP_GRACE_SECS = 30.0


def configured(settings: WebhookSettings) -> bool:
    """Whether webhooks can happen at all (a secret for callbacks, or subscriptions)."""
    return settings.secret is not None or bool(settings.subscriptions)


def watches_outcomes(settings: WebhookSettings) -> bool:
    """Whether some subscription wants every job's outcome."""
    outcomes = set(OUTCOME_EVENTS.values())
    return any(outcomes & set(sub.events) for sub in settings.subscriptions)


def watches_progress(settings: WebhookSettings) -> bool:
    return any(PROGRESS_EVENT in sub.events for sub in settings.subscriptions)


def check_callback_url(settings: WebhookSettings, url: str) -> None:
    """A submission's `callback_url`: InvalidParams naming it unless the SSRF guard allows
    it and the server has a secret to sign its deliveries with."""
    if settings.secret is None:
        problem = "this server cannot sign callbacks: its [webhooks] secret is not set"
    else:
        try:
            check_url(url, allow_private=settings.allow_private)
            return
        except UrlRefused as refused:
            problem = str(refused)
    raise InvalidParams(
        f"callback_url is refused: {problem}",
        [{"path": "body.callback_url", "message": problem}],
    )


def watch_submission(settings: WebhookSettings, job_id: str, callback_url: str | None) -> None:
    """Called in the submission's transaction: the job's outcome will give events."""
    if watches_submission(settings, callback_url):
        webhooks.watch(job_id, callback_url)


def watches_submission(settings: WebhookSettings, callback_url: str | None) -> bool:
    """Whether `watch_submission` writes a row for a new job."""
    return callback_url is not None or watches_outcomes(settings)


def payload(event: str, data: dict[str, Any]) -> str:
    """The body every attempt of the message sends, byte for byte (the signature covers it)."""
    document = {"type": event, "timestamp": iso(utcnow()), "data": data}
    return json.dumps(document, separators=(",", ":"), allow_nan=False)


def _deliveries(
    settings: WebhookSettings, event: str, data: dict[str, Any], callback_url: str | None
) -> list[webhooks.NewDelivery]:
    body = payload(event, data)
    targets = [(callback_url, "callback")] if callback_url is not None else []
    targets += [(sub.url, "subscription") for sub in settings.subscriptions if event in sub.events]
    return [
        webhooks.NewDelivery(f"msg_{uuid.uuid4().hex}", event, url, source, body)
        for url, source in targets
    ]


def send(broker: dramatiq.Broker, delivery_id: str, attempt: int, delay_secs: float = 0) -> None:
    """Hand one attempt to the delivery actor. If the broker refuses, the delivery stays
    pending in the store and the sweep sends it later."""
    try:
        actor = broker.get_actor(ACTOR)
        delay = int(delay_secs * 1000) or None
        actor.send_with_options(args=(delivery_id, attempt), delay=delay)
    except Exception:
        logger.warning("Could not queue webhook delivery %s; the sweep retries.", delivery_id)


def notify_outcome(broker: dramatiq.Broker, settings: Settings, job_id: str) -> int:
    """Record and send the events of a watched job's latest outcome, unless recorded already.
    Returns the number of deliveries it created."""
    with connection():
        watch = webhooks.watched(job_id)
        job = jobs.get_job(job_id) if watch is not None else None
        if job is None or not job.job_state.is_terminal or job.completed_at is None:
            return 0
        event = OUTCOME_EVENTS[job.job_state]
        deliveries = _deliveries(settings.webhooks, event, job_to_dict(job), watch.callback_url)
        if not webhooks.record_outcome_events(job.id, job.completed_at, deliveries):
            return 0
    for delivery in deliveries:
        send(broker, delivery.id, 1)
    return len(deliveries)


def notify_progress(broker: dramatiq.Broker, settings: Settings, job: Job) -> None:
    """Record and send a `job.progress` event to the subscriptions that want it."""
    data = {
        "id": job.id,
        "type": job.type,
        "state": job.state,
        "progress": job.progress,
        "message": job.message,
        "owner": job.owner,
    }
    deliveries = _deliveries(settings.webhooks, PROGRESS_EVENT, data, None)
    if not deliveries:
        return
    with connection():
        webhooks.add_deliveries(job.id, deliveries)
    for delivery in deliveries:
        send(broker, delivery.id, 1)


def sweep(broker: dramatiq.Broker, settings: Settings) -> tuple[int, int]:
    """What nobody noticed: outcomes without events (a process died between the outcome and
    its events, or ended the job where nothing listens), and pending deliveries whose
    message is overdue (lost, or its worker died mid-attempt). Returns (events, re-sent)."""
    with connection():
        unnotified = webhooks.unnotified_jobs()
    recorded = sum(notify_outcome(broker, settings, job_id) for job_id in unnotified)
    grace = timedelta(seconds=SWEEP_GRACE_SECS)
    with connection():
        overdue = webhooks.claim_overdue(grace)
    for delivery_id, attempt in overdue:
        send(broker, delivery_id, attempt)
    if recorded or overdue:
        logger.info("Webhook sweep: %d late events, %d deliveries re-sent.", recorded, len(overdue))
    return recorded, len(overdue)
