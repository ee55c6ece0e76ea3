"""Limit use now, across all workers, as the stats read it (`skillq.jobs.limits`): slots in
use per job type and kind, per owner, and jobs postponed, from the tables of
`skillq.storage.limit_tables`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import peewee

from skillq.storage.limit_tables import CONCURRENCY, RATE, LimitSlot, OwnerSlot, PostponedJob
from skillq.storage.models import utcnow


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
