"""Resumable Streamable HTTP streams, backed by the job store (`skillq.storage.mcp_events`).

Each stateful session gets the SDK's `EventStore` interface over our table, so every message
on a request's SSE stream or on the GET stream carries an event id, streams start with a
priming event (`id:` and `retry:`), and a client that lost a stream reconnects with
`GET` + `Last-Event-ID` and gets what it missed. Events live in the store, not in one
process: a reconnect that reaches a process without the session (another replica, or the
same server after a restart) still gets the stored events (`replay_elsewhere`).

Two SDK 2.3.0 behaviours are changed here (worth fixing upstream):
- the GET stream has no priming event, so a client cannot resume it before the first
  message arrives, and it never learns the `retry:` interval: `_handle_get_request` adds one;
- a request the client cancelled (`notifications/cancelled`) is answered -32800 on the
  2025-era wire, where the specification says no response is sent for it: its stream is
  ended without one (`_terminate_unanswered_request`), and a later replay of it ends too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    LAST_EVENT_ID_HEADER,
    EventCallback,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
)
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import is_version_at_least
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from skillq.storage import mcp_events
from skillq.storage.database import in_connection
from skillq.storage.models import utcnow

logger = logging.getLogger(__name__)

#: The `retry:` a stream suggests: how long a client waits before it reconnects.
SSE_RETRY_MS = 2000
_PURGE_EVERY = 100


def owner_key(requestor: AuthorizationContext | None) -> str:
    """The session owner as stored: a digest of the credential's identity (client, issuer,
    subject), so the column has a fixed size and two principals never share a key."""
    identity = json.dumps(dict(requestor or {}), sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()


class SessionEventStore(EventStore):
    """One session's events; `retention` is how old a forgotten session's rows may get."""

    def __init__(self, session_id: str, owner: str, retention: timedelta) -> None:
        self.session_id = session_id
        self.owner = owner
        self.retention = retention

    async def _append(self, stream_id: str, text: str | None, final: bool) -> str | None:
        def append() -> int:
            event_id = mcp_events.append(self.session_id, stream_id, self.owner, text, final=final)
            if event_id % _PURGE_EVERY == 0:
                mcp_events.purge(utcnow() - self.retention)
            return event_id

        try:
            return str(await anyio.to_thread.run_sync(in_connection(append)))
        except Exception:
            # The message still goes out, without an id: a lost store costs resumability only.
            logger.warning("Could not store an MCP event of session %s.", self.session_id)
            return None

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> Any:
        text = None
        final = False
        if message is not None:
            text = message.model_dump_json(by_alias=True, exclude_unset=True)
            final = stream_id != GET_STREAM_KEY and isinstance(
                message, types.JSONRPCResponse | types.JSONRPCError
            )
        return await self._append(stream_id, text, final)

    async def end_stream(self, stream_id: str) -> None:
        await self._append(stream_id, None, True)

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        replay = await read_replay(last_event_id, self.session_id, self.owner)
        if replay is None:
            return None
        for event_id, text in replay.events:
            message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
            await send_callback(EventMessage(message, str(event_id)))
        # An ended stream is not followed live (the SDK would wait on it forever).
        return None if replay.ended else replay.stream_id

    async def forget(self) -> None:
        try:
            forget = in_connection(mcp_events.forget_session)
            await anyio.to_thread.run_sync(forget, self.session_id)
        except Exception:
            logger.warning("Could not forget the MCP events of session %s.", self.session_id)


async def read_replay(last_event_id: str, session_id: str, owner: str) -> mcp_events.Replay | None:
    if not last_event_id.isdigit() or len(last_event_id) > 18:
        return None
    return await anyio.to_thread.run_sync(
        in_connection(mcp_events.replay_after), int(last_event_id), session_id, owner
    )


def _priming(event_id: str) -> bytes:
    return f"id: {event_id}\r\nretry: {SSE_RETRY_MS}\r\ndata: \r\n\r\n".encode()


class ResumableTransport(StreamableHTTPServerTransport):
    """The SDK's transport with the two changes described in the module docstring."""

    event_store: SessionEventStore | None

    def __init__(self, *args: Any, event_store: SessionEventStore | None = None, **kwargs: Any):
        super().__init__(*args, event_store=event_store, retry_interval=SSE_RETRY_MS, **kwargs)
        self.event_store = event_store

    async def _terminate_unanswered_request(self, request_id: types.RequestId) -> None:
        if self.is_json_response_enabled:
            # A JSON body must hold something: keep the SDK's -32800 there.
            await super()._terminate_unanswered_request(request_id)
            return
        if self.event_store is not None:
            await self.event_store.end_stream(str(request_id))
        self.close_sse_stream(str(request_id))

    async def _handle_get_request(self, request: Request, send: Send) -> None:
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, "")
        primes = (
            self.event_store is not None
            and LAST_EVENT_ID_HEADER not in request.headers
            and version
            and is_version_at_least(version, "2025-11-25")
        )
        if not primes:
            await super()._handle_get_request(request, send)
            return
        store = self.event_store
        assert store is not None
        started = False

        async def priming_send(message: Message) -> None:
            nonlocal started
            await send(message)
            if message["type"] == "http.response.start" and message["status"] == 200:
                started = True
                event_id = await store.store_event(GET_STREAM_KEY, None)
                if event_id is not None:
                    body = _priming(event_id)
                    await send({"type": "http.response.body", "body": body, "more_body": True})

        await super()._handle_get_request(request, priming_send)


async def replay_elsewhere(
    scope: Scope, receive: Receive, send: Send, session_id: str, owner: str
) -> bool:
    """A reconnect (`GET` + `Last-Event-ID`) for a session this process does not hold: the
    session's stored events after that id, then the end of the stream. False (nothing sent)
    when the event is unknown, purged, or not this owner's session."""
    last_event_id = Request(scope).headers.get(LAST_EVENT_ID_HEADER, "")
    try:
        replay = await read_replay(last_event_id, session_id, owner)
    except Exception:
        logger.warning("Could not read MCP events to replay for session %s.", session_id)
        return False
    if replay is None:
        return False
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
        (b"mcp-session-id", session_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event_id, text in replay.events:
        frame = f"id: {event_id}\r\nevent: message\r\ndata: {text}\r\n\r\n".encode()
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True
