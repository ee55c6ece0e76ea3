"""`skillq mcp`: the same MCP server on stdin/stdout, for local clients that launch it.

It opens the configured store and broker like any API process, so jobs submitted here run
on the same workers and show up in REST and the CLI; the caller is the local principal.
"""

from __future__ import annotations

import anyio
from mcp.server.stdio import stdio_server

from skillq.api.mcp.runtime import McpRuntime
from skillq.api.mcp.server import build_server


async def _serve(runtime: McpRuntime) -> None:
    server = build_server(runtime)
    async with stdio_server() as (reader, writer):
        await server.run(reader, writer, server.create_initialization_options())


def serve_stdio() -> None:
    """Serve until the client closes stdin."""
    from skillq import actors
    from skillq.jobs.coordinator import JobCoordinator

    coordinator = JobCoordinator(actors.broker, actors.settings)
    anyio.run(_serve, McpRuntime(coordinator, actors.settings.mcp))
