"""Desired worker pool sizes: the threads per worker process an operator asked for a queue.

`skillq workers scale ai=4` and `PUT /api/v1/workers/scale` write a row per queue; the
supervisor of `skillq up` (or of `skillq worker` for every queue) reads them every few
seconds and restarts that queue's worker group with the new size. A queue with no row keeps
its `[workers] <queue>_workers` setting.
"""

from __future__ import annotations

import peewee

from skillq.storage.models import BaseModel, utcnow


class DesiredPool(BaseModel):
    queue = peewee.CharField(max_length=100, primary_key=True)
    threads = peewee.IntegerField()
    updated_at = peewee.DateTimeField()
    #: Who asked (the API caller's subject, or "cli").
    updated_by = peewee.CharField(max_length=200)

    class Meta:
        table_name = "skillq_desired_pool"


def desired_threads() -> dict[str, int]:
    """Queue -> threads, for the queues an operator has scaled."""
    return {row.queue: row.threads for row in DesiredPool.select()}


def set_desired_threads(threads: dict[str, int], *, updated_by: str) -> None:
    """Record the sizes in one transaction, so a reader never sees half a request."""
    now = utcnow()
    rows = [
        {"queue": queue, "threads": count, "updated_at": now, "updated_by": updated_by}
        for queue, count in sorted(threads.items())
    ]
    if not rows:
        return
    with DesiredPool._meta.database.atomic():
        DesiredPool.insert_many(rows).on_conflict(
            conflict_target=[DesiredPool.queue],
            update={
                DesiredPool.threads: peewee.EXCLUDED.threads,
                DesiredPool.updated_at: peewee.EXCLUDED.updated_at,
                DesiredPool.updated_by: peewee.EXCLUDED.updated_by,
            },
        ).execute()


def reset_desired(queues: list[str]) -> None:
    """Forget the operator's sizes: these queues follow their settings again."""
    DesiredPool.delete().where(DesiredPool.queue.in_(queues)).execute()
