"""Claims of schedule fires: at most one job per (schedule, fire time), whoever asks.

periodiq has no leader election, so two schedulers enqueue every tick twice; the unique
index on (name, fire_at) lets exactly one of the resulting messages submit the job.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import peewee

from skillq.storage.models import BaseModel, utcnow


class ScheduleFire(BaseModel):
    name = peewee.CharField(max_length=200)
    fire_at = peewee.DateTimeField()
    job_id = peewee.CharField(max_length=36, null=True)
    claimed_by = peewee.CharField(max_length=200)
    claimed_at = peewee.DateTimeField()

    class Meta:
        table_name = "skillq_schedule_fire"
        indexes = ((("name", "fire_at"), True),)


def claim(name: str, fire_at: datetime, *, claimed_by: str) -> bool:
    """True for the one caller that may fire `name` at `fire_at`; False for every other."""
    try:
        with ScheduleFire._meta.database.atomic():
            ScheduleFire.insert(
                name=name, fire_at=fire_at, claimed_by=claimed_by, claimed_at=utcnow()
            ).execute()
    except peewee.IntegrityError:
        return False
    return True


def record_job(name: str, fire_at: datetime, job_id: str) -> None:
    ScheduleFire.update(job_id=job_id).where(
        (ScheduleFire.name == name) & (ScheduleFire.fire_at == fire_at)
    ).execute()


def fires(name: str) -> list[ScheduleFire]:
    query = ScheduleFire.select().where(ScheduleFire.name == name)
    return list(query.order_by(ScheduleFire.fire_at))


def prune(older_than_secs: float, *, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_secs)
    return ScheduleFire.delete().where(ScheduleFire.fire_at < cutoff).execute()


def release(name: str, fire_at: datetime) -> None:
    """Give a claim back when its job could not be submitted, so a retry may fire it."""
    ScheduleFire.delete().where(
        (ScheduleFire.name == name) & (ScheduleFire.fire_at == fire_at)
    ).execute()
