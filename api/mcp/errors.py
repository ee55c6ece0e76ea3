"""MCP's errors: how a core error leaves an MCP request, in one table.

A `tools/call` answers every core error as a tool error (a result with `isError`, which the
model sees and can correct itself), never as a JSON-RPC error or a dropped connection; its
structured content is REST's envelope, with the same machine codes.

Any other request (`tasks/*`, and a 2025-11-25 `tools/call` that asks for a task, whose
answer cannot be a tool result) answers with a JSON-RPC error: the code from
`JSONRPC_CODES`, the message, and `data = {"code", "details"}` carrying the machine code.
What the client got wrong is -32602 (invalid params; the MCP task specification asks it for
unknown and terminal tasks too). What the server could not do is -32603 (internal error):
an unreachable broker or store is the server's trouble and worth a retry, never the
client's params.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import mcp_types as types
from mcp.shared.exceptions import MCPError

from skillq.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidParams,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ServiceUnavailable,
    SkillqError,
    TooManyRequests,
    Unauthorized,
    UnknownJobType,
    row_of,
)

#: The JSON-RPC error code of each core error: one row per class of `skillq.errors`.
JSONRPC_CODES: dict[type[SkillqError], int] = {
    SkillqError: types.INTERNAL_ERROR,
    InvalidRequest: types.INVALID_PARAMS,
    InvalidParams: types.INVALID_PARAMS,
    UnknownJobType: types.INVALID_PARAMS,
    NotFound: types.INVALID_PARAMS,
    Conflict: types.INVALID_PARAMS,
    Unauthorized: types.INVALID_PARAMS,
    IdempotencyKeyReused: types.INVALID_PARAMS,
    Forbidden: types.INVALID_PARAMS,
    TooManyRequests: types.INTERNAL_ERROR,
    QuotaExceeded: types.INTERNAL_ERROR,
    ServiceUnavailable: types.INTERNAL_ERROR,
}

P = ParamSpec("P")
R = TypeVar("R")


def tool_error(error: SkillqError) -> types.CallToolResult:
    """A core error as a tools/call result: text for the model, the envelope for programs."""
    lines = [f"{error.code}: {error.message}"]
    for detail in error.details or []:
        if isinstance(detail, dict):
            lines.append(f"  {detail.get('path', '')}: {detail.get('message', '')}")
    body = {"code": error.code, "message": error.message, "details": error.details}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text="\n".join(lines))],
        structured_content={"error": body},
        is_error=True,
    )


def protocol_error(error: SkillqError) -> MCPError:
    """A core error as a JSON-RPC error, to raise from a request handler."""
    data = {"code": error.code, "details": error.details}
    return MCPError(code=row_of(JSONRPC_CODES, error), message=error.message, data=data)


def answers_protocol_errors(
    handler: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R]]:
    """Wraps a request handler so the core errors it raises leave as JSON-RPC errors."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except SkillqError as error:
            raise protocol_error(error) from None

    return wrapper
