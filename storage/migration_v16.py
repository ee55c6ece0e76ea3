"""Schema version 16, frozen: the owner slot table of `[quotas] max_running`
(`skillq.storage.limit_tables.OwnerSlot`)."""

from __future__ import annotations

import peewee


def _owner_slot_table_v16(database: peewee.Database) -> type[peewee.Model]:
    class OwnerSlotV16(peewee.Model):
        owner = peewee.CharField(max_length=200)
        job_type = peewee.CharField(max_length=100)
        slot = peewee.IntegerField()
        holder = peewee.CharField(max_length=36, index=True)
        job_id = peewee.CharField(max_length=36)
        expires_at = peewee.DateTimeField()

        class Meta:
            table_name = "skillq_owner_slot"
            primary_key = peewee.CompositeKey("owner", "job_type", "slot")

    OwnerSlotV16._meta.set_database(database)
    return OwnerSlotV16


def upgrade(database: peewee.Database) -> None:
    _owner_slot_table_v16(database).create_table(safe=False)


def downgrade(database: peewee.Database) -> None:
    _owner_slot_table_v16(database).drop_table(safe=False)
