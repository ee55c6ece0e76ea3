"""`generate_examples`: example inputs for a skill's tools, on the `ai` queue.

Valid against each tool's input schema by construction (checked again before keeping one),
deterministic for a seed, and realistic ones from an LLM when `[llm] url` is set. Stored
with the skill's examples (`skillq skills examples NAME`) and returned as the result.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from skillq.actors import settings
from skillq.actors.skills import skill_library
from skillq.brokers.progress import report_progress
from skillq.engine.examples import ChatClient, ExampleStore, generate_examples
from skillq.engine.skills import NAME_PATTERN, SkillError
from skillq.errors import InvalidParams, NotFound

GENERATE_EXAMPLES_PARAMS = {
    "type": "object",
    "properties": {
        "skill": {"type": "string", "pattern": NAME_PATTERN},
        "tool_names": {
            "type": "array",
            "items": {"type": "string", "pattern": NAME_PATTERN},
            "description": "only these tools (default: every tool of the skill)",
        },
        "examples_per_tool": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
    },
    "required": ["skill"],
    "additionalProperties": False,
}


def example_store() -> ExampleStore:
    return ExampleStore(settings.skills.examples_dir)


def chat_client() -> ChatClient | None:
    llm = settings.llm
    if llm.url is None:
        return None
    return ChatClient(llm.url, llm.model, llm.api_key, llm.timeout_secs)


def check_params(params: dict[str, Any]) -> None:
    """At submission: refuse an unknown skill or tool name (404, a reference to nothing)."""
    found = skill_library().find(params["skill"])
    for name in params.get("tool_names") or []:
        found.tool(name)


@dramatiq.actor(
    actor_name="generate_examples",
    queue_name="ai",
    params_schema=GENERATE_EXAMPLES_PARAMS,
    params_check=check_params,
    description="Generate example inputs for a skill's tools, valid against their schemas "
    "(from an LLM when configured, else drawn from the schema), and store them.",
    throws=(InvalidParams, NotFound, SkillError),
)
def generate_examples_actor(
    skill: str, tool_names: list[str] | None = None, examples_per_tool: int = 5, seed: int = 0
) -> dict[str, Any]:
    found = skill_library().find(skill)
    tools = generate_examples(
        found,
        tool_names,
        examples_per_tool,
        seed=seed,
        llm=chat_client(),
        on_progress=report_progress,
    )
    example_store().save(skill, tools, seed)
    return {"skill": skill, "seed": seed, "tools": tools}
