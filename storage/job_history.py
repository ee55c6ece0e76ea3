"""The last minutes of the queue, for the dashboard: jobs finished and pending depth per minute.

Nothing is sampled or stored for this: both come from the jobs' own timestamps, with range
queries on indexed columns (`created_at`, `completed_at`) grouped per minute in SQL, so the
cost follows the traffic of the window, not the size of the table. `started_at` has no index
(a start must change no indexed column, schema 19): a job that started in the window either
is still open or ended after its start, so the starts are found among the open jobs and
those that ended in the window, both through `completed_at`'s indexes.

Pending depth is reconstructed backwards from the count now: a job that arrived after a
moment was not yet waiting then, and one that left the queue after it (started, or ended
without starting: cancelled while pending) still was. A retried attempt is not seen as a
separate stay in the queue: the row keeps its first start only, so a job that went back to
pending counts as waiting from that first start on. Jobs purged by their TTL are gone from
the history too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee

from skillq.storage.database import database_proxy
from skillq.storage.models import Job, JobState, in_open_state, utcnow

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class QueueMinute:
    start: datetime
    completed: int
    failed: int
    #: Jobs waiting at the end of the minute (now, for the current one).
    pending: int


def _minute_of(column: str) -> str:
    """SQL for the minute (since the epoch) a UTC timestamp column falls in."""
    if isinstance(database_proxy.obj, peewee.PostgresqlDatabase):
        return f"CAST(FLOOR(EXTRACT(EPOCH FROM {column}) / 60) AS BIGINT)"
    return f"CAST(strftime('%s', {column}) AS INTEGER) / 60"


def _epoch_minute(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds()) // 60


def _grouped(column: str, since: datetime, owner: str | None, *extra: str) -> list[tuple]:
    """`(minute, *extra, count)` of the jobs whose `column` lies at or after `since`."""
    p = database_proxy.param
    keys = ", ".join([_minute_of(column), *extra])
    sql = f'SELECT {keys}, COUNT(*) FROM "{Job._meta.table_name}" WHERE {column} >= {p}'
    params: list[object] = [Job.created_at.db_value(since)]
    if column == "started_at":  # not indexed: found through `completed_at` (module doc)
        sql += f" AND (completed_at IS NULL OR completed_at >= {p})"
        params.append(params[0])
    if owner is not None:
        sql += f" AND owner = {p}"
        params.append(owner)
    sql += " GROUP BY " + ", ".join(str(i) for i in range(1, len(extra) + 2))
    return list(database_proxy.execute_sql(sql, params).fetchall())


def queue_history(
    minutes: int, *, owner: str | None = None, now: datetime | None = None
) -> list[QueueMinute]:
    """One entry per minute, oldest first, the last being the current (partial) minute."""
    now = now or utcnow()
    current = now.replace(second=0, microsecond=0)
    since = current - (minutes - 1) * MINUTE
    first = _epoch_minute(since)

    completed: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    left: Counter[int] = Counter()  # left the queue (started, or ended unstarted)
    arrived: Counter[int] = Counter()
    never_started = "CASE WHEN started_at IS NULL THEN 1 ELSE 0 END"
    for minute, state, unstarted, count in _grouped(
        "completed_at", since, owner, "state", never_started
    ):
        if state == JobState.COMPLETED:
            completed[minute] += count
        elif state == JobState.FAILED:
            failed[minute] += count
        if unstarted:
            left[minute] += count
    for minute, count in _grouped("started_at", since, owner):
        left[minute] += count
    for minute, count in _grouped("created_at", since, owner):
        arrived[minute] += count
    waiting = Job.select().where(in_open_state(JobState.PENDING))
    if owner is not None:
        waiting = waiting.where(Job.owner == owner)
    pending = waiting.count()

    history = []
    for index in reversed(range(minutes)):
        minute = first + index
        history.append(
            QueueMinute(
                start=since + index * MINUTE,
                completed=completed[minute],
                failed=failed[minute],
                pending=max(pending, 0),
            )
        )
        # Walking back past this minute: what arrived in it was not waiting before it,
        # what left in it still was.
        pending += left[minute] - arrived[minute]
    history.reverse()
    return history


def oldest_pending(owner: str | None = None) -> dict[str, datetime]:
    """When the oldest pending job of each queue (with any) was created."""
    query = Job.select(Job.queue, peewee.fn.MIN(Job.created_at)).where(
        in_open_state(JobState.PENDING)
    )
    if owner is not None:
        query = query.where(Job.owner == owner)
    oldest = {}
    for queue, created_at in query.group_by(Job.queue).tuples():
        # SQLite hands an aggregate back as text, not through the field's converter.
        oldest[queue] = Job.created_at.python_value(created_at)
    return oldest
