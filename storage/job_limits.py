"""Global limits per job type, kept in the store so they hold across every worker process:
the slots of `skillq_limit_slot` (a type's concurrency and rate) and `skillq_owner_slot` (an
owner's `[quotas] max_running`), taken, renewed, released and handed over here. The tables,
and why their statements are SQL written once, are in `skillq.storage.limit_tables`.

Every function takes plain values and uses the database bound to the models.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee

from skillq.storage.database import database_proxy
from skillq.storage.limit_tables import (
    CONCURRENCY,
    TABLES,
    LimitSlot,
    OwnerSlot,
    execute,
    moment,
    stamp,
)
from skillq.storage.models import Job, utcnow


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
    rows = {slot: moment(expiry) for slot, expiry in execute(statements.select(), *group)}
    if sum(expiry > now for expiry in rows.values()) >= capacity:
        return False
    until, cutoff = stamp(expires_at), stamp(now)
    for slot in range(capacity):
        if slot not in rows:
            cursor = execute(statements.insert(), *group, slot, until, *values)
        elif rows[slot] <= now:
            cursor = execute(statements.update(), until, *values, *group, slot, cutoff)
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
    return execute(sql, stamp(expires_at), holder, kind, stamp(utcnow())).rowcount > 0


def expiry(holder: str, kind: str) -> datetime | None:
    """When `holder`'s slot of `kind` runs out; None if it holds none."""
    sql = "SELECT expires_at FROM {slots} WHERE holder = {p} AND kind = {p}"
    row = execute(sql, holder, kind).fetchone()
    return None if row is None else moment(row[0])


def extend_owner(holder: str, expires_at: datetime) -> int:
    """Move the expiry of `holder`'s live owner slots; how many it still holds."""
    sql = "UPDATE {owner_slots} SET expires_at = {p} WHERE holder = {p} AND expires_at > {p}"
    return execute(sql, stamp(expires_at), holder, stamp(utcnow())).rowcount


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
    `postponed_jobs.next_postponed`)."""
    execute(
        "UPDATE {slots} SET expires_at = {p} WHERE holder = {p} AND kind = {p}",
        stamp(utcnow()),
        holder,
        CONCURRENCY,
    )
    execute("DELETE FROM {owner_slots} WHERE holder = {p}", holder)


def hand_over(holder: str, hold: Hold, expires_at: datetime) -> bool:
    """Give `holder`'s concurrency slot, released earlier in the same transaction, to `hold`
    until `expires_at`: one write, where taking a free slot reads the slots first, and the
    slot goes to the job that waited for it. False if `holder` has no slot row (its lease ran
    out and another job took it)."""
    sql = (
        'UPDATE {slots} SET holder = {p}, "owner" = {p}, job_id = {p}, expires_at = {p}'
        " WHERE holder = {p} AND kind = {p}"
    )
    values = (hold.holder, hold.owner, hold.job_id, stamp(expires_at), holder, CONCURRENCY)
    return execute(sql, *values).rowcount == 1


def all_busy(job_type: str, kind: str, capacity: int, margin_secs: float) -> bool:
    """Whether every slot of `kind` is held for at least `margin_secs` more (a slot released
    at about this moment, on a clock a little ahead, counts as free)."""
    sql = "SELECT slot FROM {slots} WHERE job_type = {p} AND kind = {p} AND expires_at > {p}"
    after = stamp(utcnow() + timedelta(seconds=margin_secs))
    return len(execute(sql, job_type, kind, after).fetchall()) >= capacity


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
    row = execute(sql, job_id).fetchone()
    if row is None:
        return None
    state, owner, priority = row
    return Job(id=job_id, state=state, owner=owner, priority=priority)


def lease_until(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


_SLOT_STATEMENTS = _SlotStatements(
    TABLES["slots"], ("job_type", "kind"), ("holder", "owner", "job_id")
)
_OWNER_STATEMENTS = _SlotStatements(
    TABLES["owner_slots"], ("owner", "job_type"), ("holder", "job_id")
)
