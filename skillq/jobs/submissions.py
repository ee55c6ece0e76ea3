"""What a submission must be before anything is written: the request schema, the job type's
params schema, sizes, TTL, delay and callback bounds (`validate_submission`), who a job may act
for (`check_acts_for_itself`), and whether a repeated idempotency key names the same request
(`same_request`). Shared by single submits (`skillq.jobs.coordinator`), batches and workflows."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from skillq.errors import Forbidden, IdempotencyKeyReused, InvalidParams, UnknownJobType
from skillq.jobs import delays, dependencies, result_refs
from skillq.jobs.quick_schemas import quick_check
from skillq.jobs.schema_messages import schema_errors
from skillq.jobs.sizes import check_params_size
from skillq.jobs.types import JobType
from skillq.json_values import shown, storable_problems
from skillq.settings import JobsSettings, WebhookSettings
from skillq.storage import Job
from skillq.storage.models import utcnow
from skillq.webhooks import events as webhook_events

PRIORITY_NAMES = {"low": 2, "normal": 5, "high": 8}
DEFAULT_PRIORITY = 5

#: What every way of asking for a job says alike: a submission, a workflow's node.
JOB_PROPERTIES: dict[str, Any] = {
    "type": {"type": "string", "minLength": 1, "maxLength": 100},
    "params": {"type": "object"},
    "priority": {
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": 10},
            {"enum": sorted(PRIORITY_NAMES)},
        ]
    },
}

SUBMISSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **JOB_PROPERTIES,
        "ttl_hours": {"type": "integer", "minimum": 1},
        # No NUL: PostgreSQL text cannot hold it.
        "idempotency_key": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "pattern": "^[^\\x00]*$",
        },
        "trace_id": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\x00]*$"},
        "depends_on": dependencies.DEPENDS_ON_SCHEMA,
        # Checked further by the SSRF guard (skillq.webhooks.addresses).
        "callback_url": {"type": "string", "minLength": 1, "maxLength": 2000},
        **delays.SCHEMA_PROPERTIES,
    },
    "required": ["type"],
    "additionalProperties": False,
}
_submission_validator = Draft202012Validator(SUBMISSION_SCHEMA)
#: A quick yes for the usual submission (`quick_schemas`); None if it could not be compiled.
_quick_submission = quick_check(SUBMISSION_SCHEMA)


def check_acts_for_itself(job_type: JobType, params: dict[str, Any], owner: str) -> None:
    named = params.get(job_type.owner_param) if job_type.owner_param else None
    if named is not None and named != owner:
        # Refused whether or not that owner or its data exist, so nothing leaks.
        raise Forbidden(
            f"only an admin may act on another owner's data (params.{job_type.owner_param})"
        )


def validate_submission(
    request: Any, job_types: dict[str, JobType], settings: JobsSettings, webhooks: WebhookSettings
) -> tuple[JobType, dict[str, Any]]:
    """The job type and the checked fields of a submission, or InvalidParams (or
    UnknownJobType) naming every problem found; nothing is written."""
    # First, before any schema: nothing is written that cannot be read back.
    details = unstorable_fields(request)
    if details:
        raise InvalidParams("the submission holds values that cannot be stored", details)
    # The full validators run only on what the quick checks are not sure of: they alone
    # find and word the errors, and their walk was half of these checks' time per submit.
    details = (
        []
        if _quick_submission is not None and _quick_submission(request)
        else schema_errors(_submission_validator, request, "body")
    )
    if details:
        raise InvalidParams("the submission does not match the job request schema", details)
    job_type = job_types.get(request["type"])
    if job_type is None:
        known = ", ".join(job_types) or "none"
        raise UnknownJobType(
            f"unknown job type {shown(request['type'])}",
            [{"path": "body.type", "message": f"known job types: {known}"}],
        )
    params = request.get("params", {})
    # `$result` values are not known yet: checked when the job is released.
    refs = result_refs.references(params)
    details = (
        [] if job_type.quick_check(params) else schema_errors(job_type.validator, params, "params")
    )
    details = result_refs.outside_references(details, refs)
    if details:
        message = f"params do not match the schema of {shown(job_type.name)}"
        raise InvalidParams(message, details)
    check_params_size(params, settings.max_params_bytes)
    if job_type.params_check is not None and not refs:
        job_type.params_check(params)
    ttl_hours = request.get("ttl_hours", settings.default_ttl_hours)
    if ttl_hours > settings.max_ttl_hours:
        raise InvalidParams(
            "ttl_hours is too large",
            [
                {
                    "path": "body.ttl_hours",
                    "message": f"must be at most {settings.max_ttl_hours}",
                }
            ],
        )
    if "callback_url" in request:
        webhook_events.check_callback_url(webhooks, request["callback_url"])
    priority = request.get("priority", DEFAULT_PRIORITY)
    priority = PRIORITY_NAMES.get(priority, priority)
    scheduled_for = delays.scheduled_for(request, settings.max_delay_hours, utcnow())
    fields = dict(
        request,
        params=params,
        priority=priority,
        ttl_hours=ttl_hours,
        refs=refs,
        scheduled_for=scheduled_for,
    )
    return job_type, fields


def unstorable_fields(request: Any) -> list[dict[str, str]]:
    """Storability problems of a submission; `params` paths read as schema errors do."""
    if not isinstance(request, dict):
        return []
    details = []
    for name, value in request.items():
        details += storable_problems(value, "params" if name == "params" else f"body.{name}")
    return details


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (`1` is `1.0`), but `true` is not `1` as in Python.
    Recursion is bounded: both values passed the depth check."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def same_request(existing: Job, job_type: JobType, fields: dict[str, Any]) -> Job:
    """The job an idempotency key already names, if this submission is the same request
    (type, params and priority; a retry may change its trace id and TTL). A different
    request with the same key is an error, never the other request's job (Stripe's rule)."""
    differs = [
        name
        for name, before, now in [
            ("type", existing.type, job_type.name),
            ("params", existing.params, fields["params"]),
            ("priority", existing.priority, fields["priority"]),
        ]
        if not same_json(before, now)
    ]
    if not differs:
        return existing
    raise IdempotencyKeyReused(
        f"idempotency key {shown(existing.idempotency_key)} was already used for job "
        f"{existing.id} ({existing.type}) with a different {' and '.join(differs)}; "
        "use a new key for a new request",
        [
            {
                "path": "body.idempotency_key",
                "message": f"already names job {existing.id}; differs in {', '.join(differs)}",
                "job_id": existing.id,
            }
        ],
    )
