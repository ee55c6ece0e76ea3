"""Global limits per job type, kept in the store so they hold across every worker process.

Two tables (migration 13, `skillq.storage.limit_migrations`):

- `skillq_limit_slot`: one row per slot in use. A type limited to `max_concurrent = 2` has
  at most slots 0 and 1 of kind `concurrency`; a `rate = "5/second"` type at most slots 0-4
  of kind `rate`. A slot is taken by inserting its row (the primary key makes two takers of
  one slot impossible, on SQLite and PostgreSQL alike) or by a conditional update of a row
  whose `expires_at` has passed. A concurrency slot is a lease the holder's worker renews
  while the job runs and deletes when it ends, so a SIGKILLed worker's slot frees itself
  once the lease runs out. A rate slot expires one period after its job started and is
  never released: at most `count` starts fall in any window of the period.
- `skillq_postponed_job`: jobs that found no free slot, with their message, until a slot
  frees; then one is taken out (a conditional delete, so once) and sent again.

Every function takes plain values and uses the database bound to the models.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee

from skillq.storage.models import BaseModel, utcnow

CONCURRENCY = "concurrency"
RATE = "rate"


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


@dataclass(frozen=True)
class Hold:
    """Who takes a slot: the token, and the job (for `workers status` and fairness)."""

    holder: str
    owner: str
    job_id: str


def acquire(job_type: str, kind: str, capacity: int, hold: Hold, expires_at: datetime) -> bool:
    """Take one of the `capacity` slots of `kind` for `hold` until `expires_at`; False when
    every slot is in use. Never blocks and never waits: one read and, per free slot tried,
    one write that either lands or finds the slot taken by someone quicker."""
    now = utcnow()
    query = LimitSlot.select(LimitSlot.slot, LimitSlot.expires_at).where(
        (LimitSlot.job_type == job_type) & (LimitSlot.kind == kind)
    )
    rows = {row.slot: row.expires_at for row in query}
    if sum(expiry > now for expiry in rows.values()) >= capacity:
        return False
    values = {"holder": hold.holder, "owner": hold.owner, "job_id": hold.job_id}
    for slot in range(capacity):
        if slot not in rows:
            inserted = (
                LimitSlot.insert(
                    job_type=job_type, kind=kind, slot=slot, expires_at=expires_at, **values
                )
                .on_conflict_ignore()
                .as_rowcount()
                .execute()
            )
            if inserted == 1:
                return True
        elif rows[slot] <= now:
            taken = (
                LimitSlot.update(expires_at=expires_at, **values)
                .where(
                    (LimitSlot.job_type == job_type)
                    & (LimitSlot.kind == kind)
                    & (LimitSlot.slot == slot)
                    & (LimitSlot.expires_at <= now)
                )
                .execute()
            )
            if taken == 1:
                return True
    return False


def extend(holder: str, kind: str, expires_at: datetime) -> bool:
    """Move the expiry of `holder`'s slot of `kind`; False if it no longer holds one (its
    reservation ran out and another job took the slot)."""
    query = LimitSlot.update(expires_at=expires_at).where(
        (LimitSlot.holder == holder) & (LimitSlot.kind == kind) & (LimitSlot.expires_at > utcnow())
    )
    return query.execute() > 0


def renew(holders: Iterable[str], expires_at: datetime) -> int:
    """Renew the concurrency leases of the attempts a live worker runs."""
    holders = list(holders)
    if not holders:
        return 0
    # Only live ones: a slot released meanwhile stays released.
    query = LimitSlot.update(expires_at=expires_at).where(
        (LimitSlot.holder.in_(holders))
        & (LimitSlot.kind == CONCURRENCY)
        & (LimitSlot.expires_at > utcnow())
    )
    return query.execute()


def release(holder: str) -> None:
    """Free `holder`'s concurrency slot; its rate slot stays until it expires. The row stays,
    expired now, as the record of whom the slot served last (see `next_postponed`)."""
    query = LimitSlot.update(expires_at=utcnow()).where(
        (LimitSlot.holder == holder) & (LimitSlot.kind == CONCURRENCY)
    )
    query.execute()


def forget(holder: str) -> None:
    """Free every slot of a reservation that was never used (its message could not be sent)."""
    LimitSlot.delete().where(LimitSlot.holder == holder).execute()


def next_expiry(job_type: str, kind: str) -> datetime | None:
    """When the next slot in use of `kind` runs out (for a rate: when the next start may be)."""
    query = LimitSlot.select(peewee.fn.MIN(LimitSlot.expires_at)).where(
        (LimitSlot.job_type == job_type)
        & (LimitSlot.kind == kind)
        & (LimitSlot.expires_at > utcnow())
    )
    return query.scalar()


def postpone(job_id: str, job_type: str, owner: str, priority: int, message: str) -> bool:
    """Keep a job that found no free slot; False if it is already kept (a duplicate
    delivery of a postponed job, which must not run twice)."""
    inserted = (
        PostponedJob.insert(
            job_id=job_id,
            job_type=job_type,
            owner=owner,
            priority=priority,
            message=message,
            postponed_at=utcnow(),
        )
        .on_conflict_ignore()
        .as_rowcount()
        .execute()
    )
    return inserted == 1


def has_postponed(job_type: str) -> bool:
    return PostponedJob.select().where(PostponedJob.job_type == job_type).exists()


def next_postponed(job_type: str) -> PostponedJob | None:
    """The job to start next when a slot of `job_type` frees: the highest priority first;
    within it, round-robin by owner (the owner holding fewest slots of the type goes first,
    then the one the slots served least recently, then the one whose oldest job waited
    longest), oldest first within an owner."""
    top = PostponedJob.select(peewee.fn.MAX(PostponedJob.priority)).where(
        PostponedJob.job_type == job_type
    )
    heads = (
        PostponedJob.select(PostponedJob.owner, peewee.fn.MIN(PostponedJob.id).alias("first"))
        .where((PostponedJob.job_type == job_type) & (PostponedJob.priority == top))
        .group_by(PostponedJob.owner)
        .tuples()
    )
    firsts = dict(heads)
    if not firsts:
        return None
    now = utcnow()
    held: Counter[str] = Counter()
    served: dict[str, datetime] = {}  # when a slot last ended (or will end) for each owner
    slots = LimitSlot.select(LimitSlot.owner, LimitSlot.expires_at).where(
        LimitSlot.job_type == job_type
    )
    for owner, expires_at in slots.tuples():
        held[owner] += expires_at > now
        served[owner] = max(served.get(owner, datetime.min), expires_at)
    owner = min(firsts, key=lambda name: (held[name], served.get(name, datetime.min), firsts[name]))
    return PostponedJob.get_or_none(PostponedJob.id == firsts[owner])


def take(postponed: PostponedJob) -> bool:
    """Claim a postponed job for sending; only one of several claimers gets True."""
    return PostponedJob.delete().where(PostponedJob.id == postponed.id).execute() == 1


def put_back(postponed: PostponedJob) -> None:
    """A claimed job whose message could not be sent waits again, in its place."""
    PostponedJob.insert(**postponed.__data__).on_conflict_ignore().execute()


@dataclass(frozen=True)
class Usage:
    """One job type's limit use now, across all workers."""

    running: int = 0
    started_in_window: int = 0
    postponed: int = 0


def usage(owner: str | None = None) -> dict[str, Usage]:
    """Slots in use and jobs postponed per job type (postponed jobs of `owner` only, if
    given: the slots are shared capacity, the postponed jobs someone's own)."""
    now = utcnow()
    in_use: Counter[tuple[str, str]] = Counter()
    live = LimitSlot.select(LimitSlot.job_type, LimitSlot.kind, peewee.fn.COUNT(LimitSlot.slot))
    for job_type, kind, count in (
        live.where(LimitSlot.expires_at > now).group_by(LimitSlot.job_type, LimitSlot.kind).tuples()
    ):
        in_use[(job_type, kind)] = count
    waiting = PostponedJob.select(PostponedJob.job_type, peewee.fn.COUNT(PostponedJob.id))
    if owner is not None:
        waiting = waiting.where(PostponedJob.owner == owner)
    postponed = dict(waiting.group_by(PostponedJob.job_type).tuples())
    types = {job_type for job_type, _ in in_use} | set(postponed)
    return {
        job_type: Usage(
            running=in_use[(job_type, CONCURRENCY)],
            started_in_window=in_use[(job_type, RATE)],
            postponed=postponed.get(job_type, 0),
        )
        for job_type in sorted(types)
    }


def lease_until(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
