"""Schema step 14: worker tokens and remote workers, frozen as they were at that version.

Kept out of `storage.migrations` (already long); `MIGRATIONS` lists it like any other step.
No lease table: a remote worker's lease on a job is the job row's `worker_id` and
`heartbeat_at`, the columns a local worker's attempt already uses.
"""

from __future__ import annotations

import peewee

from skillq.storage.models import JSONField


def _tables_v14(database: peewee.Database) -> list[type[peewee.Model]]:
    class WorkerTokenV14(peewee.Model):
        name = peewee.CharField(max_length=100, unique=True)
        digest = peewee.CharField(max_length=64, unique=True)
        queues = JSONField()
        capabilities = JSONField()
        created_at = peewee.DateTimeField()
        revoked_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "skillq_worker_token"

    class RemoteWorkerV14(peewee.Model):
        id = peewee.CharField(max_length=64, primary_key=True)
        token = peewee.CharField(max_length=100, index=True)
        queues = JSONField()
        capabilities = JSONField()
        skills = JSONField(null=True)
        registered_at = peewee.DateTimeField()

        class Meta:
            table_name = "skillq_remote_worker"

    tables: list[type[peewee.Model]] = [WorkerTokenV14, RemoteWorkerV14]
    for model in tables:
        model._meta.set_database(database)
    return tables


def add_worker_tokens(database: peewee.Database) -> None:
    database.create_tables(_tables_v14(database), safe=False)


def drop_worker_tokens(database: peewee.Database) -> None:
    database.drop_tables(_tables_v14(database), safe=False)
