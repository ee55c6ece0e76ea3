"""A job's webhook deliveries as clients see them (`GET /api/v1/jobs/{id}/deliveries`).

Owner rules are the job's: another owner's job is a 404. A job's owner sees the deliveries
to its own `callback_url`; the deliveries to the operator's global subscriptions (URLs from
the settings, which may name internal hosts) are listed to admins only.
"""

from __future__ import annotations

from typing import Any

from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.fields import iso
from skillq.settings_rules import WEBHOOK_EVENTS
from skillq.storage import webhooks
from skillq.storage.database import in_connection

_TIME = {"type": "string", "format": "date-time"}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}
_MAYBE_TEXT = {"type": ["string", "null"]}

ATTEMPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "attempt": {"type": "integer", "minimum": 1},
        "started_at": _TIME,
        "finished_at": {**_MAYBE_TIME, "description": "null while the attempt is under way"},
        "status_code": {"type": ["integer", "null"], "description": "the receiver's answer"},
        "error": _MAYBE_TEXT,
    },
    "required": ["attempt", "started_at", "finished_at", "status_code", "error"],
    "additionalProperties": False,
}

DELIVERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the `webhook-id` header of every attempt"},
        "event": {"enum": list(WEBHOOK_EVENTS)},
        "url": {"type": "string"},
        "source": {"enum": ["callback", "subscription"]},
        "state": {"enum": [webhooks.PENDING, webhooks.DELIVERED, webhooks.FAILED]},
        "attempts": {"type": "integer", "minimum": 0},
        "created_at": _TIME,
        "next_attempt_at": {**_MAYBE_TIME, "description": "while pending"},
        "delivered_at": _MAYBE_TIME,
        "last_error": _MAYBE_TEXT,
        "attempt_log": {"type": "array", "items": ATTEMPT_SCHEMA},
    },
    "required": [
        "id",
        "event",
        "url",
        "source",
        "state",
        "attempts",
        "created_at",
        "next_attempt_at",
        "delivered_at",
        "last_error",
        "attempt_log",
    ],
    "additionalProperties": False,
}

DELIVERIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "deliveries": {"type": "array", "items": DELIVERY_SCHEMA},
    },
    "required": ["job_id", "deliveries"],
    "additionalProperties": False,
}


def delivery_to_dict(delivery: webhooks.WebhookDelivery) -> dict[str, Any]:
    pending = delivery.state == webhooks.PENDING
    return {
        "id": delivery.id,
        "event": delivery.event,
        "url": delivery.url,
        "source": delivery.source,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "created_at": iso(delivery.created_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if pending else None,
        "delivered_at": iso(delivery.delivered_at),
        "last_error": delivery.last_error,
        "attempt_log": [
            {
                "attempt": row.attempt,
                "started_at": iso(row.started_at),
                "finished_at": iso(row.finished_at),
                "status_code": row.status_code,
                "error": row.error,
            }
            for row in delivery.attempt_list
        ],
    }


@in_connection
def job_deliveries(coordinator: JobCoordinator, job_id: str, *, owner: str | None) -> dict:
    """`owner=None` (an admin) sees every delivery; an owner its callback's only."""
    job = coordinator.get_job(job_id, owner=owner)
    source = None if owner is None else "callback"
    deliveries = webhooks.for_job(job.id, source=source)
    return {"job_id": job.id, "deliveries": [delivery_to_dict(d) for d in deliveries]}
