"""Global limits per job type, kept in the store so they hold across every worker process.

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

Every function takes plain values and uses the database bound to the models.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

import peewee

from skillq.storage.models import BaseModel, utcnow

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


@dataclass(frozen=True)
class Hold:
    """Who takes a slot: the token, and the job (for `workers status` and fairness)."""

    holder: str
    owner: str
    job_id: str


def acquire(job_type: str, kind: str, capacity: int, hold: Hold, expires_at: datetime) -> bool:
    """Take one of the `capacity` slots of `kind` for `hold` until `expires_at`; False when
    every slot is in use. Never blocks and never waits (see `_take`)."""
    values = {"holder": hold.holder, "owner": hold.owner, "job_id": hold.job_id}
    group = {"job_type": job_type, "kind": kind}
    return _take(LimitSlot, group, capacity, values, expires_at)


def acquire_owner(job_type: str, capacity: int, hold: Hold, expires_at: datetime) -> bool:
    """Take one of `hold.owner`'s `capacity` running slots of `job_type` (`ALL_TYPES`: of
    every type together); False when the owner uses them all."""
    values = {"holder": hold.holder, "job_id": hold.job_id}
    group = {"owner": hold.owner, "job_type": job_type}
    return _take(OwnerSlot, group, capacity, values, expires_at)


def _take(
    model: type[BaseModel],
    group: dict[str, str],
    capacity: int,
    values: dict[str, Any],
    expires_at: datetime,
) -> bool:
    """One read and, per free slot tried, one write that either lands or finds the slot taken
    by someone quicker: an insert the primary key refuses, or a conditional update of a row
    whose lease ran out."""
    now = utcnow()
    in_group = reduce(operator.and_, (getattr(model, key) == value for key, value in group.items()))
    query = model.select(model.slot, model.expires_at).where(in_group)
    rows = {row.slot: row.expires_at for row in query}
    if sum(expiry > now for expiry in rows.values()) >= capacity:
        return False
    for slot in range(capacity):
        if slot not in rows:
            row = {**group, "slot": slot, "expires_at": expires_at, **values}
            inserted = model.insert(**row).on_conflict_ignore().as_rowcount().execute()
            if inserted == 1:
                return True
        elif rows[slot] <= now:
            taken = (
                model.update(expires_at=expires_at, **values)
                .where(in_group & (model.slot == slot) & (model.expires_at <= now))
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


def extend_owner(holder: str, expires_at: datetime) -> int:
    """Move the expiry of `holder`'s live owner slots; how many it still holds."""
    query = OwnerSlot.update(expires_at=expires_at).where(
        (OwnerSlot.holder == holder) & (OwnerSlot.expires_at > utcnow())
    )
    return query.execute()


def renew(holders: Iterable[str], expires_at: datetime) -> int:
    """Renew the concurrency and owner leases of the attempts a live worker runs."""
    holders = list(holders)
    if not holders:
        return 0
    # Only live ones: a slot released meanwhile stays released.
    now = utcnow()
    query = LimitSlot.update(expires_at=expires_at).where(
        (LimitSlot.holder.in_(holders))
        & (LimitSlot.kind == CONCURRENCY)
        & (LimitSlot.expires_at > now)
    )
    owners = OwnerSlot.update(expires_at=expires_at).where(
        OwnerSlot.holder.in_(holders) & (OwnerSlot.expires_at > now)
    )
    return query.execute() + owners.execute()


def release(holder: str) -> None:
    """Free `holder`'s concurrency and owner slots; its rate slot stays until it expires. The
    concurrency row stays, expired now, as the record of whom the slot served last (see
    `next_postponed`)."""
    query = LimitSlot.update(expires_at=utcnow()).where(
        (LimitSlot.holder == holder) & (LimitSlot.kind == CONCURRENCY)
    )
    query.execute()
    OwnerSlot.delete().where(OwnerSlot.holder == holder).execute()


