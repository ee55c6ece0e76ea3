"""MCP tasks backed by skillq jobs: the task id is the job id, the store is the task store.

SDK 2.3.0 ships task *types* only, so the protocol surface is ours:

- 2025-11-25 (handshake era): the server advertises `capabilities.tasks` (list, cancel,
  tools/call); a `tools/call` carrying `params.task` is answered by `TaskAugmentedCalls`
  (a server middleware, because the SDK's result check only admits `CallToolResult` from
  the tools/call handler) with `CreateTaskResult` once the job row exists. `tasks/get`,
  `tasks/result` (waits for the job, at most `[mcp] timeout_secs`), `tasks/cancel` and
  `tasks/list` (the caller's jobs) map onto the job.
- 2026-07-28 tasks extension (`io.modelcontextprotocol/tasks`): when the request declares
  the extension, a job tool that outlives the inline wait answers with a flat
  `CreateTaskResult` (`resultType: "task"`); `tasks/get` returns the detailed task with
  the inlined result or error; `tasks/cancel` acknowledges with an empty result.

Status: pending/running → working, completed → completed, failed → failed, cancelled →
cancelled. Unknown ids and other owners' ids get the same -32602 answer. Every handler
raises skillq's errors; `skillq.api.mcp.errors` turns them into JSON-RPC errors (a store
or broker outage is -32603 with `data.code` `service_unavailable`, never invalid params).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from skillq.api.mcp.catalogue import JobTool
from skillq.api.mcp.errors import answers_protocol_errors, protocol_error
from skillq.api.mcp.job_calls import follow, submission, submit
from skillq.api.mcp.results import outcome_result
from skillq.api.mcp.runtime import McpRuntime
from skillq.api.principal import Principal
from skillq.errors import Forbidden, InvalidParams, NotFound, SkillqError
from skillq.jobs.fields import iso
from skillq.json_values import shown
from skillq.storage import Job, JobState

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"
POLL_INTERVAL_MS = 1000
_LIST_PAGE = 50

_STATUS = {
    JobState.PENDING: "working",
    JobState.RUNNING: "working",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}

SERVER_TASKS_CAPABILITY = types.ServerTasksCapability(
    list=types.TasksListCapability(),
    cancel=types.TasksCancelCapability(),
    requests=types.ServerTasksRequestsCapability(
        tools=types.TasksToolsCapability(call=types.TasksCallCapability())
    ),
)


def is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def client_wants_tasks(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this 2026-07-28 request declared the tasks extension (only then may it get one)."""
    capabilities = ctx.session.client_capabilities
    declared = (capabilities.extensions or {}) if capabilities else {}
    return is_modern(ctx) and TASKS_EXTENSION in declared


def _status_message(job: Job) -> str:
    parts = [job.state]
    if job.progress is not None:
        parts.append(f"{job.progress:.0%}")
    if job.message:
        parts.append(job.message)
    return ", ".join(parts)


def task_fields(job: Job) -> dict[str, Any]:
    """The 2025-11-25 `Task` of a job, in wire form."""
    moments = [job.created_at, job.started_at, job.heartbeat_at, job.completed_at]
    # Whole seconds: `expires_at` is set from a clock read a moment after `created_at`.
    ttl_ms = round((job.expires_at - job.created_at).total_seconds()) * 1000
    return {
        "taskId": job.id,
        "status": _STATUS[job.job_state],
        "statusMessage": _status_message(job),
        "createdAt": iso(job.created_at),
        "lastUpdatedAt": iso(max(moment for moment in moments if moment is not None)),
        "ttl": ttl_ms,
        "pollInterval": POLL_INTERVAL_MS,
    }


def modern_task_fields(job: Job) -> dict[str, Any]:
    """The 2026-07-28 extension's task fields (`ttlMs`, `pollIntervalMs`)."""
    fields = task_fields(job)
    fields["ttlMs"] = fields.pop("ttl")
    fields["pollIntervalMs"] = fields.pop("pollInterval")
    return fields


def modern_task_created(job: Job) -> dict[str, Any]:
    return {"resultType": "task", **modern_task_fields(job)}


def _tool_result(job: Job) -> dict[str, Any]:
    result = outcome_result(job).model_dump(by_alias=True, mode="json", exclude_none=True)
    meta = result.setdefault("_meta", {})
    meta[RELATED_TASK_META_KEY] = {"taskId": job.id}
    return result


