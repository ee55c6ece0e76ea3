"""A tools/call that is a job: submit it, wait inline for a while, then hand back its id.

The worker writes progress to the store; this side polls the store (any API process can
answer, nothing lives in memory) and forwards each increase as `notifications/progress`
when the client sent a progress token. A job that finishes within the inline wait is the
call's result; one that does not keeps running and the call answers with a job handle.

Cancelling the request while it waits inline (a `notifications/cancelled`, or on the
2026-07-28 HTTP wire closing the response stream) cancels the job; after the call has
returned, only `cancel_job` / `tasks/cancel` / REST do. A server shutdown cancels nothing:
a call waiting inline then answers at once with the job handle (or task), so the client
learns the job's id instead of seeing its stream cut.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from skillq.api.mcp.catalogue import JobTool
from skillq.api.mcp.immediate import require_submitter
from skillq.api.mcp.results import handle_result, outcome_result
from skillq.api.principal import Principal
from skillq.errors import InvalidParams, SkillqError
from skillq.jobs.coordinator import JobCoordinator
from skillq.json_values import shown, storable_problems
from skillq.storage import Job

logger = logging.getLogger(__name__)

#: `_meta` key: how long this call may wait inline, at most `[mcp] inline_wait_secs`.
INLINE_WAIT_META_KEY = "skillq/inline_wait_secs"
#: `_meta` key: submission options of the job behind the call (priority, ttl_hours, run_at,
#: delay_secs, idempotency_key, depends_on, callback_url), as in the REST submission body.
JOB_OPTIONS_META_KEY = "skillq/job_options"
_JOB_OPTIONS = (
    "priority",
    "ttl_hours",
    "idempotency_key",
    "run_at",
    "delay_secs",
    "depends_on",
    "callback_url",
)

#: Polls start fast (a quick job answers within milliseconds) and back off to the cap.
_FIRST_POLL_SECS = 0.002
_MAX_POLL_SECS = 0.25

ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]


def _meta_of(params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = (params or {}).get("_meta")
    return meta if isinstance(meta, Mapping) else {}


def inline_wait_secs(limit: float, params: Mapping[str, Any] | None) -> float:
    asked = _meta_of(params).get(INLINE_WAIT_META_KEY)
    if asked is None:
        return limit
    if isinstance(asked, bool) or not isinstance(asked, int | float) or not 0 <= asked < math.inf:
        raise InvalidParams(
            f"_meta.{INLINE_WAIT_META_KEY} must be a number of seconds >= 0",
            [{"path": f"_meta.{INLINE_WAIT_META_KEY}", "message": f"got {shown(asked)}"}],
        )
    return min(float(asked), limit)


def refuse_unstorable(arguments: Any) -> None:
    """Values no store can read back (NaN, lone surrogates, huge integers) are a tool error
    naming the argument, before any schema or job sees them."""
    problems = storable_problems(arguments, "arguments")
    if problems:
        raise InvalidParams("arguments hold values that cannot be stored", problems)


def submission(tool: JobTool, arguments: dict[str, Any], params: Mapping[str, Any] | None) -> dict:
    """The coordinator's submission body for a call: job type, params and any options."""
    refuse_unstorable(arguments)
    request: dict[str, Any] = {"type": tool.job_type, "params": tool.job_params(arguments)}
    options = _meta_of(params).get(JOB_OPTIONS_META_KEY) or {}
    if not isinstance(options, Mapping) or set(options) - set(_JOB_OPTIONS):
        allowed = ", ".join(_JOB_OPTIONS)
        raise InvalidParams(
            f"_meta.{JOB_OPTIONS_META_KEY} must be an object with only {allowed}",
            [{"path": f"_meta.{JOB_OPTIONS_META_KEY}", "message": f"got {shown(options)}"}],
        )
    request.update(options)
    return request


async def submit(coordinator: JobCoordinator, caller: Principal, request: dict) -> Job:
    require_submitter(caller)
    result = await anyio.to_thread.run_sync(
        lambda: coordinator.submit_job(request, owner=caller.subject, any_owner=caller.is_admin)
    )
    return result.job


async def follow(
    coordinator: JobCoordinator,
    job: Job,
    wait_secs: float,
    progress: ProgressSink | None = None,
    stopping: Callable[[], bool] | None = None,
) -> Job:
    """Polls the store until the job is terminal, `wait_secs` pass, or (`stopping`) the
    server is shutting down; returns its last state.

    Progress goes out as percent of 100 and only when it grew: MCP requires every
    notification's `progress` to be larger than the last; a job that completes sends 100.
    Polls read the job's state and progress only; the whole job (its params and result) is
    read once, at the end.
    """
    sent = -1.0
    interval = _FIRST_POLL_SECS
    polled = job
    with anyio.move_on_after(wait_secs):
        while True:
            # Checked before the end too: a completed job's final 100 % goes out before
            # the result.
            if (
                progress is not None
                and polled.progress is not None
                and polled.progress * 100 > sent
            ):
                sent = polled.progress * 100
                await progress(sent, 100.0, polled.message)
            if polled.job_state.is_terminal or (stopping is not None and stopping()):
                break
            await anyio.sleep(interval)
            interval = min(interval * 1.5, _MAX_POLL_SECS)
            polled = await anyio.to_thread.run_sync(coordinator.get_progress, job.id)
    if polled is job:
        return job
    return await anyio.to_thread.run_sync(coordinator.get_job, job.id)


async def cancel_quietly(coordinator: JobCoordinator, job_id: str, reason: str) -> None:
    """Cancel a job on behalf of a request that went away; a job already done stays done."""
    with anyio.CancelScope(shield=True):
        try:
            await anyio.to_thread.run_sync(coordinator.cancel_job, job_id)
            logger.info("Cancelled job %s: %s.", job_id, reason)
        except SkillqError as error:
            logger.info("Job %s not cancelled (%s): %s", job_id, reason, error.message)
        except Exception:
            logger.exception("Job %s could not be cancelled (%s).", job_id, reason)


async def call_job_tool(
    coordinator: JobCoordinator,
    caller: Principal,
    tool: JobTool,
    arguments: dict[str, Any],
    *,
    params: Mapping[str, Any] | None,
    inline_limit_secs: float,
    progress: ProgressSink,
    stopping: Callable[[], bool],
    still_running: Callable[[Job], Any] = handle_result,
) -> Any:
    """The job's outcome if it ends within the inline wait, else `still_running(job)`: a job
    handle, or for a client of the 2026 tasks extension, a task."""
    wait_secs = inline_wait_secs(inline_limit_secs, params)
    request = submission(tool, arguments, params)
    # Shielded, so a cancellation arriving during the submit is seen below, with the job known.
    with anyio.CancelScope(shield=True):
        job = await submit(coordinator, caller, request)
    try:
        job = await follow(coordinator, job, wait_secs, progress, stopping)
    except anyio.get_cancelled_exc_class():
        if not stopping():
            await cancel_quietly(coordinator, job.id, "the client cancelled its tools/call")
        raise
    return outcome_result(job) if job.job_state.is_terminal else still_running(job)
