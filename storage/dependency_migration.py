"""Schema step v11, frozen: job dependencies and workflows.

Three job columns (`waiting`, `depends_on`, `workflow_id`), the edge table and the workflow
table, as they were at v11 (never the current models), so an old store upgrades through
this step exactly as it happened.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate

from skillq.storage.models import JSONField

_WORKFLOW_INDEX = "skillq_job_workflow_id"


def _tables_v11(database: peewee.Database) -> list[type[peewee.Model]]:
    class JobV11(peewee.Model):
        id = peewee.CharField(max_length=36, primary_key=True)

        class Meta:
            table_name = "skillq_job"

    class JobDependencyV11(peewee.Model):
        job = peewee.ForeignKeyField(JobV11, column_name="job_id", on_delete="CASCADE")
        dependency_id = peewee.CharField(max_length=36, index=True)
        on_failure = peewee.CharField(max_length=16)

        class Meta:
            table_name = "skillq_job_dependency"
            primary_key = peewee.CompositeKey("job", "dependency_id")

    class WorkflowV11(peewee.Model):
        id = peewee.CharField(max_length=36, primary_key=True)
        owner = peewee.CharField(max_length=200, index=True)
        jobs = JSONField()
        created_at = peewee.DateTimeField()
        expires_at = peewee.DateTimeField(index=True)

        class Meta:
            table_name = "skillq_workflow"

    for model in (JobV11, JobDependencyV11, WorkflowV11):
        model._meta.set_database(database)
    return [JobDependencyV11, WorkflowV11]


def add_dependencies_v11(database: peewee.Database) -> None:
    """v11: jobs held until their dependencies end, the edges, and workflows."""
    migrator = SchemaMigrator.from_database(database)
    migrate(
        migrator.add_column("skillq_job", "waiting", peewee.BooleanField(default=False)),
        migrator.add_column("skillq_job", "depends_on", JSONField(null=True)),
        migrator.add_column(
            "skillq_job", "workflow_id", peewee.CharField(max_length=36, null=True)
        ),
        migrator.add_index("skillq_job", ("workflow_id",)),
    )
    database.create_tables(_tables_v11(database), safe=False)


def drop_dependencies_v11(database: peewee.Database) -> None:
    database.drop_tables(_tables_v11(database), safe=False)
    migrator = SchemaMigrator.from_database(database)
    migrate(
        migrator.drop_index("skillq_job", _WORKFLOW_INDEX),
        migrator.drop_column("skillq_job", "workflow_id"),
        migrator.drop_column("skillq_job", "depends_on"),
        migrator.drop_column("skillq_job", "waiting"),
    )