def forget(holder: str) -> None:
    """Free every slot of a reservation that was never used (its message could not be sent)."""
    LimitSlot.delete().where(LimitSlot.holder == holder).execute()
    OwnerSlot.delete().where(OwnerSlot.holder == holder).execute()


def rekey(holder: str, new_holder: str) -> None:
    """Hand `holder`'s slots to `new_holder` (a remote attempt's slots go by its job and
    attempt, so the server can release them when the worker reports)."""
    LimitSlot.update(holder=new_holder).where(LimitSlot.holder == holder).execute()
    OwnerSlot.update(holder=new_holder).where(OwnerSlot.holder == holder).execute()


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


def next_postponed(
    job_type: str, max_running: int | None = None, max_running_of_type: int | None = None
) -> PostponedJob | None:
    """The job to start next when a slot of `job_type` frees, skipping the owners that run
    `max_running` jobs (of every type) or `max_running_of_type` (of this one) already: the
    highest priority first; within it, round-robin by owner (the owner holding fewest slots
    of the type goes first, then the one the slots served least recently, then the one whose
    oldest job waited longest), oldest first within an owner."""
    heads = PostponedJob.select(
        PostponedJob.owner, PostponedJob.priority, peewee.fn.MIN(PostponedJob.id)
    ).where(PostponedJob.job_type == job_type)
    blocked = _owners_at_cap(job_type, max_running, max_running_of_type)
    if blocked:
        heads = heads.where(PostponedJob.owner.not_in(blocked))
    rows = list(heads.group_by(PostponedJob.owner, PostponedJob.priority).tuples())
    if not rows:
        return None
    top = max(priority for _, priority, _ in rows)
    firsts = {owner: first for owner, priority, first in rows if priority == top}
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


def _owners_at_cap(
    job_type: str, max_running: int | None, max_running_of_type: int | None
) -> set[str]:
    """Owners whose jobs could not start now, whatever the type's own limits."""
    caps = {ALL_TYPES: max_running, job_type: max_running_of_type}
    caps = {scope: cap for scope, cap in caps.items() if cap is not None}
    if not caps:
        return set()
    live = (
        OwnerSlot.select(OwnerSlot.owner, OwnerSlot.job_type, peewee.fn.COUNT(OwnerSlot.slot))
        .where(OwnerSlot.job_type.in_(list(caps)) & (OwnerSlot.expires_at > utcnow()))
        .group_by(OwnerSlot.owner, OwnerSlot.job_type)
    )
    return {owner for owner, scope, count in live.tuples() if count >= caps[scope]}


def postponed_types(owner: str | None = None) -> list[str]:
    """The types with postponed jobs (of `owner`): what an owner slot freeing may wake."""
    query = PostponedJob.select(PostponedJob.job_type).distinct()
    if owner is not None:
        query = query.where(PostponedJob.owner == owner)
    return sorted(job_type for (job_type,) in query.tuples())


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


def owner_usage(owner: str | None = None) -> dict[str, dict[str, Any]]:
    """Per owner (only `owner`, if given): `running`, its jobs holding a running slot by
    scope (`ALL_TYPES` or a type), and `postponed`, its jobs waiting for any slot."""
    now = utcnow()
    running = OwnerSlot.select(
        OwnerSlot.owner, OwnerSlot.job_type, peewee.fn.COUNT(OwnerSlot.slot)
    ).where(OwnerSlot.expires_at > now)
    waiting = PostponedJob.select(PostponedJob.owner, peewee.fn.COUNT(PostponedJob.id))
    if owner is not None:
        running = running.where(OwnerSlot.owner == owner)
        waiting = waiting.where(PostponedJob.owner == owner)
    found: dict[str, dict[str, Any]] = {}
    for name, scope, count in running.group_by(OwnerSlot.owner, OwnerSlot.job_type).tuples():
        found.setdefault(name, {"running": {}, "postponed": 0})["running"][scope] = count
    for name, count in waiting.group_by(PostponedJob.owner).tuples():
        found.setdefault(name, {"running": {}, "postponed": 0})["postponed"] = count
    return dict(sorted(found.items()))


def lease_until(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