class TaskHandlers:
    """tasks/get, tasks/result, tasks/cancel and tasks/list over the job store."""

    def __init__(self, runtime: McpRuntime) -> None:
        self.runtime = runtime

    def register(self, server: Any) -> None:
        handlers = [
            ("tasks/get", types.GetTaskRequestParams, self.get),
            ("tasks/result", types.GetTaskPayloadRequestParams, self.result),
            ("tasks/cancel", types.CancelTaskRequestParams, self.cancel),
            ("tasks/list", types.PaginatedRequestParams, self.list),
        ]
        for method, params_type, handler in handlers:
            server.add_request_handler(method, params_type, answers_protocol_errors(handler))
        server.extensions[TASKS_EXTENSION] = {}

    def _caller(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        return self.runtime.caller(ctx)

    async def _job(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> Job:
        coordinator = self.runtime.coordinator
        owner = self._caller(ctx).owner_filter
        try:
            return await anyio.to_thread.run_sync(lambda: coordinator.get_job(task_id, owner=owner))
        except NotFound:
            raise NotFound(f"no task {shown(task_id)}") from None

    async def get(self, ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        job = await self._job(ctx, params.task_id)
        if not is_modern(ctx):
            return task_fields(job)
        detailed = modern_task_fields(job)
        if job.state == JobState.COMPLETED:
            detailed["result"] = _tool_result(job)
        elif job.state == JobState.FAILED:
            message = f"job {job.id} failed: {job.error_type}: {job.error_message}"
            detailed["error"] = {"code": types.INTERNAL_ERROR, "message": message}
        return detailed

    async def result(self, ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        """2025-11-25: blocks until the job is terminal, then answers what tools/call would have."""
        job = await self._job(ctx, params.task_id)
        job = await follow(
            self.runtime.coordinator,
            job,
            self.runtime.settings.timeout_secs,
            # Sent when this tasks/result request carries its own progress token.
            ctx.session.report_progress,
        )
        if not job.job_state.is_terminal:
            message = f"task {job.id} is still {job.state}; poll tasks/get and ask again"
            raise MCPError(code=types.INTERNAL_ERROR, message=message)
        return _tool_result(job)

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        job = await self._job(ctx, params.task_id)
        if not self._caller(ctx).can_submit:
            raise Forbidden("this principal cannot cancel jobs")
        job = await anyio.to_thread.run_sync(self.runtime.coordinator.cancel_job, job.id)
        return {} if is_modern(ctx) else task_fields(job)

    async def list(self, ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        cursor = params.cursor or "0"
        if not cursor.isdigit():
            raise InvalidParams(f"invalid cursor {shown(cursor)}")
        offset = int(cursor)
        owner = self._caller(ctx).owner_filter
        coordinator = self.runtime.coordinator
        page = await anyio.to_thread.run_sync(
            lambda: coordinator.list_jobs(owner=owner, limit=_LIST_PAGE, offset=offset)
        )
        listed: dict[str, Any] = {"tasks": [task_fields(job) for job in page.jobs]}
        if offset + len(page.jobs) < page.total:
            listed["nextCursor"] = str(offset + len(page.jobs))
        return listed


class TaskAugmentedCalls:
    """Server middleware answering a 2025-11-25 `tools/call` that carries `params.task`."""

    def __init__(self, runtime: McpRuntime) -> None:
        self.runtime = runtime

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        params = ctx.params
        if ctx.method != "tools/call" or is_modern(ctx) or not _has_task(params):
            return await call_next(ctx)
        assert params is not None
        name, arguments = params.get("name"), params.get("arguments") or {}
        try:
            tool = self.runtime.catalogue.find(name if isinstance(name, str) else "")
            if not isinstance(tool, JobTool):
                raise InvalidParams(f"{shown(name)} answers at once and does not run as a task")
            request = submission(tool, arguments, params)
            job = await submit(self.runtime.coordinator, self.runtime.caller(ctx), request)
        except SkillqError as error:
            raise protocol_error(error) from None
        return {"task": task_fields(job)}


def _has_task(params: Mapping[str, Any] | None) -> bool:
    return isinstance(params, Mapping) and isinstance(params.get("task"), Mapping)
