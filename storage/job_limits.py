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

Every function takes plain values and uses the database bound to the models. The ones on a
limited job's way (its start, its postponement, its end handing the slot on) run SQL
written once per database (`_run`), as `skillq.storage.job_writes` does: peewee took about
0.3 ms of Python to build each of those statements, twenty times what SQLite needs to run
one, and a handover runs about ten.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee

from skillq.storage.database import database_proxy
from skillq.storage.models import BaseModel, Job, utcnow

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
    group = (job_type, kind)
    values = (hold.holder, hold.owner, hold.job_id)
    return _take(_SLOT_STATEMENTS, group, capacity, values, expires_at)


def acquire_owner(job_type: str, capacity: int, hold: Hold, expires_at: datetime) -> bool:
    """Take one of `hold.owner`'s `capacity` running slots of `job_type` (`ALL_TYPES`: of
    every type together); False when the owner uses them all."""
    group = (hold.owner, job_type)
    values = (hold.holder, hold.job_id)
    return _take(_OWNER_STATEMENTS, group, capacity, values, expires_at)


@dataclass(frozen=True)
class _SlotStatements:
    """`_take`'s three statements on one slot table: its columns naming a group of slots,
    and those naming the hold."""

    table: str
    group: tuple[str, ...]
    hold: tuple[str, ...]

    def select(self) -> str:
        return f"SELECT slot, expires_at FROM {self.table} WHERE {self._in_group()}"

    def insert(self) -> str:
        columns = ", ".join(f'"{name}"' for name in (*self.group, "slot", "expires_at", *self.hold))
        marks = ", ".join(["{p}"] * (len(self.group) + 2 + len(self.hold)))
        return f"INSERT INTO {self.table} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"

    def update(self) -> str:
        sets = ", ".join(f'"{name}" = {{p}}' for name in ("expires_at", *self.hold))
        return (
            f"UPDATE {self.table} SET {sets}"
            f" WHERE {self._in_group()} AND slot = {{p}} AND expires_at <= {{p}}"
        )

    def _in_group(self) -> str:
        return " AND ".join(f'"{name}" = {{p}}' for name in self.group)


def _take(
    statements: _SlotStatements,
    group: tuple[str, ...],
    capacity: int,
    values: tuple[str, ...],
    expires_at: datetime,
) -> bool:
    """One read and, per free slot tried, one write that either lands or finds the slot taken
    by someone quicker: an insert the primary key refuses, or a conditional update of a row
    whose lease ran out."""
    now = utcnow()
    rows = {slot: _moment(expiry) for slot, expiry in _run(statements.select(), *group)}
    if sum(expiry > now for expiry in rows.values()) >= capacity:
        return False
    until, cutoff = _stamp(expires_at), _stamp(now)
    for slot in range(capacity):
        if slot not in rows:
            cursor = _run(statements.insert(), *group, slot, until, *values)
        elif rows[slot] <= now:
            cursor = _run(statements.update(), until, *values, *group, slot, cutoff)
        else:
            continue
        if cursor.rowcount == 1:
            return True
    return False


def extend(holder: str, kind: str, expires_at: datetime) -> bool:
    """Move the expiry of `holder`'s slot of `kind`; False if it no longer holds one (its
    reservation ran out and another job took the slot)."""
    sql = (
        "UPDATE {slots} SET expires_at = {p} WHERE holder = {p} AND kind = {p} AND expires_at > {p}"
    )
    return _run(sql, _stamp(expires_at), holder, kind, _stamp(utcnow())).rowcount > 0


def expiry(holder: str, kind: str) -> datetime | None:
    """When `holder`'s slot of `kind` runs out; None if it holds none."""
    sql = "SELECT expires_at FROM {slots} WHERE holder = {p} AND kind = {p}"
    row = _run(sql, holder, kind).fetchone()
    return None if row is None else _moment(row[0])


def extend_owner(holder: str, expires_at: datetime) -> int:
    """Move the expiry of `holder`'s live owner slots; how many it still holds."""
    sql = "UPDATE {owner_slots} SET expires_at = {p} WHERE holder = {p} AND expires_at > {p}"
    return _run(sql, _stamp(expires_at), holder, _stamp(utcnow())).rowcount


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
    _run(
        "UPDATE {slots} SET expires_at = {p} WHERE holder = {p} AND kind = {p}",
        _stamp(utcnow()),
        holder,
        CONCURRENCY,
    )
    _run("DELETE FROM {owner_slots} WHERE holder = {p}", holder)


def hand_over(holder: str, hold: Hold, expires_at: datetime) -> bool:
    """Give `holder`'s concurrency slot, released earlier in the same transaction, to `hold`
    until `expires_at`: one write, where taking a free slot reads the slots first, and the
    slot goes to the job that waited for it. False if `holder` has no slot row (its lease ran
    out and another job took it)."""
    sql = (
        'UPDATE {slots} SET holder = {p}, "owner" = {p}, job_id = {p}, expires_at = {p}'
        " WHERE holder = {p} AND kind = {p}"
    )
    values = (hold.holder, hold.owner, hold.job_id, _stamp(expires_at), holder, CONCURRENCY)
    return _run(sql, *values).rowcount == 1


def all_busy(job_type: str, kind: str, capacity: int, margin_secs: float) -> bool:
    """Whether every slot of `kind` is held for at least `margin_secs` more (a slot released
    at about this moment, on a clock a little ahead, counts as free)."""
    sql = "SELECT slot FROM {slots} WHERE job_type = {p} AND kind = {p} AND expires_at > {p}"
    after = _stamp(utcnow() + timedelta(seconds=margin_secs))
    return len(_run(sql, job_type, kind, after).fetchall()) >= capacity


