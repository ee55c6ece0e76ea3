"""Counting an owner's pending jobs for quotas, under a lock that makes the count hold.

A quota check is a count followed by an insert; two submits of one owner in two API
processes could both count N-1 and both insert. `owner_write_lock` closes that gap: it opens
the transaction the count and the insert share and takes a lock that a second submitter of
the same owner waits for until the first commits.

- SQLite: `BEGIN IMMEDIATE` takes the database's write lock at once (one writer at a time
  anyway), so the second transaction starts only after the first committed its insert.
- PostgreSQL: `pg_advisory_xact_lock` on the owner's name (hashed), released at commit;
  other owners' submits do not wait (unless their names' hashes collide). READ COMMITTED
  suffices: each statement after the lock sees what the previous holder committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import peewee

from skillq.storage.database import database_proxy
from skillq.storage.models import Job, JobState, in_open_state

#: First key of the two-key advisory lock: owners' quota locks ("skqq" in ASCII).
QUOTA_LOCK_SPACE = 0x736B7171


@contextmanager
def owner_write_lock(owner: str) -> Iterator[None]:
    """A transaction in which no other submit of `owner` counts or inserts."""
    database = database_proxy.obj
    if isinstance(database, peewee.SqliteDatabase):
        with database.atomic(lock_type="IMMEDIATE"):
            yield
        return
    with database.atomic():
        database.execute_sql(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (QUOTA_LOCK_SPACE, owner)
        )
        yield


def pending_count(owner: str, job_type: str | None = None) -> int:
    """The owner's pending jobs (queued, delayed or waiting for a retry), of one type or all."""
    query = Job.select().where((Job.owner == owner) & in_open_state(JobState.PENDING))
    if job_type is not None:
        query = query.where(Job.type == job_type)
    return query.count()
