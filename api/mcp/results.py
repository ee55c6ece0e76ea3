"""How skillq answers a tools/call: a job's outcome, a job handle, or a tool error.

A tool error is a result with `isError` (the model sees it and can correct itself), never a
JSON-RPC error or a dropped connection: a failed or cancelled job comes back this way
(below), and so do bad arguments and unknown jobs (`skillq.api.mcp.errors.tool_error`).
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types

from skillq.jobs.fields import job_to_dict
from skillq.storage import Job, JobState

#: `_meta` key on a job tool's result naming the job behind it.
JOB_META_KEY = "skillq/job"


def _text(value: Any) -> list[types.TextContent]:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
    return [types.TextContent(type="text", text=text)]


def data_result(data: dict[str, Any]) -> types.CallToolResult:
    """An immediate tool's answer: the data as structured content and as JSON text."""
    return types.CallToolResult(content=_text(data), structured_content=data)


def follow_hints(job_id: str) -> dict[str, Any]:
    """Every way a client can follow a job that outlived the call."""
    return {
        "tools": {
            "status": {"name": "job_status", "arguments": {"job_id": job_id}},
            "cancel": {"name": "cancel_job", "arguments": {"job_id": job_id}},
        },
        "status_url": f"/api/v1/jobs/{job_id}",
        "stream_url": f"/api/v1/jobs/{job_id}/stream",
    }


def _job_meta(job: Job) -> dict[str, Any]:
    return {JOB_META_KEY: {"id": job.id, "state": job.state}}


def outcome_result(job: Job) -> types.CallToolResult:
    """A terminal job as the tool's result: its result, or a tool error saying why not."""
    if job.state == JobState.COMPLETED:
        result = job.result
        structured = result if isinstance(result, dict) else {"result": result}
        return types.CallToolResult(
            content=_text(result), structured_content=structured, meta=_job_meta(job)
        )
    if job.state == JobState.FAILED:
        text = f"job {job.id} ({job.type}) failed: {job.error_type}: {job.error_message}"
    else:
        text = f"job {job.id} ({job.type}) was cancelled"
    body = {
        "code": f"job_{job.state}",
        "message": text,
        "details": {"job_id": job.id, "state": job.state, "error": job_to_dict(job)["error"]},
    }
    return types.CallToolResult(
        content=_text(text), structured_content={"error": body}, is_error=True, meta=_job_meta(job)
    )


def handle_result(job: Job) -> types.CallToolResult:
    """A job still pending or running when the inline wait ended: where to find it later."""
    progress = "" if job.progress is None else f" ({job.progress:.0%})"
    text = (
        f"job {job.id} ({job.type}) is {job.state}{progress} and keeps running. "
        f"Follow it with the job_status tool (job_id {job.id!r}), "
        f"or GET /api/v1/jobs/{job.id}/stream."
    )
    structured = {
        "job_id": job.id,
        "state": job.state,
        "progress": job.progress,
        "message": job.message,
        "follow": follow_hints(job.id),
    }
    return types.CallToolResult(
        content=_text(text), structured_content=structured, meta=_job_meta(job)
    )
