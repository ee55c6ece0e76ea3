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
from skillq.api.mcp.guards import TASKS_EXTENSION, declared_tasks_extension, has_core_tasks
from skillq.api.mcp.job_calls import follow, submission, submit
from skillq.api.mcp.results import outcome_result
from skillq.api.mcp.runtime import McpRuntime
from skillq.api.principal import Principal
from skillq.errors import Forbidden, InvalidParams, NotFound, SkillqError
from skillq.jobs.fields import iso
from skillq.json_values import shown
from skillq.storage import Job, JobState

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
    return declared_tasks_extension(ctx)


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


def _tool_result(job: Job, *, modern: bool) -> dict[str, Any]:
    """What tools/call answers for the job, in the session's era (`resultType` is 2026's)."""
    result = outcome_result(job).model_dump(by_alias=True, mode="json", exclude_none=True)
    if not modern:
        result.pop("resultType", None)
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
            ("tasks/update", types.GetTaskRequestParams, self.update),
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
        if job.state in (JobState.COMPLETED, JobState.FAILED):
            # The extension's `failed` is a JSON-RPC error; a failed job is a tool error in
            # tools/call (`isError`), so its task completed with that result.
            detailed["status"] = "completed"
            detailed["result"] = _tool_result(job, modern=True)
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
            self.runtime.stopping,
        )
        if not job.job_state.is_terminal:
            message = f"task {job.id} is still {job.state}; poll tasks/get and ask again"
            raise MCPError(code=types.INTERNAL_ERROR, message=message)
        return _tool_result(job, modern=False)

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        """2025-11-25 answers the task as `cancelled` (MUST): a running job is cancelled by its
        worker, so the answer waits for that (at most `timeout_secs`). The 2026 extension's
        cancel is a cooperative acknowledgement and answers at once."""
        job = await self._job(ctx, params.task_id)
        if not self._caller(ctx).can_submit:
            raise Forbidden("this principal cannot cancel jobs")
        job = await anyio.to_thread.run_sync(self.runtime.coordinator.cancel_job, job.id)
        if is_modern(ctx):
            return {}
        if not job.job_state.is_terminal:
            job = await follow(
                self.runtime.coordinator, job, self.runtime.settings.timeout_secs, None
            )
        if not job.job_state.is_terminal:
            message = f"task {job.id} is still being cancelled; ask again or poll tasks/get"
            raise MCPError(code=types.INTERNAL_ERROR, message=message)
        if job.state != JobState.CANCELLED:
            # It ended another way while its worker was being told to stop.
            message = f"task {job.id} {job.state} before it could be cancelled"
            raise InvalidParams(message, [{"path": "taskId", "message": job.state}])
        return task_fields(job)

    async def update(self, ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        """2026 extension: skillq's tasks never ask for input, so none awaits a response."""
        job = await self._job(ctx, params.task_id)
        raise InvalidParams(f"task {job.id} is not waiting for input (it is {job.state})")

    async def list(self, ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        cursor = params.cursor
        offset = int(cursor) if cursor is not None and cursor.isdigit() and len(cursor) < 9 else 0
        if cursor is not None and offset <= 0:
            raise InvalidParams(f"unknown cursor {shown(cursor)}")
        owner = self._caller(ctx).owner_filter
        coordinator = self.runtime.coordinator
        page = await anyio.to_thread.run_sync(
            lambda: coordinator.list_jobs(owner=owner, limit=_LIST_PAGE, offset=offset)
        )
        if offset and offset >= page.total:
            # Cursors are the offsets this method handed out: only those inside the list exist.
            raise InvalidParams(f"unknown cursor {shown(cursor)}")
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
        if (
            ctx.method != "tools/call"
            or not has_core_tasks(ctx.protocol_version)
            or not _has_task(params)
        ):
            return await call_next(ctx)
        assert params is not None
        name, arguments = params.get("name"), params.get("arguments") or {}
        try:
            tool = self.runtime.catalogue.find(name if isinstance(name, str) else "")
            if not isinstance(tool, JobTool):
                # The tool does not declare task support: the specification's -32601.
                message = f"{shown(name)} answers at once and does not run as a task"
                raise MCPError(code=types.METHOD_NOT_FOUND, message=message)
            request = submission(tool, arguments, params)
            job = await submit(self.runtime.coordinator, self.runtime.caller(ctx), request)
        except SkillqError as error:
            raise protocol_error(error) from None
        return {"task": task_fields(job)}


def _has_task(params: Mapping[str, Any] | None) -> bool:
    return isinstance(params, Mapping) and isinstance(params.get("task"), Mapping)