def single_writer() -> bool:
    """Whether the store has one writer at a time (SQLite): a transaction whose first
    statement writes reads everything committed before it, and nothing else commits until
    it ends. (PostgreSQL's statements each read what was committed when they began.)"""
    return not isinstance(database_proxy.obj, peewee.PostgresqlDatabase)


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


def applicant(job_id: str) -> Job | None:
    """The job a limited message is for, with only what the start gate reads of it: its id,
    state, owner and priority (every other field is left at its default). Read for every
    delivery of a limited type, a postponed one included; a whole row cost ~0.5 ms of
    Python, its JSON columns parsed."""
    sql = 'SELECT state, "owner", priority FROM {jobs} WHERE id = {p}'
    row = _run(sql, job_id).fetchone()
    if row is None:
        return None
    state, owner, priority = row
    return Job(id=job_id, state=state, owner=owner, priority=priority)


def postpone(job_id: str, job_type: str, owner: str, priority: int, message: str) -> bool:
    """Keep a job that found no free slot; False if it is already kept (a duplicate
    delivery of a postponed job, which must not run twice)."""
    sql = (
        'INSERT INTO {postponed} (job_id, job_type, "owner", priority, message, postponed_at)'
        " VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING"
    )
    values = (job_id, job_type, owner, priority, message, _stamp(utcnow()))
    return _run(sql, *values).rowcount == 1


def has_postponed(job_type: str) -> bool:
    sql = "SELECT 1 FROM {postponed} WHERE job_type = {p} LIMIT 1"
    return _run(sql, job_type).fetchone() is not None


def next_postponed(
    job_type: str, max_running: int | None = None, max_running_of_type: int | None = None
) -> PostponedJob | None:
    """The job to start next when a slot of `job_type` frees, skipping the owners that run
    `max_running` jobs (of every type) or `max_running_of_type` (of this one) already: the
    highest priority first; within it, round-robin by owner (the owner holding fewest slots
    of the type goes first, then the one the slots served least recently, then the one whose
    oldest job waited longest), oldest first within an owner."""
    heads = (
        'SELECT "owner", priority, MIN(id) FROM {postponed} WHERE job_type = {p}'
        ' GROUP BY "owner", priority'
    )
    rows = _run(heads, job_type).fetchall()
    blocked = _owners_at_cap(job_type, max_running, max_running_of_type) if rows else set()
    rows = [row for row in rows if row[0] not in blocked]
    if not rows:
        return None
    top = max(priority for _, priority, _ in rows)
    firsts = {owner: first for owner, priority, first in rows if priority == top}
    now = utcnow()
    held: Counter[str] = Counter()
    served: dict[str, datetime] = {}  # when a slot last ended (or will end) for each owner
    for owner, stamp in _run(
        'SELECT "owner", expires_at FROM {slots} WHERE job_type = {p}', job_type
    ):
        expires_at = _moment(stamp)
        held[owner] += expires_at > now
        served[owner] = max(served.get(owner, datetime.min), expires_at)
    owner = min(firsts, key=lambda name: (held[name], served.get(name, datetime.min), firsts[name]))
    columns = 'id, job_id, job_type, "owner", priority, message, postponed_at'
    row = _run(f"SELECT {columns} FROM {{postponed}} WHERE id = {{p}}", firsts[owner]).fetchone()
    if row is None:
        return None  # another worker took it out since the first look
    fields = dict(
        zip(("id", "job_id", "job_type", "owner", "priority", "message"), row, strict=False)
    )
    return PostponedJob(**fields, postponed_at=_moment(row[-1]))


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
    return _run("DELETE FROM {postponed} WHERE id = {p}", postponed.id).rowcount == 1


def put_back(postponed: PostponedJob) -> None:
    """A claimed job whose message could not be sent waits again, in its place."""
    PostponedJob.insert(**postponed.__data__).on_conflict_ignore().execute()


def lease_until(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


_TABLES = {
    "slots": f'"{LimitSlot._meta.table_name}"',
    "owner_slots": f'"{OwnerSlot._meta.table_name}"',
    "postponed": f'"{PostponedJob._meta.table_name}"',
    "jobs": f'"{Job._meta.table_name}"',
}
_SLOT_STATEMENTS = _SlotStatements(
    _TABLES["slots"], ("job_type", "kind"), ("holder", "owner", "job_id")
)
_OWNER_STATEMENTS = _SlotStatements(
    _TABLES["owner_slots"], ("owner", "job_type"), ("holder", "job_id")
)


@functools.cache
def _sql(statement: str, p: str) -> str:
    return statement.format(p=p, **_TABLES)


def _run(statement: str, *values: Any) -> Any:
    """Run `statement` (SQL with `{p}` for each value and `{slots}`, `{owner_slots}`,
    `{postponed}` for the tables) on the bound database; the cursor."""
    return database_proxy.execute_sql(_sql(statement, database_proxy.param), values)


def _stamp(moment: datetime) -> Any:
    """A moment as the driver stores it in a DateTimeField."""
    return LimitSlot.expires_at.db_value(moment)


def _moment(stamp: Any) -> datetime:
    """A DateTimeField's value as read by a raw statement (a string on SQLite)."""
    return LimitSlot.expires_at.python_value(stamp)
