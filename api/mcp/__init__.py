"""skillq as an MCP server: every job type a tool, over Streamable HTTP, legacy SSE and stdio.

`McpEndpoints` gives the HTTP routes and the lifespan for `api.app`; `serve_stdio` runs the
same server on stdin/stdout for `skillq mcp`.
"""

from skillq.api.mcp.stdio import serve_stdio
from skillq.api.mcp.transports import McpEndpoints

__all__ = ["McpEndpoints", "serve_stdio"]
