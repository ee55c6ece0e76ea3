"""What reaches the MCP endpoints over HTTP, decided in HTTP before the SDK reads a message.

- No principal: 401, `WWW-Authenticate: Bearer realm="skillq", resource_metadata=".../
  .well-known/oauth-protected-resource/mcp", scope="skillq:read skillq:submit"` and no
  `error=` (no credential was sent; a wrong one was already refused by the authentication
  middleware with `error="invalid_token"`).
- A Streamable HTTP POST carrying a request the principal's roles do not allow (a job tool,
  `cancel_job` or `retry_job` without submitter; `tasks/cancel` likewise; any tool or
  `tasks/*` without a role at all): 403 with `WWW-Authenticate: Bearer
  error="insufficient_scope", scope="skillq:submit", resource_metadata="..."`, the scope
  challenge of the MCP authorization spec, so an OAuth client can step up. The body is a
  JSON-RPC error for that request (code -32602, `data.code` `forbidden`), which the SDK
  clients report as that request's error.
- Legacy SSE (`<endpoint>/message`) acknowledges a POST with 202 and answers on the stream,
  and the SDK's SSE client stops sending anything after a non-2xx POST, so there (and on
  stdio) a missing role stays what the tools answer in-band: a tool error `forbidden`.
  So do acts whose role depends on the arguments (`search` naming another owner: admin).
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq.api.errors import error_response
from skillq.api.mcp.catalogue import ToolCatalogue
from skillq.api.mcp.errors import JSONRPC_CODES
from skillq.api.mcp.immediate import ImmediateTool
from skillq.api.principal import SUBMITTER, VIEWER, AuthenticatedPrincipal, Principal
from skillq.api.protected_resource import ProtectedResource
from skillq.api.scopes import SCOPE_OF_ROLE, grants, insufficient_scope
from skillq.errors import Forbidden, Unauthorized, row_of
from skillq.json_values import shown

#: Bodies larger than this are parsed in a worker thread, off the event loop.
_PARSE_INLINE_BYTES = 65_536


class McpGuard:
    """`catalogue` set: also refuse POSTed calls the principal's roles do not allow (the
    Streamable HTTP endpoint); bodies past `max_body_size` pass unread (the SDK answers 413)."""

    def __init__(
        self,
        app: ASGIApp,
        resource: ProtectedResource,
        *,
        catalogue: ToolCatalogue | None = None,
        max_body_size: int = 0,
    ) -> None:
        self.app = app
        self.resource = resource
        self.catalogue = catalogue
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        user = scope.get("user")
        if not isinstance(user, AuthenticatedPrincipal):
            header = conn.app.state.settings.auth.api_key_header
            error = Unauthorized(
                f"authentication required: send 'Authorization: Bearer' or '{header}'"
            )
            challenge = {"WWW-Authenticate": self.resource.challenge(conn)}
            await error_response(error, headers=challenge)(scope, receive, send)
            return
        principal = user.principal
        # Whoever may submit may make every call; admin-only acts depend on the arguments.
        if self.catalogue is None or scope["method"] != "POST" or principal.can_submit:
            await self.app(scope, receive, send)
            return
        body, read = await _read_body(receive, self.max_body_size)
        refusal = await self._refusal(principal, body) if body is not None else None
        if refusal is None:
            await self.app(scope, _replaying(read, receive), send)
            return
        needed, answers = refusal
        challenge = self.resource.challenge(conn, error="insufficient_scope", scopes=(needed,))
        response = JSONResponse(answers, status_code=403, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)

    async def _refusal(self, principal: Principal, body: bytes) -> tuple[str, Any] | None:
        """The scope the first request in `body` the principal may not make needs, and the
        JSON-RPC errors that answer the POST (one per request of a batch, refused whole)."""
        try:
            if len(body) > _PARSE_INLINE_BYTES:
                parsed = await anyio.to_thread.run_sync(json.loads, body)
            else:
                parsed = json.loads(body)
        except (ValueError, RecursionError):
            return None  # the SDK answers what it cannot parse
        messages = parsed if isinstance(parsed, list) else [parsed]
        requests = [m for m in messages if isinstance(m, dict) and "id" in m and "method" in m]
        for message in requests:
            role, what = await self._needs(message)
            if role is None or grants(principal.roles, role):
                continue
            needs = f"needs role {role} or scope {SCOPE_OF_ROLE[role]}"
            error = insufficient_scope(f"{principal.subject!r} may not {what} ({needs})", role)
            answers = [_jsonrpc_error(m.get("id"), error) for m in requests]
            return SCOPE_OF_ROLE[role], answers if isinstance(parsed, list) else answers[0]
        return None

    async def _needs(self, message: dict[str, Any]) -> tuple[str | None, str]:
        """The role a request needs, and what it does in words."""
        method, params = message.get("method"), message.get("params")
        if method == "tools/call" and isinstance(params, dict):
            name = params.get("name")
            if not isinstance(name, str):
                return None, ""
            assert self.catalogue is not None
            try:
                tool = await anyio.to_thread.run_sync(self.catalogue.find, name)
            except Exception:
                return None, ""  # an unknown tool: the call answers that itself
            role = tool.role if isinstance(tool, ImmediateTool) else SUBMITTER
            return role, f"call {shown(name)}"
        if method == "tasks/cancel":
            return SUBMITTER, "cancel tasks"
        if isinstance(method, str) and method.startswith("tasks/"):
            return VIEWER, "read tasks"
        return None, ""


def _jsonrpc_error(request_id: Any, error: Forbidden) -> dict[str, Any]:
    data = {"code": error.code, "details": error.details}
    body = {"code": row_of(JSONRPC_CODES, error), "message": error.message, "data": data}
    return {"jsonrpc": "2.0", "id": request_id, "error": body}


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, list[Message]]:
    """The request body (None past `limit` or on a disconnect) and the messages read."""
    read: list[Message] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None, read
        size += len(message.get("body", b""))
        if size > limit:
            return None, read
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in read), read


def _replaying(read: list[Message], receive: Receive) -> Receive:
    """`receive` again from the start: what was read, then whatever follows."""
    pending = list(read)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
