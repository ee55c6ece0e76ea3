"""The tool list: the immediate tools, every job type, and every skill's tools (`skill.tool`).

Nothing is registered by hand: job types come from the coordinator's catalogue (actors with
a `params_schema`), skill tools from the skill library when the `execute_skill` job type
exists. A job type's tool takes exactly its params; a skill tool takes the tool's input and
runs as an `execute_skill` job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from jsonschema import Draft202012Validator

from skillq.api.mcp.immediate import IMMEDIATE_TOOLS, ImmediateTool
from skillq.errors import InvalidParams, NotFound
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.schema_messages import schema_errors
from skillq.json_values import shown

logger = logging.getLogger(__name__)

SKILL_JOB_TYPE = "execute_skill"


@dataclass(frozen=True)
class JobTool:
    """A tool whose call is a job: it submits `job_type` with `params(arguments)`."""

    name: str
    description: str
    input_schema: dict[str, Any]
    job_type: str
    params: Callable[[dict[str, Any]], dict[str, Any]]
    #: Checked before submitting, for tools whose schema is not the job type's own.
    validator: Draft202012Validator | None = None

    def job_params(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.validator is not None:
            details = schema_errors(self.validator, arguments, "arguments")
            if details:
                message = f"arguments do not match the schema of {shown(self.name)}"
                raise InvalidParams(message, details)
        return self.params(arguments)


def _as_object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """MCP requires an object schema at the top; job params are always an object."""
    return schema if schema.get("type") == "object" else {**schema, "type": "object"}


def _skill_tools(coordinator: JobCoordinator) -> list[JobTool]:
    if SKILL_JOB_TYPE not in coordinator.job_types:
        return []
    try:
        from skillq.engine.skills import SkillLibrary
    except ImportError:
        return []
    try:
        skills, problems = SkillLibrary(coordinator.settings.skills.paths).all()
    except Exception:
        logger.exception("Could not read the skill library; serving no skill tools.")
        return []
    for problem in problems:
        logger.warning("Skill skipped: %s", problem)
    tools = []
    for skill in skills:
        for tool in skill.tools.values():

            def params(arguments: dict[str, Any], skill=skill.name, tool=tool.name) -> dict:
                return {"skill": skill, "tool": tool, "input": arguments}

            tools.append(
                JobTool(
                    name=f"{skill.name}.{tool.name}",
                    description=tool.description or skill.description,
                    input_schema=_as_object_schema(tool.input_schema),
                    job_type=SKILL_JOB_TYPE,
                    params=params,
                    # The tool's own validator: the same check the submission will make.
                    validator=tool.validator,
                )
            )
    return tools


class ToolCatalogue:
    """Resolves tool names for one coordinator; skills are re-read on every listing, so a
    skill added on disk shows up without a restart."""

    def __init__(self, coordinator: JobCoordinator) -> None:
        self.coordinator = coordinator

    def _job_type_tools(self) -> dict[str, JobTool]:
        tools: dict[str, JobTool] = {}
        for job_type in self.coordinator.job_types.values():
            if job_type.name in IMMEDIATE_TOOLS:
                logger.warning("Job type %r hides behind the immediate tool.", job_type.name)
                continue
            tools[job_type.name] = JobTool(
                name=job_type.name,
                description=job_type.description,
                input_schema=_as_object_schema(job_type.params_schema),
                job_type=job_type.name,
                params=dict,
            )
        return tools

    def job_tools(self) -> dict[str, JobTool]:
        tools = self._job_type_tools()
        for tool in _skill_tools(self.coordinator):
            tools.setdefault(tool.name, tool)
        return tools

    def find(self, name: str) -> ImmediateTool | JobTool:
        tool = IMMEDIATE_TOOLS.get(name) or self._job_type_tools().get(name)
        if tool is None and "." in name:  # only skill tools are dotted; reading skills costs I/O
            tool = self.job_tools().get(name)
        if tool is None:
            raise NotFound(f"no tool named {shown(name)}; tools/list shows the available tools")
        return tool

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """For the SDK's 2026 `Mcp-Param-*` header check, which would otherwise run the whole
        tools/list (reading every skill) on each call."""
        try:
            return self.find(name).input_schema
        except NotFound:
            return None

    def listing(self, with_tasks: bool = True) -> list[types.Tool]:
        """`with_tasks`: the session speaks 2025-11-25 tasks, so job tools say they run as one."""
        execution = types.ToolExecution(task_support="optional") if with_tasks else None
        listed = [
            types.Tool(name=tool.name, description=tool.description, input_schema=tool.input_schema)
            for tool in IMMEDIATE_TOOLS.values()
        ]
        for tool in self.job_tools().values():
            listed.append(
                types.Tool(
                    name=tool.name,
                    description=tool.description,
                    input_schema=tool.input_schema,
                    execution=execution,
                )
            )
        return listed
