"""Delayed jobs: when a submission asks its job to start (`run_at` or `delay_secs`), checked
against `[jobs] max_delay_hours`, and how long the broker must hold its message.

The broker does the waiting (Dramatiq's `delay`: our SQLite broker's `eta` column, Redis's
and RabbitMQ's delay queues); the store keeps the time as the job's `scheduled_for`, so a
client sees it and stale-job recovery knows the message is not lost while it waits.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from skillq.errors import InvalidParams
from skillq.json_values import shown
from skillq.storage import Job

#: A `run_at` this far in the past still runs (at once): the client's clock may lag ours.
PAST_TOLERANCE_SECS = 60

SCHEMA_PROPERTIES: dict[str, Any] = {
    "run_at": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "description": "ISO 8601 time with an offset (Z or ±hh:mm) the job starts at, "
        "not before; kept in UTC. 422 if more than 60 s ago or more than "
        "[jobs] max_delay_hours ahead, or given with delay_secs.",
    },
    "delay_secs": {
        "type": "number",
        "minimum": 0,
        "description": "Seconds from now the job starts at, not before.",
    },
}


def _invalid(path: str, message: str, detail: str) -> InvalidParams:
    return InvalidParams(message, [{"path": f"body.{path}", "message": detail}])


def parse_run_at(text: str) -> datetime:
    """An ISO 8601 time with an explicit offset, as naive UTC (how the store keeps times).
    A time without an offset is refused: whose local time it means is anyone's guess."""
    try:
        moment = datetime.fromisoformat(text.upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise _invalid("run_at", "run_at is not an ISO 8601 time", f"got {shown(text)}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _invalid(
            "run_at",
            "run_at needs a UTC offset",
            f"got {shown(text)}; write e.g. 2026-12-01T10:00:00Z",
        )
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError):
        raise _invalid("run_at", "run_at is out of range", f"got {shown(text)}") from None


def scheduled_for(request: dict[str, Any], max_delay_hours: int, now: datetime) -> datetime | None:
    """The start time a (schema-valid) submission asks for, or None to start at once."""
    run_at, delay = request.get("run_at"), request.get("delay_secs")
    if run_at is not None and delay is not None:
        raise InvalidParams(
            "give run_at or delay_secs, not both",
            [{"path": "body.delay_secs", "message": "run_at is given too"}],
        )
    limit = timedelta(hours=max_delay_hours)
    if delay is not None:
        if not math.isfinite(delay) or delay > limit.total_seconds():
            raise _invalid(
                "delay_secs",
                "delay_secs is too large",
                f"must be at most {int(limit.total_seconds())} (jobs.max_delay_hours is "
                f"{max_delay_hours})",
            )
        return now + timedelta(seconds=delay)
    if run_at is None:
        return None
    moment = parse_run_at(run_at)
    if moment > now + limit:
        raise _invalid(
            "run_at",
            "run_at is too far ahead",
            f"must be at most {max_delay_hours} hours from now (jobs.max_delay_hours)",
        )
    if moment < now - timedelta(seconds=PAST_TOLERANCE_SECS):
        raise _invalid(
            "run_at",
            "run_at is in the past",
            f"must be later than {PAST_TOLERANCE_SECS} seconds ago",
        )
    return moment


def delay_ms(job: Job, now: datetime) -> int | None:
    """How long the broker must hold the job's message (None: not at all). Rounded up, so a
    worker never starts the job a fraction of a millisecond early."""
    if job.scheduled_for is None:
        return None
    wait = math.ceil((job.scheduled_for - now).total_seconds() * 1000)
    return wait if wait > 0 else None
