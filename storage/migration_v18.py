"""Schema version 18, frozen: the job table's index on `state` alone goes.

The index on (state, priority, created_at) serves every query that filters on the state, its
first column, so the one on `state` alone only cost: every submit writes each of the job
table's indexes, and every start and finish each index covering a column it changes (on
SQLite three, now two). Measured on the store's own write path (3,000 jobs x 3 rounds, this
process's CPU per call, SQLite, twice): INSERT 299/311 → 281/286 µs, start 270/250 →
216/236, finish 246/257 → 234/228.
"""

from __future__ import annotations

import peewee


def upgrade(database: peewee.Database) -> None:
    database.execute_sql('DROP INDEX IF EXISTS "jobv1_state"')


def downgrade(database: peewee.Database) -> None:
    database.execute_sql('CREATE INDEX IF NOT EXISTS "jobv1_state" ON "skillq_job" ("state")')
