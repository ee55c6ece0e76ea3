"""The immediate tools: they answer from the store at once, and follow and steer jobs.

`job_status`, `job_logs`, `list_jobs`, `cancel_job`, `retry_job` and `list_job_types` are
the path every MCP client can use to follow a job that outlived its tools/call, whether or
not it supports MCP tasks. Each runs one coordinator call, with the caller's owner scope and role.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from jsonschema import Draft202012Validator

from skillq.api.principal import SUBMITTER, VIEWER, Principal
from skillq.engine.collection_files import MAX_OWNER_LENGTH
from skillq.errors import InvalidParams
from skillq.jobs.coordinator import MAX_PAGE_SIZE, JobCoordinator
from skillq.jobs.fields import job_summary_to_dict, job_to_dict
from skillq.jobs.logs import log_page_to_dict
from skillq.jobs.schema_messages import schema_errors
from skillq.json_values import shown, storable_problems
from skillq.storage import JobState
from skillq.storage.job_logs import MAX_SEQ

_JOB_ID = {"type": "string", "minLength": 1, "maxLength": 36, "description": "The job's id."}
_JOB_ID_ONLY = {
    "type": "object",
    "properties": {"job_id": _JOB_ID},
    "required": ["job_id"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ImmediateTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    #: Runs in a worker thread: (coordinator, caller, arguments) -> structured result.
    run: Callable[[JobCoordinator, Principal, dict[str, Any]], dict[str, Any]]
    #: The role a call needs (checked again by `run`; HTTP refuses a call without it first).
    role: str = VIEWER

    @functools.cached_property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.input_schema)

    def __call__(
        self, coordinator: JobCoordinator, caller: Principal, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        details = storable_problems(arguments, "arguments")
        if details:
            raise InvalidParams("arguments hold values that cannot be stored", details)
        details = schema_errors(self.validator, arguments, "arguments")
        if details:
            raise InvalidParams(f"arguments do not match the schema of {shown(self.name)}", details)
        return self.run(coordinator, caller, arguments)


def require_submitter(caller: Principal) -> None:
    caller.require(SUBMITTER, "submit or change jobs")


def _job_status(coordinator: JobCoordinator, caller: Principal, args: dict) -> dict:
    job = coordinator.get_job(args["job_id"], owner=caller.owner_filter)
    return job_to_dict(job, position_in_queue=coordinator.position_in_queue(job))


def _list_jobs(coordinator: JobCoordinator, caller: Principal, args: dict) -> dict:
    limit, offset = args.get("limit", 20), args.get("offset", 0)
    page = coordinator.list_jobs(
        states=args.get("state"),
        types=args.get("type"),
        owner=caller.owner_filter,
        limit=limit,
        offset=offset,
    )
    jobs = [job_summary_to_dict(job) for job in page.jobs]
    return {"jobs": jobs, "total": page.total, "limit": limit, "offset": offset}


def _cancel_job(coordinator: JobCoordinator, caller: Principal, args: dict) -> dict:
    require_submitter(caller)
    return job_to_dict(coordinator.cancel_job(args["job_id"], owner=caller.owner_filter))


def _retry_job(coordinator: JobCoordinator, caller: Principal, args: dict) -> dict:
    require_submitter(caller)
    return job_to_dict(coordinator.retry_job(args["job_id"], owner=caller.owner_filter))


def _job_logs(coordinator: JobCoordinator, caller: Principal, args: dict) -> dict:
    job, page = coordinator.read_logs(
        args["job_id"], owner=caller.owner_filter, since=args.get("since", 0)
    )
    return log_page_to_dict(job.id, job.state, page)


def _list_job_types(coordinator: JobCoordinator, caller: Principal, args: dict) -> dict:
    return {"job_types": [job_type.to_dict() for job_type in coordinator.job_types.values()]}


@functools.cache
def _collections(storage_backend: str, search_settings: Any) -> Any:
    from skillq.engine.search_backend import open_collections

    return open_collections(storage_backend, search_settings)


def _search(coordinator: JobCoordinator, caller: Principal, args: dict) -> dict:
    """Search reads the collection the index workers wrote, so it never waits for a job.
    The caller's own collection, or (an admin only) the `owner` it names, as over REST."""
    settings = coordinator.settings
    k = args.get("k", 10)
    owner = caller.data_owner(args.get("owner"))
    collections = _collections(settings.storage.backend, settings.search)
    hits = collections.search(args["collection"], args["query"], k, owner=owner)
    query = {"owner": owner, "collection": args["collection"], "query": args["query"], "k": k}
    return {**query, "hits": [asdict(hit) for hit in hits]}


_STATES = sorted(state.value for state in JobState)

IMMEDIATE_TOOLS: dict[str, ImmediateTool] = {
    tool.name: tool
    for tool in [
        ImmediateTool(
            "job_status",
            "Show one job: state, progress, message, result or error.",
            _JOB_ID_ONLY,
            _job_status,
        ),
        ImmediateTool(
            "list_jobs",
            "List jobs, newest first, optionally by state and type; without params and results"
            " (job_status shows them).",
            {
                "type": "object",
                "properties": {
                    "state": {"type": "array", "items": {"enum": _STATES}},
                    "type": {"type": "array", "items": {"type": "string"}},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                    "offset": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            },
            _list_jobs,
        ),
        ImmediateTool(
            "job_logs",
            "Read a job's kept log lines (log records, tool stderr, the error), after `since`;"
            " call again with the returned `next_since` for what follows.",
            {
                "type": "object",
                "properties": {
                    "job_id": _JOB_ID,
                    "since": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                },
                "required": ["job_id"],
                "additionalProperties": False,
            },
            _job_logs,
        ),
        ImmediateTool(
            "cancel_job",
            "Cancel a pending or running job.",
            _JOB_ID_ONLY,
            _cancel_job,
            SUBMITTER,
        ),
        ImmediateTool(
            "retry_job",
            "Run a failed or cancelled job again.",
            _JOB_ID_ONLY,
            _retry_job,
            SUBMITTER,
        ),
        ImmediateTool(
            "search",
            "Search an indexed collection (keyword BM25, hybrid with vectors when configured).",
            {
                "type": "object",
                "properties": {
                    "collection": {"type": "string", "minLength": 1},
                    "query": {"type": "string", "minLength": 1},
                    "k": {"type": "integer", "minimum": 1, "maximum": 100},
                    "owner": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_OWNER_LENGTH,
                        "pattern": "^[^\\x00]*$",
                        "description": "Whose collection (admin only); default: the caller's.",
                    },
                },
                "required": ["collection", "query"],
                "additionalProperties": False,
            },
            _search,
        ),
        ImmediateTool(
            "list_job_types",
            "List the job types with their parameter schemas and queues.",
            {"type": "object", "properties": {}, "additionalProperties": False},
            _list_job_types,
        ),
    ]
}
