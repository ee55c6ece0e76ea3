"""MCP over HTTP in our Starlette app: Streamable HTTP at `[mcp] endpoint` (POST, GET,
DELETE) and, with `[mcp] legacy_sse`, HTTP+SSE at `<endpoint>/sse` + `<endpoint>/message`.

Both are plain top-level routes of our app (a mounted sub-app's lifespan would never run,
and its middleware would be lost), and the session manager runs inside our app's
lifespan. Each route sits behind the SDK's `RequireAuthMiddleware`, so a request without a
valid principal gets 401 + `WWW-Authenticate` before any MCP message is read; the
principal then owns the session it opens (the SDK answers another principal's session id
with 404). Responses stream as SSE, which carries progress notifications; a client that
accepts only JSON gets plain JSON bodies (and so no progress).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from mcp.server import Server
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, check_accept_headers
from mcp.server.streamable_http_manager import DEFAULT_MAX_SESSIONS, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq.api.mcp.runtime import McpRuntime
from skillq.api.mcp.server import build_server
from skillq.jobs.coordinator import JobCoordinator
from skillq.settings import Settings

logger = logging.getLogger(__name__)


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def transport_security(settings: Settings) -> TransportSecuritySettings | None:
    """DNS-rebinding protection: a web page must not reach a local MCP server through a
    browser. Checked names come from `[mcp] allowed_hosts` / `allowed_origins`; unset, a
    loopback-bound server accepts loopback names only (421 / 403 otherwise), and a server
    bound elsewhere (behind a proxy, with auth) checks nothing."""
    mcp = settings.mcp
    if mcp.allowed_hosts or mcp.allowed_origins:
        hosts, origins = list(mcp.allowed_hosts), list(mcp.allowed_origins)
    elif settings.server.host in _LOOPBACK:
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
        origins = [f"{scheme}://{host}" for scheme in ("http", "https") for host in hosts]
    else:
        return None
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


class _StreamableHttp:
    """Answers each client the way it asked: SSE response streams (which carry progress) for
    clients that accept `text/event-stream`, one plain JSON body for clients that accept only
    `application/json` (the SDK would refuse those with 406).

    The choice is made when a session opens and sticks to the session, so every later request
    of it (by `Mcp-Session-Id`) reaches the manager that holds it.
    """

    def __init__(
        self, streaming: StreamableHTTPSessionManager, plain: StreamableHTTPSessionManager
    ) -> None:
        self.streaming = streaming
        self.plain = plain
        #: Ids of the sessions `plain` opened, oldest first, at most its session limit.
        self.plain_sessions: dict[str, None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        if session_id is not None:
            plain = session_id in self.plain_sessions
        else:
            accepts_json, accepts_sse = check_accept_headers(request)
            plain = accepts_json and not accepts_sse
        if not plain:
            await self.streaming.handle_request(scope, receive, send)
            return

        async def remember_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                opened = Headers(raw=message.get("headers", [])).get(MCP_SESSION_ID_HEADER)
                if opened is not None and opened not in self.plain_sessions:
                    self.plain_sessions[opened] = None
                    if len(self.plain_sessions) > (self.plain.max_sessions or DEFAULT_MAX_SESSIONS):
                        del self.plain_sessions[next(iter(self.plain_sessions))]
            await send(message)

        await self.plain.handle_request(scope, receive, remember_session)
        if scope["method"] == "DELETE" and session_id is not None:
            self.plain_sessions.pop(session_id, None)


class _SseStream:
    """GET <endpoint>/sse: one legacy session, served for as long as the stream is open."""

    def __init__(self, transport: SseServerTransport, server: Server[Any]) -> None:
        self.transport = transport
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.transport.connect_sse(scope, receive, send) as (reader, writer):
                options = self.server.create_initialization_options()
                await self.server.run(reader, writer, options)
        except ValueError:
            # connect_sse has already answered a request it refused (e.g. a bad Host header).
            logger.debug("Legacy SSE connection refused.", exc_info=True)


class _SseMessages:
    def __init__(self, transport: SseServerTransport) -> None:
        self.transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.transport.handle_post_message(scope, receive, send)


class McpEndpoints:
    """The MCP routes of one app, and the lifespan that runs their session manager."""

    def __init__(self, coordinator: JobCoordinator, settings: Settings) -> None:
        mcp = settings.mcp
        self.runtime = McpRuntime(coordinator, mcp)
        self.server = build_server(self.runtime)
        self.endpoint = mcp.endpoint.rstrip("/") or "/mcp"
        security = transport_security(settings)
        self.managers = [
            StreamableHTTPSessionManager(
                app=self.server,
                json_response=json_response,
                stateless=mcp.stateless,
                security_settings=security,
                max_request_body_size=mcp.max_body_size,
            )
            for json_response in (False, True)
        ]
        self.sse: SseServerTransport | None = None
        if mcp.legacy_sse:
            self.sse = SseServerTransport(
                f"{self.endpoint}/message",
                security_settings=security,
                max_request_body_size=mcp.max_body_size,
            )

    @property
    def paths(self) -> tuple[str, ...]:
        if self.sse is None:
            return (self.endpoint,)
        return (self.endpoint, f"{self.endpoint}/sse", f"{self.endpoint}/message")

    def _guarded(self, app: ASGIApp) -> ASGIApp:
        """The app's authentication middleware has set `scope["user"]` (the local principal
        in auth mode `none`); without a principal, 401 before the SDK reads anything."""
        return RequireAuthMiddleware(AuthContextMiddleware(app), required_scopes=[])

    def routes(self) -> list[Route]:
        routes = [
            Route(
                self.endpoint,
                self._guarded(_StreamableHttp(*self.managers)),
                methods=["GET", "POST", "DELETE"],
            )
        ]
        if self.sse is not None:
            routes += [
                Route(
                    f"{self.endpoint}/sse",
                    self._guarded(_SseStream(self.sse, self.server)),
                    methods=["GET"],
                ),
                Route(
                    f"{self.endpoint}/message",
                    self._guarded(_SseMessages(self.sse)),
                    methods=["POST"],
                ),
            ]
        return routes

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.managers[0].run(), self.managers[1].run():
            try:
                yield
            finally:
                # Handlers cancelled from here on are cancelled by the shutdown, not a client.
                self.runtime.stopped = True
