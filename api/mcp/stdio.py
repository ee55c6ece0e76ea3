"""`skillq mcp`: the same MCP server on stdin/stdout, for local clients that launch it.

It opens the configured store and broker like any API process, so jobs submitted here run
on the same workers and show up in REST and the CLI; the caller is the local principal.

Each stdin line passes the same envelope check as the HTTP transports
(`skillq.api.mcp.envelope`): the SDK's stdio reader would drop an invalid line without an
answer, so such a line is answered -32600 (or -32700) here and never reaches the SDK.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from io import TextIOWrapper
from typing import Any

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from skillq.api.mcp.envelope import invalid_request, parse_error
from skillq.api.mcp.runtime import McpRuntime
from skillq.api.mcp.server import build_server


class _CheckedLines:
    """stdin's lines, less the invalid ones, which are answered on the write stream."""

    def __init__(self, lines: Any) -> None:
        self.lines = lines
        self.write_stream: Any = None
        self.ready = anyio.Event()

    async def __aiter__(self) -> AsyncIterator[str]:
        async for line in self.lines:
            if not line.strip():
                continue
            try:
                answer = invalid_request(json.loads(line))
            except (ValueError, RecursionError):
                answer = parse_error()
            if answer is None:
                yield line
                continue
            await self.ready.wait()
            error = types.JSONRPCError.model_validate(answer)
            await self.write_stream.send(SessionMessage(error))


async def _serve(runtime: McpRuntime) -> None:
    server = build_server(runtime)
    stdin = TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    checked = _CheckedLines(anyio.wrap_file(stdin))
    async with stdio_server(stdin=checked) as (reader, writer):  # type: ignore[arg-type]
        checked.write_stream = writer
        checked.ready.set()
        await server.run(reader, writer, server.create_initialization_options())


def serve_stdio() -> None:
    """Serve until the client closes stdin."""
    from skillq import actors
    from skillq.jobs.coordinator import JobCoordinator

    coordinator = JobCoordinator(actors.broker, actors.settings)
    anyio.run(_serve, McpRuntime(coordinator, actors.settings.mcp))
