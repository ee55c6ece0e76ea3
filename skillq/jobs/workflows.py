"""Workflows: a small DAG of jobs created at once, all or nothing, and followed as one.

`{"jobs": {"a": {"type", "params"}, "b": {..., "depends_on": ["a"]}}}`: each node is a
submission (type, params, priority) whose `depends_on` names other nodes. Every node is
checked (schema, names, cycles, the bound) before anything is written; then the workflow
row, its jobs (all held) and their edges are written in one transaction, and the roots are
released like any job whose dependencies have ended. From then on the store drives it
(`skillq.jobs.release`): no barrier lives in memory, so restarts and crashes lose nothing.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jsonschema import Draft202012Validator

from skillq.errors import InvalidParams, NotFound, SkillqError
from skillq.jobs import dependencies, release
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.schema_messages import schema_errors
from skillq.jobs.submissions import JOB_PROPERTIES
from skillq.json_values import shown, storable_problems
from skillq.storage import JobState, jobs
from skillq.storage import dependencies as edges
from skillq.storage import workflows as stored
from skillq.storage.database import database_proxy, in_connection
from skillq.storage.models import utcnow

NODE_NAME = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **JOB_PROPERTIES,
        "depends_on": {
            **dependencies.DEPENDS_ON_SCHEMA,
            "description": "Other nodes of this workflow, by name.",
        },
    },
    "required": ["type"],
    "additionalProperties": False,
}
WORKFLOW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "jobs": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": NODE_NAME},
            "additionalProperties": NODE_SCHEMA,
        },
        "ttl_hours": {"type": "integer", "minimum": 1},
    },
    "required": ["jobs"],
    "additionalProperties": False,
}
_validator = Draft202012Validator(WORKFLOW_SCHEMA)


@dataclass(frozen=True)
class WorkflowStatus:
    id: str
    owner: str
    created_at: Any
    state: str
    counts: dict[str, int]
    #: `{node name: {id, state, waiting, error_type, error_message}}` of its jobs still kept.
    jobs: dict[str, Any]


def overall_state(counts: dict[str, int]) -> str:
    """`pending` until a job starts, `running` until none is unfinished; then `completed`
    if all completed, `failed` if any failed, else `cancelled`."""
    if counts["pending"] or counts["running"]:
        started = sum(counts.values()) - counts["pending"]
        return "running" if started else "pending"
    if counts["failed"]:
        return "failed"
    return "cancelled" if counts["cancelled"] else "completed"


def _in_node(name: str, error: SkillqError) -> SkillqError:
    """A node's submission error, its paths under `body.jobs.<name>`."""
    at = f"body.jobs.{name}"
    details = [
        {
            **detail,
            "path": detail["path"].replace("body.", f"{at}.", 1)
            if detail["path"].startswith("body.")
            else f"{at}.{detail['path']}",
        }
        for detail in error.details or []
        if isinstance(detail, dict) and "path" in detail
    ]
    return type(error)(f"job {shown(name)}: {error.message}", details or error.details)


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of `graph` (node -> the nodes it depends on), as a path, or None."""
    state: dict[str, int] = {}
    for start in graph:
        if state.get(start):
            continue
        stack = [(start, iter(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(graph[child])))
                path.append(child)
    return None


class Workflows:
    """Creating, reading and cancelling workflows, with the coordinator's checks and owner
    rules (another owner's workflow is a plain 404)."""

    def __init__(self, coordinator: JobCoordinator) -> None:
        self.coordinator = coordinator
        self.settings = coordinator.settings

    def _checked(self, request: Any, owner: str, any_owner: bool) -> dict[str, Any]:
        details = storable_problems(request, "body") if isinstance(request, dict) else []
        details = details or schema_errors(_validator, request, "body")
        if details:
            raise InvalidParams("the workflow does not match the workflow schema", details)
        nodes: dict[str, Any] = request["jobs"]
        bound = self.settings.jobs.max_workflow_jobs
        if len(nodes) > bound:
            message = f"{len(nodes)} jobs; at most {bound} (jobs.max_workflow_jobs)"
            raise InvalidParams("too many jobs", [{"path": "body.jobs", "message": message}])
        ttl = request.get("ttl_hours")
        checked = {}
        for name, node in nodes.items():
            submission = {k: v for k, v in node.items() if k != "depends_on"}
            if ttl is not None:
                submission["ttl_hours"] = ttl
            try:
                job_type, fields = self.coordinator.check_submission(
                    submission, owner=owner, any_owner=any_owner
                )
            except SkillqError as error:
                raise _in_node(name, error) from None
            wanted = dependencies.requested(
                node.get("depends_on"), f"body.jobs.{name}.depends_on", bound
            )
            unknown = [
                {"path": edge.at, "message": f"no job named {shown(edge.ref)} in this workflow"}
                for edge in wanted
                if edge.ref not in nodes
            ]
            if unknown:
                raise InvalidParams("depends_on names jobs not in the workflow", unknown)
            try:
                dependencies.check_references(fields["refs"], {edge.ref for edge in wanted})
            except InvalidParams as error:
                raise _in_node(name, error) from None
            checked[name] = (job_type, fields, wanted)
        cycle = _cycle({name: [edge.ref for edge in item[2]] for name, item in checked.items()})
        if cycle:
            raise InvalidParams(
                "the workflow's dependencies form a cycle",
                [
                    {
                        "path": f"body.jobs.{cycle[0]}.depends_on",
                        "message": "cycle: " + " -> ".join(cycle),
                    }
                ],
            )
        return checked

    @in_connection
    def create(self, request: Any, *, owner: str, any_owner: bool = False) -> WorkflowStatus:
        """Checks every node, writes everything in one transaction, releases the roots."""
        checked = self._checked(request, owner, any_owner)
        workflow_id = str(uuid.uuid4())
        rows = {
            name: self.coordinator.job_fields(job_type, fields, owner)
            for name, (job_type, fields, _) in checked.items()
        }
        ids = {name: row["id"] for name, row in rows.items()}
        ttl = request.get("ttl_hours", self.settings.jobs.default_ttl_hours)
        with database_proxy.atomic():
            stored.insert_workflow(
                workflow_id,
                owner=owner,
                jobs=ids,
                expires_at=utcnow() + timedelta(hours=min(ttl, self.settings.jobs.max_ttl_hours)),
            )
            for name, (_, _, wanted) in checked.items():
                made = [(ids[edge.ref], edge.on_failure, edge.ref) for edge in wanted]
                jobs.insert_job(
                    **rows[name],
                    waiting=True,
                    depends_on=dependencies.stored(made),
                    workflow_id=workflow_id,
                )
                edges.add_edges(ids[name], [(job, policy) for job, policy, _ in made])
        roots = [ids[name] for name, item in checked.items() if not item[2]]
        release.settle(roots, self.coordinator)
        return self._status(stored.get_workflow(workflow_id))

    @in_connection
    def get(self, workflow_id: str, *, owner: str | None = None) -> WorkflowStatus:
        return self._status(self._find(workflow_id, owner))

    @in_connection
    def cancel(self, workflow_id: str, *, owner: str | None = None) -> WorkflowStatus:
        """Cancel every unfinished job: pending ones at once, running ones by request."""
        workflow = self._find(workflow_id, owner)
        for job_id in stored.unfinished_jobs(workflow.id):
            if jobs.cancel_pending(job_id):
                # Jobs outside the workflow may wait for it too.
                release.release_dependants(job_id, self.coordinator)
            else:
                jobs.request_cancel(job_id)
        return self._status(workflow)

    def _find(self, workflow_id: str, owner: str | None) -> stored.Workflow:
        workflow = stored.get_workflow(workflow_id) if _UUID.fullmatch(workflow_id) else None
        if workflow is None or (owner is not None and workflow.owner != owner):
            raise NotFound(f"no workflow with id {shown(workflow_id)}")
        return workflow

    def _status(self, workflow: stored.Workflow) -> WorkflowStatus:
        found = stored.job_states(workflow.id)
        counts = {state.value: 0 for state in JobState}
        shown_jobs = {}
        for name, job_id in workflow.jobs.items():
            job = found.get(job_id)
            if job is None:
                continue  # purged past its TTL
            counts[job.state] += 1
            error = None
            if job.error_type is not None:
                error = {"type": job.error_type, "message": job.error_message}
            shown_jobs[name] = {"id": job.id, "state": job.state, "error": error}
        return WorkflowStatus(
            id=workflow.id,
            owner=workflow.owner,
            created_at=workflow.created_at,
            state=overall_state(counts),
            counts=counts,
            jobs=shown_jobs,
        )
