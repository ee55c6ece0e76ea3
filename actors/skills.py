"""`execute_skill`: run one tool of a skill in the sandbox, on the `skill` queue.

The input is validated against the tool's schema before anything runs, at submission
(422) and again in the worker (the skill may have changed in between); the tool's stderr
progress lines become the job's progress; its JSON stdout is the job's result. A tool is
not retried after it ran (it may have had side effects), and neither is a request that can
never succeed (unknown skill, invalid input): both are in `throws`.

The sandbox (`skills.sandbox`) is bwrap when it works on the worker's machine; each worker
process says at start which one its tools get, and why when it is not bwrap.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import dramatiq

from skillq.actors import broker, settings
from skillq.brokers.progress import report_progress
from skillq.brokers.running import current_job
from skillq.engine import bubblewrap
from skillq.engine.bubblewrap import Isolation
from skillq.engine.sandbox import Limits, ToolFailed, kill_running, run_tool
from skillq.engine.skills import NAME_PATTERN, Skill, SkillError, SkillLibrary, Tool
from skillq.errors import InvalidParams, NotFound
from skillq.jobs.schema_messages import schema_errors
from skillq.json_values import shown

logger = logging.getLogger(__name__)

EXECUTE_SKILL_PARAMS = {
    "type": "object",
    "properties": {
        "skill": {"type": "string", "pattern": NAME_PATTERN, "description": "skill name"},
        "tool": {"type": "string", "pattern": NAME_PATTERN, "description": "tool name"},
        "input": {"type": "object", "description": "the tool's input (its own JSON Schema)"},
        "timeout_secs": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 86400,
            "description": "wall-clock limit, at most (and by default) the tool's timeout_secs",
        },
    },
    "required": ["skill", "tool"],
    "additionalProperties": False,
}


def skill_library() -> SkillLibrary:
    return SkillLibrary(settings.skills.paths)


def resolve(skill: str, tool: str, input: dict[str, Any]) -> tuple[Skill, Tool]:
    """The skill and tool, once `input` is known to match the tool's input schema."""
    found = skill_library().find(skill)
    chosen = found.tool(tool)
    details = schema_errors(chosen.validator, input, "params.input")
    if details:
        raise InvalidParams(f"input does not match the schema of {skill}/{tool}", details)
    return found, chosen


def check_params(params: dict[str, Any]) -> None:
    """At submission: refuse a job that could never run: an unknown skill or tool (404,
    like any reference to nothing), or input that breaks the tool's schema (422)."""
    resolve(params["skill"], params["tool"], params.get("input") or {})


def execute(
    skill: str,
    tool: str,
    input: dict[str, Any] | None = None,
    timeout_secs: float | None = None,
    *,
    job_id: str | None = None,
) -> dict[str, Any]:
    """The body of `execute_skill`, callable without a broker (CLI, tests)."""
    input = {} if input is None else input
    if timeout_secs is not None and not 0 < timeout_secs <= 86400:
        # Checked at submission too; here so that no value can make a tool run retry.
        raise InvalidParams(
            "timeout_secs must be a number of seconds in (0, 86400]",
            [{"path": "params.timeout_secs", "message": f"got {shown(timeout_secs)}"}],
        )
    found, chosen = resolve(skill, tool, input)
    run = run_tool(
        found.argv(chosen),
        input,
        # A caller may shorten a tool's timeout, never lengthen it past its author's limit.
        timeout_secs=min(timeout_secs or chosen.timeout_secs, chosen.timeout_secs),
        limits=Limits.from_settings(settings.skills),
        job_id=job_id,
        on_progress=report_progress,
        isolation=Isolation(settings.skills.sandbox, (found.directory,), chosen.network),
    )
    return {
        "skill": skill,
        "tool": tool,
        "output": run.result,
        "duration_secs": round(run.duration_secs, 3),
    }


@dramatiq.actor(
    actor_name="execute_skill",
    queue_name="skill",
    params_schema=EXECUTE_SKILL_PARAMS,
    params_check=check_params,
    description="Run one tool of a skill in a sandboxed subprocess (JSON in, JSON out).",
    throws=(InvalidParams, NotFound, SkillError, ToolFailed),
    # The sandbox enforces each tool's own timeout; this only bounds the job as a whole.
    time_limit=24 * 3600 * 1000,
)
def execute_skill(
    skill: str, tool: str, input: dict[str, Any] | None = None, timeout_secs: float | None = None
) -> dict[str, Any]:
    job = current_job()
    if job is None:  # called outside a worker's job
        return execute(skill, tool, input, timeout_secs)
    # Cancelling the job kills the tool's process group: the thread exception alone would
    # wait for the tool to finish.
    with job.on_cancel(functools.partial(kill_running, job.job_id)):
        return execute(skill, tool, input, timeout_secs, job_id=job.job_id)


class SandboxReport(dramatiq.Middleware):
    """Says once per worker process which sandbox its tools run in (the probe runs here, not
    on the first job), loudly when it is weaker than asked for or cannot run at all."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        status = bubblewrap.status(settings.skills.sandbox)
        if not status.usable:
            logger.error(status.describe())
        elif status.mode == "process" and status.setting == "auto":
            logger.warning(status.describe())
        else:
            logger.info(status.describe())


broker.add_middleware(SandboxReport())
