"""MCP stream events, kept so a client that lost an SSE stream can resume it (`Last-Event-ID`).

Every message the server puts on a resumable Streamable HTTP stream is a row here before it
goes out, keyed by the MCP session and the stream (a request's id, or the session's GET
stream); the event id the client sees is the row id. Any API process can replay a session's
events from here, and a replay only ever reads the rows of the session it was asked for.

Bounded: each session keeps its newest `MAX_EVENTS_PER_SESSION` rows; rows go when their
session ends and, from sessions that ended without saying so (a killed process), once older
than the retention `purge` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import peewee

from skillq.storage.models import BaseModel, utcnow

MAX_EVENTS_PER_SESSION = 1000
#: Appends between two trims of a session and purges of stale rows.
_TRIM_EVERY = 100


class McpEvent(BaseModel):
    id = peewee.BigAutoField()
    session_id = peewee.CharField(max_length=64)
    stream_id = peewee.CharField(max_length=128)
    owner = peewee.CharField(max_length=255)
    #: The JSON-RPC message as sent, or None for a priming event (an id and nothing else).
    message = peewee.TextField(null=True)
    #: The stream's last event: it ended here (its response went out, or it was cancelled).
    final = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "skillq_mcp_event"
        indexes = ((("session_id", "stream_id", "id"), False),)


@dataclass(frozen=True)
class Replay:
    stream_id: str
    #: (event id, message) after the one asked for, oldest first; priming rows left out.
    events: list[tuple[int, str]]
    ended: bool


def append(
    session_id: str, stream_id: str, owner: str, message: str | None, *, final: bool = False
) -> int:
    event_id = McpEvent.insert(
        session_id=session_id, stream_id=stream_id, owner=owner, message=message, final=final
    ).execute()
    if event_id % _TRIM_EVERY == 0:
        _trim(session_id)
    return int(event_id)


def _trim(session_id: str) -> None:
    newest = (
        McpEvent.select(McpEvent.id)
        .where(McpEvent.session_id == session_id)
        .order_by(McpEvent.id.desc())
        .offset(MAX_EVENTS_PER_SESSION)
        .limit(1)
        .scalar()
    )
    if newest is not None:
        McpEvent.delete().where(
            (McpEvent.session_id == session_id) & (McpEvent.id <= newest)
        ).execute()


def replay_after(event_id: int, session_id: str, owner: str) -> Replay | None:
    """The events of `event_id`'s stream after it, if that event is the session's and the
    owner's; None for an unknown, purged or foreign event id alike."""
    last = McpEvent.get_or_none(
        (McpEvent.id == event_id) & (McpEvent.session_id == session_id) & (McpEvent.owner == owner)
    )
    if last is None:
        return None
    rows = list(
        McpEvent.select(McpEvent.id, McpEvent.message, McpEvent.final)
        .where(
            (McpEvent.session_id == session_id)
            & (McpEvent.stream_id == last.stream_id)
            & (McpEvent.id > event_id)
        )
        .order_by(McpEvent.id)
        .limit(MAX_EVENTS_PER_SESSION)
    )
    events = [(row.id, row.message) for row in rows if row.message is not None]
    ended = last.final or any(row.final for row in rows)
    return Replay(last.stream_id, events, ended)


def session_owner(session_id: str) -> str | None:
    row = McpEvent.select(McpEvent.owner).where(McpEvent.session_id == session_id).first()
    return None if row is None else row.owner


def forget_session(session_id: str) -> None:
    McpEvent.delete().where(McpEvent.session_id == session_id).execute()


def purge(older_than: datetime) -> int:
    return McpEvent.delete().where(McpEvent.created_at < older_than).execute()
