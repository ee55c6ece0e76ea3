"""Server middleware holding each protocol version to its own method set and shapes.

- Tasks exist from 2025-11-25 on: older sessions are not offered the `tasks` capability and
  get -32601 for `tasks/*`. The 2026-07-28 tasks extension has `tasks/get`, `tasks/update`
  and `tasks/cancel` only, for requests that declared the extension; the 2025-11-25 core
  has `tasks/get`, `tasks/result`, `tasks/list` and `tasks/cancel`.
- `tools/call` with `arguments` that are not an object is a tool error naming them, as
  every other bad argument is (the SDK would answer -32602 before our handler ran).
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS, is_version_at_least

from skillq.api.mcp.errors import tool_error
from skillq.errors import InvalidParams
from skillq.json_values import shown

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
_CORE_TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/list", "tasks/cancel"})
_EXTENSION_TASK_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})


def has_core_tasks(version: str | None) -> bool:
    """Whether a handshake-era session of `version` speaks the 2025-11-25 tasks."""
    return (
        version is not None
        and version not in MODERN_PROTOCOL_VERSIONS
        and is_version_at_least(version, "2025-11-25")
    )


def declared_tasks_extension(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    declared = (capabilities.extensions or {}) if capabilities else {}
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and TASKS_EXTENSION in declared


def _method_not_found(method: str) -> MCPError:
    return MCPError(code=types.METHOD_NOT_FOUND, message="Method not found", data=method)


class ProtocolGuards:
    def __init__(self, server: Any) -> None:
        self.server = server

    def _short_circuit(self, ctx: ServerRequestContext[Any, Any], result: dict) -> dict:
        """A result answered here, in the envelope the SDK gives handler results."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result["resultType"] = "complete"
            meta = result.setdefault("_meta", {})
            meta[types.SERVER_INFO_META_KEY] = self.server.server_info_stamp
        return result

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        method = ctx.method
        if method.startswith("tasks/"):
            if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
                allowed = declared_tasks_extension(ctx) and method in _EXTENSION_TASK_METHODS
            else:
                allowed = has_core_tasks(ctx.protocol_version) and method in _CORE_TASK_METHODS
            if not allowed:
                raise _method_not_found(method)
        if method == "tools/call":
            arguments = (ctx.params or {}).get("arguments")
            if arguments is not None and not isinstance(arguments, dict):
                error = InvalidParams(
                    "arguments must be an object",
                    [{"path": "arguments", "message": f"got {shown(arguments)}"}],
                )
                answer = tool_error(error).model_dump(by_alias=True, mode="json", exclude_none=True)
                return self._short_circuit(ctx, answer)
        result = await call_next(ctx)
        initialized = method == "initialize" and isinstance(result, dict)
        if initialized and not has_core_tasks(result.get("protocolVersion")):
            capabilities = result.get("capabilities")
            if isinstance(capabilities, dict):
                capabilities.pop("tasks", None)
        return result
