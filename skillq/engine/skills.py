"""Skills: folders with a `skill.toml` that declare tools a job can run.

    skills/text-stats/skill.toml
        name = "text-stats"
        description = "..."
        [[tools]]
        name = "word_count"
        description = "..."
        command = ["{python}", "{skill_dir}/word_count.py"]
        timeout_secs = 10
        kind = "fast"                   # fast | long
        network = false                 # true: the tool may use the network (bwrap sandbox)
        [tools.input_schema]            # JSON Schema of the JSON the tool reads on stdin
        type = "object"

A skill is looked up by its folder name under one of `skills.paths`. Names are checked
before they touch the file system, and the resolved folder must stay inside its root, so a
client cannot point a job at `../../etc` or at a symlink that leads out.
"""

from __future__ import annotations

import functools
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from skillq.errors import InvalidParams, NotFound
from skillq.json_values import shown

MANIFEST = "skill.toml"
#: Skill and tool names: a letter or digit, then letters, digits, `_`, `-`, `.`; never `..`.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
KINDS = ("fast", "long")


class SkillError(InvalidParams):
    """A `skill.toml` that cannot be used; the message names the file and the key.

    Every surface answers it as it answers `InvalidParams` (REST 422), with its own code."""

    code = "invalid_skill"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    command: tuple[str, ...]
    timeout_secs: float
    kind: str
    #: Whether the sandbox leaves the tool the host's network (bwrap mode; see the README).
    network: bool = False

    @functools.cached_property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(
            self.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "timeout_secs": self.timeout_secs,
            "network": self.network,
            "input_schema": self.input_schema,
            "command": list(self.command),
        }


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    directory: Path
    tools: dict[str, Tool] = field(default_factory=dict)

    def tool(self, name: str) -> Tool:
        check_name(name, "tool")
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            raise NotFound(
                f"skill {shown(self.name)} has no tool {shown(name)}",
                [{"path": "params.tool", "message": f"known tools: {known}"}],
            )
        return tool

    def argv(self, tool: Tool) -> list[str]:
        """The tool's command with `{python}` and `{skill_dir}` filled in.

        An argument that names a file of the skill must still be inside the skill's folder
        once symlinks are resolved.
        """
        argv = []
        for part in tool.command:
            arg = part.replace("{python}", sys.executable).replace(
                "{skill_dir}", str(self.directory)
            )
            if "{skill_dir}" in part and not _inside(Path(arg), self.directory):
                raise SkillError(f"{self.directory / MANIFEST}: {part!r} leads out of the skill")
            argv.append(arg)
        return argv

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "directory": str(self.directory),
            "tools": [tool.to_dict() for tool in self.tools.values()],
        }


def check_name(name: Any, what: str) -> str:
    """Refuses anything that is not a plain name, before it is joined to a path."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidParams(
            f"invalid {what} name {shown(name)}",
            [{"path": f"params.{what}", "message": f"must match {NAME_PATTERN} without '..'"}],
        )
    return name


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _require(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or (isinstance(value, str | list) and not value):
        raise SkillError(f"{where}: {key} must be a non-empty {kind.__name__}")
    return value


def _load_tool(raw: Any, where: str) -> Tool:
    if not isinstance(raw, dict):
        raise SkillError(f"{where}: must be a table")
    name = _require(raw, "name", str, where)
    where = f"{where} ({name})"
    if not _NAME.match(name) or ".." in name:
        raise SkillError(f"{where}: name must match {NAME_PATTERN}")
    command = _require(raw, "command", list, where)
    if not all(isinstance(part, str) for part in command):
        raise SkillError(f"{where}: command must be a list of strings")
    schema = raw.get("input_schema", {"type": "object"})
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        problem = f"{where}: input_schema is not a valid JSON Schema: {error.message}"
        raise SkillError(problem) from None
    timeout = raw.get("timeout_secs", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise SkillError(f"{where}: timeout_secs must be a positive number")
    kind = raw.get("kind", "fast")
    if kind not in KINDS:
        raise SkillError(f"{where}: kind must be one of {', '.join(KINDS)}")
    network = raw.get("network", False)
    if not isinstance(network, bool):
        raise SkillError(f"{where}: network must be true or false")
    known = {"name", "description", "command", "input_schema", "timeout_secs", "kind", "network"}
    unknown = set(raw) - known
    if unknown:
        raise SkillError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    return Tool(
        name=name,
        description=str(raw.get("description", "")),
        input_schema=schema,
        command=tuple(command),
        timeout_secs=float(timeout),
        kind=kind,
        network=network,
    )


def load_skill(directory: Path) -> Skill:
    manifest = directory / MANIFEST
    try:
        raw = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SkillError(f"{manifest}: cannot read: {error}") from None
    name = _require(raw, "name", str, str(manifest))
    if name != directory.name:
        raise SkillError(f"{manifest}: name {name!r} must equal its folder {directory.name!r}")
    tools_raw = raw.get("tools", [])
    if not isinstance(tools_raw, list):
        raise SkillError(f"{manifest}: tools must be an array of tables")
    tools: dict[str, Tool] = {}
    for i, tool_raw in enumerate(tools_raw):
        tool = _load_tool(tool_raw, f"{manifest}: tools[{i}]")
        if tool.name in tools:
            raise SkillError(f"{manifest}: tools[{i}]: duplicate tool {tool.name!r}")
        tools[tool.name] = tool
    return Skill(name, str(raw.get("description", "")), directory.resolve(), tools)


class SkillLibrary:
    """The skills under the configured roots; the first root that has a name wins."""

    def __init__(self, roots: tuple[Path, ...] | list[Path]) -> None:
        self.roots = [Path(root) for root in roots]

    def find(self, name: Any) -> Skill:
        check_name(name, "skill")
        for root in self.roots:
            candidate = root / name
            if not (candidate / MANIFEST).is_file():
                continue
            if not _inside(candidate, root) or not _inside(candidate / MANIFEST, root):
                raise InvalidParams(
                    f"skill {shown(name)} leads out of its skills folder",
                    [{"path": "params.skill", "message": "symlinks out of a skills root"}],
                )
            return load_skill(candidate)
        # Name what was looked up, never where: the server's paths are not the client's.
        raise NotFound(
            f"no skill named {shown(name)}",
            [{"path": "params.skill", "message": f"no skill {shown(name)} is installed"}],
        )

    def all(self) -> tuple[list[Skill], list[str]]:
        """Every loadable skill, and one problem line per folder that could not be loaded."""
        skills: dict[str, Skill] = {}
        problems = []
        for root in self.roots:
            if not root.is_dir():
                continue
            for candidate in sorted(root.iterdir()):
                if candidate.name in skills or not (candidate / MANIFEST).is_file():
                    continue
                try:
                    skills[candidate.name] = self.find(candidate.name)
                except (SkillError, InvalidParams) as error:
                    problems.append(str(error))
        return list(skills.values()), problems
