"""Migration 13, frozen: the tables of global job-type limits (`skillq.storage.limit_tables`)."""

from __future__ import annotations

import peewee


def _limit_tables_v13(database: peewee.Database) -> tuple[type[peewee.Model], ...]:
    class LimitSlotV13(peewee.Model):
        job_type = peewee.CharField(max_length=100)
        kind = peewee.CharField(max_length=16)
        slot = peewee.IntegerField()
        holder = peewee.CharField(max_length=36, index=True)
        owner = peewee.CharField(max_length=200)
        job_id = peewee.CharField(max_length=36)
        expires_at = peewee.DateTimeField()

        class Meta:
            table_name = "skillq_limit_slot"
            primary_key = peewee.CompositeKey("job_type", "kind", "slot")

    class PostponedJobV13(peewee.Model):
        id = peewee.AutoField()
        job_id = peewee.CharField(max_length=36, unique=True)
        job_type = peewee.CharField(max_length=100)
        owner = peewee.CharField(max_length=200)
        priority = peewee.SmallIntegerField()
        message = peewee.TextField()
        postponed_at = peewee.DateTimeField()

        class Meta:
            table_name = "skillq_postponed_job"
            indexes = ((("job_type", "priority", "owner", "id"), False),)

    models = (LimitSlotV13, PostponedJobV13)
    for model in models:
        model._meta.set_database(database)
    return models


def create_limit_tables(database: peewee.Database) -> None:
    database.create_tables(_limit_tables_v13(database), safe=False)


def drop_limit_tables(database: peewee.Database) -> None:
    database.drop_tables(_limit_tables_v13(database), safe=False)
