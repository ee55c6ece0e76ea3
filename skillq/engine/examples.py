"""Example inputs for a skill's tools: valid against each tool's input schema, deterministic.

Three sources, in this order:

1. an LLM, when `[llm] url` names an OpenAI-compatible chat-completions endpoint: asked
   for realistic inputs; only those that validate against the schema are kept;
2. the `examples` the skill's author listed in the tool's input schema (JSON Schema's own
   keyword), if they validate;
3. hypothesis-jsonschema, which draws inputs from the schema itself: with the same seed
   it draws the same inputs, so the result is reproducible offline.

The examples are stored as `<skills.examples_dir>/<skill>.json` (the skill's own folder
may be read-only, e.g. inside an installed package), which `skillq skills examples NAME`
reads back.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from skillq.engine.skills import Skill, Tool, check_name

#: hypothesis keeps global state while it runs a search; one generation at a time.
_hypothesis_lock = threading.Lock()
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def schema_examples(schema: dict[str, Any], count: int, seed: int) -> list[Any]:
    """Up to `count` distinct instances of `schema`, the same ones for the same seed."""
    # hypothesis caches files under ./.hypothesis by default: not in a worker's cwd.
    os.environ.setdefault(
        "HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "skillq-hypothesis")
    )
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import seed as hypothesis_seed
    from hypothesis import settings as hypothesis_settings
    from hypothesis_jsonschema import from_schema

    found: dict[str, Any] = {}

    @hypothesis_seed(seed)
    @hypothesis_settings(
        max_examples=max(10, count * 5),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(schema, allow_x00=False, codec="ascii"))
    def collect(value: Any) -> None:
        if len(found) < count:
            found.setdefault(json.dumps(value, sort_keys=True), value)

    with _hypothesis_lock:
        collect()
    return list(found.values())


class ChatClient:
    """Asks an OpenAI-compatible `POST {url}/chat/completions` endpoint for examples."""

    def __init__(self, url: str, model: str, api_key: str | None, timeout_secs: float) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_secs)

    def examples(self, skill: Skill, tool: Tool, count: int, seed: int) -> list[Any]:
        """Candidate inputs as the model wrote them (not yet validated); [] on any failure,
        because the schema-drawn examples still make a useful result."""
        prompt = (
            f"Write {count} realistic, varied example inputs for the tool {tool.name!r} "
            f"of the skill {skill.name!r}.\nTool description: {tool.description}\n"
            f"Input JSON Schema:\n{json.dumps(tool.input_schema)}\n"
            'Answer with only a JSON object: {"examples": [<input>, ...]}.'
        )
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": "You write test inputs for software tools."},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0,
            "seed": seed,
        }
        try:
            response = self.client.post(self.url, json=body)
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return []
        return _parse_examples(content)


def _parse_examples(content: Any) -> list[Any]:
    if not isinstance(content, str):
        return []
    fenced = _FENCE.search(content)
    try:
        parsed = json.loads(fenced.group(1) if fenced else content)
    except json.JSONDecodeError:
        return []
    if isinstance(parsed, dict):
        parsed = parsed.get("examples", [])
    return parsed if isinstance(parsed, list) else []


def generate_examples(
    skill: Skill,
    tool_names: list[str] | None,
    per_tool: int,
    *,
    seed: int = 0,
    llm: ChatClient | None = None,
    on_progress: Callable[[float, str], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per tool, `per_tool` examples `{"input": ..., "source": "llm" | "skill" | "schema"}`:
    the LLM's first, then the `examples` listed in the tool's input schema, then drawn ones."""
    tools = [skill.tool(name) for name in tool_names] if tool_names else list(skill.tools.values())
    result: dict[str, list[dict[str, Any]]] = {}
    for done, tool in enumerate(tools, start=1):
        validator = tool.validator
        chosen: dict[str, dict[str, Any]] = {}
        if llm is not None:
            for candidate in llm.examples(skill, tool, per_tool, seed):
                key = json.dumps(candidate, sort_keys=True)
                if len(chosen) < per_tool and validator.is_valid(candidate):
                    chosen.setdefault(key, {"input": candidate, "source": "llm"})
        for candidate in tool.input_schema.get("examples", []):  # the skill author's own
            key = json.dumps(candidate, sort_keys=True)
            if len(chosen) < per_tool and validator.is_valid(candidate):
                chosen.setdefault(key, {"input": candidate, "source": "skill"})
        if len(chosen) < per_tool:
            for candidate in schema_examples(tool.input_schema, per_tool, seed):
                key = json.dumps(candidate, sort_keys=True)
                if len(chosen) < per_tool and validator.is_valid(candidate):
                    chosen.setdefault(key, {"input": candidate, "source": "schema"})
        result[tool.name] = list(chosen.values())
        if on_progress is not None:
            on_progress(done / len(tools), f"{tool.name}: {len(chosen)} examples")
    return result


class ExampleStore:
    """`<root>/<skill>.json`: the latest examples per tool, replaced atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, skill: str) -> Path:
        return self.root / f"{check_name(skill, 'skill')}.json"

    def load(self, skill: str) -> dict[str, Any]:
        try:
            return json.loads(self.path(skill).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"skill": skill, "tools": {}}

    def save(self, skill: str, tools: dict[str, list[dict[str, Any]]], seed: int) -> dict:
        stored = self.load(skill)
        stored["tools"] = {**stored.get("tools", {}), **tools}
        stored.update(skill=skill, seed=seed, updated_at=datetime.now(UTC).isoformat())
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.root, suffix=".tmp", delete=False, encoding="utf-8"
        ) as handle:
            json.dump(stored, handle, indent=2)
        os.replace(handle.name, self.path(skill))
        return stored
