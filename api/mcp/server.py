"""The low-level MCP server: tools/list from the catalogue, tools/call routed to an
immediate tool or a job, tasks on top. Every transport (Streamable HTTP, legacy SSE, stdio)
serves this one `Server`.

Anything a client can get wrong comes back as a tool error (`isError`) with skillq's error
code and message; an unexpected exception is logged and answered as a generic tool error,
so no handler failure reaches the client as a dropped connection or a stack trace.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.shared.exceptions import MCPError
from opentelemetry.trace import SpanKind, Status, StatusCode

from skillq import tracing
from skillq.api.mcp.catalogue import JobTool
from skillq.api.mcp.errors import tool_error
from skillq.api.mcp.guards import ProtocolGuards, has_core_tasks
from skillq.api.mcp.job_calls import call_job_tool
from skillq.api.mcp.results import data_result, handle_result
from skillq.api.mcp.runtime import McpRuntime
from skillq.api.mcp.tasks import (
    SERVER_TASKS_CAPABILITY,
    TaskAugmentedCalls,
    TaskHandlers,
    client_wants_tasks,
    modern_task_created,
)
from skillq.errors import InvalidParams, SkillqError
from skillq.json_values import shown

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "skillq runs slow work as background jobs. Every job type is a tool: a call waits a "
    "few seconds for its job and returns the result, or else the job id, which the "
    "job_status, list_jobs and cancel_job tools follow."
)


class SkillqServer(Server[Any]):
    """Adds the 2025-11-25 `tasks` capability, which the SDK does not derive by itself."""

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        capabilities = super().get_capabilities(
            notification_options,
            experimental_capabilities,
            extensions,
            protocol_version=protocol_version,
        )
        if protocol_version is not None and not has_core_tasks(protocol_version):
            # 2026 `server/discover`: tasks are the extension there, not a capability.
            return capabilities
        # initialize (no version yet): `ProtocolGuards` drops it for versions before tasks.
        return capabilities.model_copy(update={"tasks": SERVER_TASKS_CAPABILITY})


class ToolCalls:
    def __init__(self, runtime: McpRuntime) -> None:
        self.runtime = runtime

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if params is not None and params.cursor is not None:
            # One page holds every tool, so no cursor was ever handed out.
            message = f"unknown cursor {shown(params.cursor)}"
            raise MCPError(code=types.INVALID_PARAMS, message=message)
        with_tasks = has_core_tasks(ctx.protocol_version)
        tools = await anyio.to_thread.run_sync(self.runtime.catalogue.listing, with_tasks)
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> Any:
        if not tracing.enabled():
            return await self._answer(ctx, params)
        with tracing.span(
            f"mcp tools/call {params.name}",
            context=_http_trace_context(ctx),
            kind=SpanKind.SERVER,
            attributes={"mcp.method.name": "tools/call", "gen_ai.tool.name": params.name},
        ) as span:
            result = await self._answer(ctx, params)
            if getattr(result, "is_error", False):
                span.set_status(Status(StatusCode.ERROR))
            return result

    async def _answer(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> Any:
        try:
            return await self._call(ctx, params)
        except SkillqError as error:
            return tool_error(error)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            logger.exception("Tool %r failed unexpectedly.", params.name)
            return tool_error(SkillqError("the tool failed unexpectedly; see the server log"))

    async def _call(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams):
        runtime = self.runtime
        arguments = params.arguments if params.arguments is not None else {}
        if not isinstance(arguments, dict):
            raise InvalidParams("arguments must be an object")
        tool = runtime.catalogue.find(params.name)
        caller = runtime.caller(ctx)
        if not isinstance(tool, JobTool):
            data = await anyio.to_thread.run_sync(tool, runtime.coordinator, caller, arguments)
            return data_result(data)
        # A client that declared the 2026 tasks extension gets a task where others get a handle.
        still_running = modern_task_created if client_wants_tasks(ctx) else handle_result
        runtime.waiting += 1
        try:
            return await call_job_tool(
                runtime.coordinator,
                caller,
                tool,
                arguments,
                params=ctx.params,
                inline_limit_secs=runtime.inline_limit_secs,
                progress=ctx.session.report_progress,
                stopping=runtime.stopping,
                still_running=still_running,
            )
        finally:
            runtime.waiting -= 1


def _http_trace_context(ctx: ServerRequestContext[Any, Any]) -> Any:
    """The HTTP request's trace, for a call the MCP session handles in a task of its own
    (outside the request's context): its `traceparent`, if it sent one. None: the current."""
    if tracing.current_trace_id() is not None:
        return None
    headers = getattr(ctx.request, "headers", None)
    if headers is None or "traceparent" not in headers:
        return None
    return tracing.extract(
        {name: headers[name] for name in ("traceparent", "tracestate") if name in headers}
    )


def build_server(runtime: McpRuntime) -> Server[Any]:
    calls = ToolCalls(runtime)
    server = SkillqServer(
        "skillq",
        version=version("skillq"),
        instructions=INSTRUCTIONS,
        get_tool_input_schema=runtime.catalogue.input_schema,
        on_list_tools=calls.list_tools,
        on_call_tool=calls.call_tool,
    )
    TaskHandlers(runtime).register(server)
    server.middleware.append(ProtocolGuards(server))
    server.middleware.append(TaskAugmentedCalls(runtime))
    return server
