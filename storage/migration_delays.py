"""Schema step v12 (frozen): delayed jobs' `scheduled_for` column.

In a module of its own so the step stays as it was written while `migrations.py` grows.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate


def add_job_scheduled_for(database: peewee.Database) -> None:
    """v12: when a delayed job may start (NULL: as soon as a worker is free)."""
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.add_column("skillq_job", "scheduled_for", peewee.DateTimeField(null=True)))


def drop_job_scheduled_for(database: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.drop_column("skillq_job", "scheduled_for"))
