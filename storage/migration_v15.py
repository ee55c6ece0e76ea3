"""Schema version 15, frozen: the table of MCP stream events (`skillq.storage.mcp_events`)."""

from __future__ import annotations

import peewee

from skillq.storage.models import utcnow


def _mcp_event_table_v15(database: peewee.Database) -> type[peewee.Model]:
    class McpEventV15(peewee.Model):
        id = peewee.BigAutoField()
        session_id = peewee.CharField(max_length=64)
        stream_id = peewee.CharField(max_length=128)
        owner = peewee.CharField(max_length=255)
        message = peewee.TextField(null=True)
        final = peewee.BooleanField(default=False)
        created_at = peewee.DateTimeField(default=utcnow, index=True)

        class Meta:
            table_name = "skillq_mcp_event"
            indexes = ((("session_id", "stream_id", "id"), False),)

    McpEventV15._meta.set_database(database)
    return McpEventV15


def upgrade(database: peewee.Database) -> None:
    _mcp_event_table_v15(database).create_table(safe=False)


def downgrade(database: peewee.Database) -> None:
    _mcp_event_table_v15(database).drop_table(safe=False)
