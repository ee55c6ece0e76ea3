"""`execute_skill`: run one tool of a skill in the sandbox, on the `skill` queue.

The input is validated against the tool's schema before anything runs, at submission
(422) and again in the worker (the skill may have changed in between); the tool's stderr
progress lines become the job's progress; its JSON stdout is the job's result. A tool is
not retried after it ran (it may have had side effects), and neither is a request that can
never succeed (unknown skill, invalid input): both are in `throws`.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from skillq.actors import settings
from skillq.brokers.progress import current_job_id, report_progress
from skillq.engine.sandbox import Limits, ToolFailed, run_tool
from skillq.engine.skills import NAME_PATTERN, Skill, SkillError, SkillLibrary, Tool
from skillq.errors import InvalidParams, NotFound
from skillq.jobs.coordinator import schema_errors
from skillq.json_values import shown

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
    return execute(skill, tool, input, timeout_secs, job_id=current_job_id())
