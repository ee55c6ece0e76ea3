"""`depends_on` of a submission: its shape, and the checks made before anything is written.

An item is a job id (or, in a workflow, a node name), or `{"job": ..., "on_failure":
"cancel" | "run"}`; `cancel` (the default) cancels the dependant when that dependency fails
or is cancelled, `run` runs it anyway (a `$result` of it is then null). Every id must name
an existing job of the submitter's own: an unknown id and another owner's are the same 422,
so ids cannot be probed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from skillq.errors import InvalidParams
from skillq.jobs.result_refs import Reference
from skillq.json_values import shown
from skillq.storage.models import Job

DEFAULT_ON_FAILURE = "cancel"
_NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^\\x00]*$"}

#: One item of `depends_on` (the REST body, MCP job options, a workflow node).
DEPENDENCY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _NAME,
        {
            "type": "object",
            "properties": {"job": _NAME, "on_failure": {"enum": ["cancel", "run"]}},
            "required": ["job"],
            "additionalProperties": False,
        },
    ],
    "description": "A job id (a workflow node name in a workflow), or "
    '`{"job", "on_failure": "cancel" | "run"}` (default cancel).',
}
DEPENDS_ON_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": DEPENDENCY_SCHEMA,
    "description": "Jobs this one waits for: it stays pending (`waiting_for`) until they "
    "end, and is cancelled if one fails or is cancelled (unless its `on_failure` is `run`).",
}
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Requested:
    """One edge as asked for: `ref` is a job id, or a node name inside a workflow."""

    ref: str
    on_failure: str
    #: Where it was asked for (`body.depends_on.0`), for error paths.
    at: str


def requested(items: list[Any] | None, at: str, bound: int) -> list[Requested]:
    """The edges of a schema-checked `depends_on`; 422 past `bound` or for a repeat."""
    items = items or []
    if len(items) > bound:
        raise InvalidParams(
            "too many dependencies",
            [
                {
                    "path": at,
                    "message": f"{len(items)} items; at most {bound} (jobs.max_workflow_jobs)",
                }
            ],
        )
    found: list[Requested] = []
    for index, item in enumerate(items):
        ref = item if isinstance(item, str) else item["job"]
        policy = DEFAULT_ON_FAILURE if isinstance(item, str) else item.get("on_failure", "cancel")
        if any(edge.ref == ref for edge in found):
            raise InvalidParams(
                "a dependency is named twice",
                [{"path": f"{at}.{index}", "message": f"{shown(ref)} is already listed"}],
            )
        found.append(Requested(ref, policy, f"{at}.{index}"))
    return found


def check_existing(edges: list[Requested], owner: str) -> None:
    """Every edge must name an existing job of `owner` (one query for all)."""
    ids = [edge.ref for edge in edges if _JOB_ID.fullmatch(edge.ref)]
    known = (
        {row.id for row in Job.select(Job.id).where(Job.id.in_(ids) & (Job.owner == owner))}
        if ids
        else set()
    )
    details = [
        {"path": edge.at, "message": f"no job with id {shown(edge.ref)}"}
        for edge in edges
        if edge.ref not in known
    ]
    if details:
        raise InvalidParams("depends_on names jobs that do not exist", details)


def check_references(refs: list[Reference], names: set[str]) -> None:
    """Each `$result` must name one of the job's own dependencies."""
    details = [
        {
            "path": ref.at,
            "message": f"$result names {shown(ref.names)}, which is not in its depends_on",
        }
        for ref in refs
        if ref.names not in names
    ]
    if details:
        raise InvalidParams("a $result reference names no dependency of its job", details)


def stored(edges: list[tuple[str, str, str | None]]) -> list[dict[str, Any]] | None:
    """`depends_on` as the job row keeps it and clients see it: `(job id, on_failure, node
    name or None)` each."""
    if not edges:
        return None
    return [{"job": job, "on_failure": policy, "name": name} for job, policy, name in edges]
