"""The tables of the global limits per job type, and how their statements run.

Three tables (migration 13, `skillq.storage.limit_migrations`; migration 16,
`skillq.storage.migration_v16`):

- `skillq_limit_slot`: one row per slot in use. A type limited to `max_concurrent = 2` has
  at most slots 0 and 1 of kind `concurrency`; a `rate = "5/second"` type at most slots 0-4
  of kind `rate`. A slot is taken by inserting its row (the primary key makes two takers of
  one slot impossible, on SQLite and PostgreSQL alike) or by a conditional update of a row
  whose `expires_at` has passed. A concurrency slot is a lease the holder's worker renews
  while the job runs and deletes when it ends, so a SIGKILLed worker's slot frees itself
  once the lease runs out. A rate slot expires one period after its job started and is
  never released: at most `count` starts fall in any window of the period.
- `skillq_owner_slot`: one row per slot of an owner's `[quotas] max_running` in use (of
  every type together, `job_type` "*", or of one type), taken and leased the same way as a
  concurrency slot, and deleted when its job ends.
- `skillq_postponed_job`: jobs that found no free slot, with their message, until a slot
  frees; then one is taken out (a conditional delete, so once) and sent again.

Their hot statements (a limited job's start, its postponement, its end handing the slot on)
are SQL written once per database and run by `execute`, as `skillq.storage.job_writes` does:
peewee took about 0.3 ms of Python to build each of those statements, twenty times what
SQLite needs to run one, and a handover runs about ten. The slots are used by
`skillq.storage.job_limits`, the postponed jobs by `skillq.storage.postponed_jobs`.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import peewee

from skillq.storage.database import database_proxy
from skillq.storage.models import BaseModel, Job

CONCURRENCY = "concurrency"
RATE = "rate"
#: An owner slot's `job_type` when it counts the owner's jobs of every type.
ALL_TYPES = "*"


class LimitSlot(BaseModel):
    job_type = peewee.CharField(max_length=100)
    kind = peewee.CharField(max_length=16)
    slot = peewee.IntegerField()
    #: A random token naming one hold (a reservation, then the attempt that uses it).
    holder = peewee.CharField(max_length=36, index=True)
    owner = peewee.CharField(max_length=200)
    job_id = peewee.CharField(max_length=36)
    expires_at = peewee.DateTimeField()

    class Meta:
        table_name = "skillq_limit_slot"
        primary_key = peewee.CompositeKey("job_type", "kind", "slot")


class OwnerSlot(BaseModel):
    owner = peewee.CharField(max_length=200)
    #: The type whose per-owner limit it counts, or `ALL_TYPES`.
    job_type = peewee.CharField(max_length=100)
    slot = peewee.IntegerField()
    holder = peewee.CharField(max_length=36, index=True)
    job_id = peewee.CharField(max_length=36)
    expires_at = peewee.DateTimeField()

    class Meta:
        table_name = "skillq_owner_slot"
        primary_key = peewee.CompositeKey("owner", "job_type", "slot")


class PostponedJob(BaseModel):
    id = peewee.AutoField()
    job_id = peewee.CharField(max_length=36, unique=True)
    job_type = peewee.CharField(max_length=100)
    owner = peewee.CharField(max_length=200)
    priority = peewee.SmallIntegerField()
    #: The job's dramatiq message, encoded, sent again as it was when a slot frees.
    message = peewee.TextField()
    postponed_at = peewee.DateTimeField()

    class Meta:
        table_name = "skillq_postponed_job"
        indexes = ((("job_type", "priority", "owner", "id"), False),)


TABLES = {
    "slots": f'"{LimitSlot._meta.table_name}"',
    "owner_slots": f'"{OwnerSlot._meta.table_name}"',
    "postponed": f'"{PostponedJob._meta.table_name}"',
    "jobs": f'"{Job._meta.table_name}"',
}


@functools.cache
def _sql(statement: str, p: str) -> str:
    return statement.format(p=p, **TABLES)


def execute(statement: str, *values: Any) -> Any:
    """Run `statement` (SQL with `{p}` for each value and `{slots}`, `{owner_slots}`,
    `{postponed}`, `{jobs}` for the tables) on the bound database; the cursor."""
    return database_proxy.execute_sql(_sql(statement, database_proxy.param), values)


def stamp(moment: datetime) -> Any:
    """A moment as the driver stores it in a DateTimeField."""
    return LimitSlot.expires_at.db_value(moment)


def moment(stamp: Any) -> datetime:
    """A DateTimeField's value as read by a raw statement (a string on SQLite)."""
    return LimitSlot.expires_at.python_value(stamp)
