"""MCP over HTTP in our Starlette app: Streamable HTTP at `[mcp] endpoint` (POST, GET,
DELETE) and, with `[mcp] legacy_sse`, HTTP+SSE at `<endpoint>/sse` + `<endpoint>/message`.

Both are plain top-level routes of our app (a mounted sub-app's lifespan would never run,
and its middleware would be lost), and the session manager runs inside our app's
lifespan. Each route sits behind `McpGuard`, so a request without a valid principal gets
401 + `WWW-Authenticate` before any MCP message is read (and a Streamable HTTP call its
roles do not allow, 403); the principal then owns the session it opens (the SDK answers
another principal's session id with 404). Responses stream as SSE, which carries progress
notifications; a client that accepts only JSON gets plain JSON bodies (and so no progress).

Bounds, so one client cannot lock the others out: at most `[mcp] max_sessions` Streamable
HTTP sessions (503 past it), `max_sessions_per_principal` of them per principal (503 too,
from the SDK's own refusal path), each closed after `session_idle_secs` without a request;
at most `max_sse_per_principal` legacy SSE connections per principal (429).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import anyio
from mcp.server import Server
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import (
    AuthenticatedUser,
    AuthorizationContext,
    authorization_context,
)
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import (
    LAST_EVENT_ID_HEADER,
    MCP_SESSION_ID_HEADER,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import DEFAULT_MAX_SESSIONS, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from sse_starlette.sse import AppStatus
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq.api.mcp.gate import EnvelopeGate
from skillq.api.mcp.guard import McpGuard
from skillq.api.mcp.resumable import (
    ResumableTransport,
    SessionEventStore,
    owner_key,
    replay_elsewhere,
)
from skillq.api.mcp.runtime import McpRuntime
from skillq.api.mcp.server import build_server
from skillq.api.principal import AuthenticatedPrincipal
from skillq.api.protected_resource import ProtectedResource
from skillq.api.trusted_origins import allowed_names
from skillq.errors import TooManyRequests
from skillq.jobs.coordinator import JobCoordinator
from skillq.settings import Settings

logger = logging.getLogger(__name__)

_SHUTDOWN_POLL_SECS = 0.1
#: How long a shutdown waits for inline calls to answer, and then for answers to go out.
_DRAIN_SECS = 5.0
_FLUSH_SECS = 0.5


def transport_security(settings: Settings) -> TransportSecuritySettings | None:
    """DNS-rebinding protection with the app's own Host/Origin names (`allowed_names`): the
    SDK checks its routes itself (421 / 403), before it reads a message."""
    names = allowed_names(settings)
    if names.hosts is None and not names.origins:
        return None
    hosts = list(names.hosts) if names.hosts is not None else []
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=names.hosts is not None,
        allowed_hosts=hosts,
        allowed_origins=list(names.origins),
    )


class _SessionsPerPrincipal(StreamableHTTPSessionManager):
    """The SDK's session manager, refusing a new session while `group` (the managers of one
    app) holds `max_sessions`, or its principal holds `per_principal` of them.

    mcp 2.3 admits every new session in `_admit_session`, under its creation lock, and
    records its owner in `_session_owners` until the session ends (DELETE, idle expiry,
    shutdown); returning None there is its own "too many sessions" answer (503).
    """

    def __init__(
        self,
        *,
        per_principal: int,
        group: list[_SessionsPerPrincipal],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.per_principal = per_principal
        self.group = group
        self.retention_secs = self.session_idle_timeout or 3600
        group.append(self)

    def sessions_of(self, requestor: AuthorizationContext) -> int:
        return sum(1 for owner in self._session_owners.values() if owner == requestor)

    def _admit_session(
        self, requestor: AuthorizationContext | None
    ) -> StreamableHTTPServerTransport | None:
        open_sessions = sum(len(manager._server_instances) for manager in self.group)
        if self.max_sessions is not None and open_sessions >= self.max_sessions:
            return None
        if requestor is not None:
            held = sum(manager.sessions_of(requestor) for manager in self.group)
            if held >= self.per_principal:
                subject = requestor.get("subject")
                logger.warning("Refusing a session: %s holds %d already.", subject, held)
                return None
        # As the SDK's own `_admit_session`, with our transport and a store per session.
        session_id = uuid4().hex
        event_store = None
        if not self.json_response:
            event_store = SessionEventStore(
                session_id, owner_key(requestor), timedelta(seconds=2 * self.retention_secs)
            )
        transport = ResumableTransport(
            mcp_session_id=session_id,
            is_json_response_enabled=self.json_response,
            event_store=event_store,
            security_settings=self.security_settings,
            idle_timeout=self.session_idle_timeout,
        )
        if requestor is not None:
            self._session_owners[session_id] = requestor
        self._server_instances[session_id] = transport
        return transport

    async def _discard_session(
        self, session_id: str, transport: StreamableHTTPServerTransport
    ) -> None:
        await super()._discard_session(session_id, transport)
        store = getattr(transport, "event_store", None)
        # A session the client ended or let expire is gone for good; one that ends with
        # the server (no task group any more) stays resumable until its rows are purged.
        if isinstance(store, SessionEventStore) and self._task_group is not None:
            with anyio.CancelScope(shield=True):
                await store.forget()

    def holds(self, session_id: str) -> bool:
        return session_id in self._server_instances


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
        if (
            session_id is not None
            and scope["method"] == "GET"
            and LAST_EVENT_ID_HEADER in request.headers
            and not self.streaming.stateless
            and not any(manager.holds(session_id) for manager in (self.streaming, self.plain))
        ):
            user = scope.get("user")
            requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
            if await replay_elsewhere(scope, receive, send, session_id, owner_key(requestor)):
                return
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
    """GET <endpoint>/sse: one legacy session, served for as long as the stream is open, at
    most `per_principal` at once for one principal."""

    def __init__(self, transport: SseServerTransport, server: Server[Any], per_principal: int):
        self.transport = transport
        self.server = server
        self.per_principal = per_principal
        self.open: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        subject = user.principal.subject if isinstance(user, AuthenticatedPrincipal) else ""
        if self.open[subject] >= self.per_principal:
            raise TooManyRequests(
                f"{self.per_principal} SSE connections are open for {subject!r}",
                [{"path": "sse", "message": "mcp.max_sse_per_principal"}],
            )
        self.open[subject] += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self.open[subject] -= 1
            if not self.open[subject]:
                del self.open[subject]

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
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

    def __init__(
        self,
        coordinator: JobCoordinator,
        settings: Settings,
        resource: ProtectedResource | None = None,
    ) -> None:
        mcp = settings.mcp
        self.resource = resource or ProtectedResource(settings)
        self.max_body_size = mcp.max_body_size
        self.runtime = McpRuntime(coordinator, mcp)
        self.server = build_server(self.runtime)
        self.endpoint = mcp.endpoint.rstrip("/") or "/mcp"
        security = transport_security(settings)
        group: list[_SessionsPerPrincipal] = []
        self.managers = [
            _SessionsPerPrincipal(
                per_principal=mcp.max_sessions_per_principal,
                group=group,
                app=self.server,
                json_response=json_response,
                stateless=mcp.stateless,
                security_settings=security,
                max_request_body_size=mcp.max_body_size,
                session_idle_timeout=mcp.session_idle_secs,
                max_sessions=mcp.max_sessions,
            )
            for json_response in (False, True)
        ]
        self.max_sse_per_principal = mcp.max_sse_per_principal
        self.max_body_size = mcp.max_body_size
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

    def _guarded(self, app: ASGIApp, *, calls: bool = False) -> ASGIApp:
        """The app's authentication middleware has set `scope["user"]` (the local principal
        in auth mode `none`); without a principal, 401 before the SDK reads anything.
        `calls`: also refuse (403) calls the principal's roles do not allow."""
        return McpGuard(
            AuthContextMiddleware(app),
            self.resource,
            catalogue=self.runtime.catalogue if calls else None,
            max_body_size=self.max_body_size,
        )

    def routes(self) -> list[Route]:
        routes = [
            Route(
                self.endpoint,
                self._guarded(
                    EnvelopeGate(_StreamableHttp(*self.managers), self.max_body_size), calls=True
                ),
                methods=["GET", "POST", "DELETE"],
            )
        ]
        if self.sse is not None:
            routes += [
                Route(
                    f"{self.endpoint}/sse",
                    self._guarded(_SseStream(self.sse, self.server, self.max_sse_per_principal)),
                    methods=["GET"],
                ),
                Route(
                    f"{self.endpoint}/message",
                    self._guarded(EnvelopeGate(_SseMessages(self.sse), self.max_body_size)),
                    methods=["POST"],
                ),
            ]
        return routes

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # sse-starlette would end every SSE stream the moment uvicorn is told to stop, before
        # a call waiting inline could answer on it: `_drain_on_shutdown` ends them instead.
        AppStatus.disable_automatic_graceful_drain()
        async with (
            self.managers[0].run(),
            self.managers[1].run(),
            anyio.create_task_group() as group,
        ):
            group.start_soon(self._drain_on_shutdown)
            try:
                yield
            finally:
                # Handlers cancelled from here on are cancelled by the shutdown, not a client.
                self.runtime.stopped = True
                group.cancel_scope.cancel()

    async def _drain_on_shutdown(self) -> None:
        """Once uvicorn is stopping: inline waits answer with their job (they poll
        `stopping`), their answers get a moment to reach the wire, then the SSE streams end
        (the GET streams would otherwise hold the server until its graceful timeout)."""
        while not self.runtime.stopping():
            await anyio.sleep(_SHUTDOWN_POLL_SECS)
        with anyio.move_on_after(_DRAIN_SECS):
            while self.runtime.waiting:
                await anyio.sleep(_SHUTDOWN_POLL_SECS)
            await anyio.sleep(_FLUSH_SECS)
        AppStatus.should_exit = True
