"""Schema version 19, frozen: a job's start changes no indexed column.

PostgreSQL updates a row in place, a HOT update writing no index entry, only when no index
covers a column the update changes. A start changes `state` and `started_at`, which the
(state, priority, created_at) and the `started_at` indexes covered, so every start added an
entry to each of the job table's eleven indexes. Both go. Open (pending or running) jobs are
the rows whose `completed_at` is NULL, as every way a job ends sets it and an explicit retry
clears it, so the queries on an open state say `completed_at IS NULL` too
(`models.in_open_state`) and find their rows in the `completed_at` index, now (completed_at,
owner, type): an owner's open jobs, of one type or all (quotas, listings), are one range of
it on SQLite too, which plans without statistics; a queue position counts the jobs ahead in a
partial index of the open jobs by (queue, priority, created_at). The queue history's starts
in its window range over `completed_at` as well: a job that started at or after a moment is
still open or ended after it.

Measured with `bench/store_hot_updates.py` (one job written after the other, 3,000 x 3):
PostgreSQL's CPU per job 1,127 -> 997 µs; its write-ahead log per start 1,160 -> 347 bytes,
per job 3,510 -> 2,520. Without the queued-jobs index (twice): 1,013 / 1,103 -> 950 / 1,047 µs,
and 2,440 bytes per job.
"""

from __future__ import annotations

import peewee

ENDED_INDEX = "skillq_job_completed_at_owner_type"
#: The open jobs by queue, priority and age: a queue position reads the jobs ahead only.
QUEUED_INDEX = "skillq_job_queued"


def upgrade(database: peewee.Database) -> None:
    # The queries rely on open jobs having no `completed_at`. No version wrote one on an open
    # job; a store edited by hand might hold some, and they would vanish from every open-job
    # query. The old state index still serves this query.
    database.execute_sql(
        "UPDATE \"skillq_job\" SET completed_at = NULL WHERE state IN ('pending', 'running')"
        " AND completed_at IS NOT NULL"
    )
    database.execute_sql(
        f'CREATE INDEX IF NOT EXISTS "{ENDED_INDEX}"'
        ' ON "skillq_job" ("completed_at", "owner", "type")'
    )
    database.execute_sql(
        f'CREATE INDEX IF NOT EXISTS "{QUEUED_INDEX}"'
        ' ON "skillq_job" ("queue", "priority", "created_at") WHERE "completed_at" IS NULL'
    )
    for replaced in (
        "skillq_job_completed_at",
        "skillq_job_started_at",
        "jobv1_state_priority_created_at",
    ):
        database.execute_sql(f'DROP INDEX IF EXISTS "{replaced}"')


def downgrade(database: peewee.Database) -> None:
    database.execute_sql(
        'CREATE INDEX IF NOT EXISTS "jobv1_state_priority_created_at"'
        ' ON "skillq_job" ("state", "priority", "created_at")'
    )
    for column in ("started_at", "completed_at"):
        database.execute_sql(
            f'CREATE INDEX IF NOT EXISTS "skillq_job_{column}" ON "skillq_job" ("{column}")'
        )
    for index in (ENDED_INDEX, QUEUED_INDEX):
        database.execute_sql(f'DROP INDEX IF EXISTS "{index}"')
