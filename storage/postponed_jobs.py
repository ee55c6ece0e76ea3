"""Jobs of a limited type that found no free slot, kept with their message until one frees
(`skillq_postponed_job`, `skillq.storage.limit_tables`): then one is taken out, a conditional
delete, so once, and sent again (`skillq.brokers.limiter`). Which one: the highest priority,
round-robin by owner within it, skipping owners at their `[quotas] max_running`.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import peewee

from skillq.storage.limit_tables import ALL_TYPES, OwnerSlot, PostponedJob, execute, moment, stamp
from skillq.storage.models import utcnow


def postpone(job_id: str, job_type: str, owner: str, priority: int, message: str) -> bool:
    """Keep a job that found no free slot; False if it is already kept (a duplicate
    delivery of a postponed job, which must not run twice)."""
    sql = (
        'INSERT INTO {postponed} (job_id, job_type, "owner", priority, message, postponed_at)'
        " VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING"
    )
    values = (job_id, job_type, owner, priority, message, stamp(utcnow()))
    return execute(sql, *values).rowcount == 1


def has_postponed(job_type: str) -> bool:
    sql = "SELECT 1 FROM {postponed} WHERE job_type = {p} LIMIT 1"
    return execute(sql, job_type).fetchone() is not None


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
    rows = execute(heads, job_type).fetchall()
    blocked = _owners_at_cap(job_type, max_running, max_running_of_type) if rows else set()
    rows = [row for row in rows if row[0] not in blocked]
    if not rows:
        return None
    top = max(priority for _, priority, _ in rows)
    firsts = {owner: first for owner, priority, first in rows if priority == top}
    now = utcnow()
    held: Counter[str] = Counter()
    served: dict[str, datetime] = {}  # when a slot last ended (or will end) for each owner
    for owner, expiry in execute(
        'SELECT "owner", expires_at FROM {slots} WHERE job_type = {p}', job_type
    ):
        expires_at = moment(expiry)
        held[owner] += expires_at > now
        served[owner] = max(served.get(owner, datetime.min), expires_at)
    owner = min(firsts, key=lambda name: (held[name], served.get(name, datetime.min), firsts[name]))
    columns = 'id, job_id, job_type, "owner", priority, message, postponed_at'
    row = execute(f"SELECT {columns} FROM {{postponed}} WHERE id = {{p}}", firsts[owner]).fetchone()
    if row is None:
        return None  # another worker took it out since the first look
    fields = dict(
        zip(("id", "job_id", "job_type", "owner", "priority", "message"), row, strict=False)
    )
    return PostponedJob(**fields, postponed_at=moment(row[-1]))


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
    return execute("DELETE FROM {postponed} WHERE id = {p}", postponed.id).rowcount == 1


def put_back(postponed: PostponedJob) -> None:
    """A claimed job whose message could not be sent waits again, in its place."""
    PostponedJob.insert(**postponed.__data__).on_conflict_ignore().execute()
