"""Batch submit: many jobs in one call, checked all together, written in one transaction,
their messages sent together (one pipeline on Redis, one transaction on the SQLite broker).

Every rule of a single submit holds for each item (`JobCoordinator._submit`): the schema
checks, the owner rule, idempotency keys, dependencies, delays, callback URLs and quotas.
The batch is all or nothing up to its sends: one bad item refuses the whole batch before
anything is written, with every bad item named by index (`body.jobs[3].params.x`); a quota
refuses it whole (the batch's jobs count together). An item repeating an idempotency key
answers with the earlier job, as a single submit does; two items of one batch with the same
key are the same request, sent twice (the second answers with the first's job).

Sends come after the commit, as for a single submit. If the broker refuses some, exactly
those jobs are failed (`EnqueueError`) and the call answers 503 naming which jobs were
queued and which were not, so a client retries only the failed ones; a crash between the
commit and the sends leaves the jobs pending with no `enqueued_at`, and stale-job recovery
sends them (`skillq.jobs.recovery`). Either way every accepted job ends in a terminal state.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import peewee
from jsonschema import Draft202012Validator

from skillq import tracing
from skillq.brokers.batch_sends import NotAllSent, enqueue_all
from skillq.errors import IdempotencyKeyReused, InvalidParams, ServiceUnavailable, SkillqError
from skillq.jobs import delays, dependencies, quotas, release
from skillq.jobs.schema_messages import schema_errors
from skillq.jobs.submissions import same_json, same_request
from skillq.jobs.types import JobType
from skillq.json_values import shown
from skillq.storage import Job, jobs
from skillq.storage import dependencies as edges
from skillq.storage.database import database_proxy
from skillq.storage.models import utcnow
from skillq.webhooks import events as webhook_events

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from skillq.jobs.coordinator import JobCoordinator, Submission

#: The REST body: `{"jobs": [<submit bodies>]}`.
BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"jobs": {"type": "array", "minItems": 1}},
    "required": ["jobs"],
    "additionalProperties": False,
}
_batch_validator = Draft202012Validator(BATCH_SCHEMA)
#: How many times a batch is written again after losing an idempotency-key race.
_KEY_RACE_RETRIES = 3


@dataclass
class _Item:
    index: int
    job_type: JobType
    fields: dict[str, Any]
    wanted: list[dependencies.Requested]
    #: The job this item answers with without writing one (a repeated idempotency key).
    existing: Job | None = None
    #: The index of an earlier item of this batch with the same key (same request).
    same_as: int | None = None
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        return self.fields.get("idempotency_key")


def requests_of(body: Any, bound: int) -> list[Any]:
    """The submissions of a REST batch body; 422 for a malformed envelope or past `bound`."""
    details = schema_errors(_batch_validator, body, "body")
    if details:
        raise InvalidParams("the batch does not match the batch schema", details)
    check_size(body["jobs"], bound)
    return body["jobs"]


def check_size(requests: list[Any], bound: int) -> None:
    if len(requests) > bound:
        message = f"{len(requests)} jobs; at most {bound} (jobs.max_batch_jobs)"
        raise InvalidParams(
            "too many jobs in one batch", [{"path": "body.jobs", "message": message}]
        )


def submit_jobs(
    coordinator: JobCoordinator, requests: list[Any], owner: str, any_owner: bool
) -> list[Submission]:
    """See the module's docstring; the coordinator's `submit_jobs` is the way in."""
    if not isinstance(requests, list):
        raise InvalidParams(
            "a batch is a list of submissions", [{"path": "body.jobs", "message": "not an array"}]
        )
    check_size(requests, coordinator.settings.jobs.max_batch_jobs)
    items = _checked(coordinator, requests, owner, any_owner)
    for attempt in range(_KEY_RACE_RETRIES + 1):
        _match_keys(items, owner)
        try:
            _write(coordinator, items, owner)
            break
        except peewee.IntegrityError:
            # Another request took one of the keys between our lookup and insert: look again.
            if attempt == _KEY_RACE_RETRIES or not any(item.key for item in items):
                raise
    created = [item for item in items if item.existing is None and item.same_as is None]
    held = [item for item in created if item.wanted]
    try:
        _send(coordinator, [item for item in created if not item.wanted])
    except ServiceUnavailable as error:
        # The jobs held for their dependencies are accepted all the same: their release
        # sends them (a worker's, or recovery's `ready_waiting` pass).
        error.details += [
            {
                "path": f"body.jobs[{item.index}]",
                "job_id": item.row["job"].id,
                "message": "accepted: waits for its dependencies",
            }
            for item in held
        ]
        raise
    waiting = [item.row["job"].id for item in held]
    if waiting:
        # Their dependencies may all have ended already (or just now, racing the insert).
        release.settle(waiting, coordinator)
    return _answers(coordinator, items)


def _checked(
    coordinator: JobCoordinator, requests: list[Any], owner: str, any_owner: bool
) -> list[_Item]:
    """Every item checked as a single submit checks it; every problem of every item in one
    error (the class of the items' errors if they share one, else 422)."""
    bound = coordinator.settings.jobs.max_workflow_jobs
    items: list[_Item] = []
    failures: list[tuple[int, SkillqError]] = []
    for index, request in enumerate(requests):
        try:
            job_type, fields = coordinator.check_submission(
                request, owner=owner, any_owner=any_owner
            )
            wanted = dependencies.requested(fields.get("depends_on"), "body.depends_on", bound)
            dependencies.check_existing(wanted, owner)
            dependencies.check_references(fields["refs"], {edge.ref for edge in wanted})
        except SkillqError as error:
            failures.append((index, error))
            continue
        items.append(_Item(index, job_type, fields, wanted))
    if failures:
        raise _combined(failures)
    return items


def _in_item(index: int, error: SkillqError) -> list[dict[str, Any]]:
    """An item's error details, their paths under `body.jobs[<index>]`."""
    at = f"body.jobs[{index}]"
    details = []
    for detail in error.details if isinstance(error.details, list) else []:
        if not isinstance(detail, dict):
            continue
        path = str(detail.get("path", ""))
        path = f"{at}.{path.removeprefix('body.')}" if path and path != "body" else at
        details.append({**detail, "path": path, "code": error.code})
    return details or [{"path": at, "message": error.message, "code": error.code}]


def _combined(failures: list[tuple[int, SkillqError]]) -> SkillqError:
    """One error for all bad items: the items' own class when they share one (one bad item
    answers as its single submit would), else 422 `invalid_params`."""
    details = [detail for index, error in failures for detail in _in_item(index, error)]
    kinds = {type(error) for _, error in failures}
    cls = kinds.pop() if len(kinds) == 1 else InvalidParams
    bad = ", ".join(str(index) for index, _ in failures)
    first = failures[0][1].message
    message = f"{len(failures)} of the batch's jobs were refused (index {bad}); first: {first}"
    return cls(message, details)


def _match_keys(items: list[_Item], owner: str) -> None:
    """Items whose idempotency key names a job already (the same request: answer with it)
    or an earlier item of the batch (the same request again); a different request under a
    used key refuses the batch (409), as a single submit."""
    keys = [item.key for item in items if item.key is not None]
    found = jobs.find_by_idempotency_keys(owner, keys) if keys else {}
    first: dict[str, _Item] = {}
    failures: list[tuple[int, SkillqError]] = []
    for item in items:
        item.existing, item.same_as = None, None
        if item.key is None:
            continue
        try:
            if item.key in found:
                item.existing = same_request(found[item.key], item.job_type, item.fields)
            elif item.key in first:
                earlier = first[item.key]
                _same_as_earlier(item, earlier)
                item.same_as = earlier.index
            else:
                first[item.key] = item
        except SkillqError as error:
            failures.append((item.index, error))
    if failures:
        raise _combined(failures)


def _same_as_earlier(item: _Item, earlier: _Item) -> None:
    differs = [
        name
        for name, before, now in [
            ("type", earlier.job_type.name, item.job_type.name),
            ("params", earlier.fields["params"], item.fields["params"]),
            ("priority", earlier.fields["priority"], item.fields["priority"]),
        ]
        if not same_json(before, now)
    ]
    if differs:
        raise IdempotencyKeyReused(
            f"idempotency key {shown(item.key)} is also used by body.jobs[{earlier.index}] "
            f"with a different {' and '.join(differs)}",
            [
                {
                    "path": "body.idempotency_key",
                    "message": f"also used by body.jobs[{earlier.index}]; differs in "
                    + ", ".join(differs),
                }
            ],
        )


def _write(coordinator: JobCoordinator, items: list[_Item], owner: str) -> None:
    """The new jobs, their edges and webhook watches in one transaction, counted against
    the owner's quotas together."""
    settings = coordinator.settings
    new = [item for item in items if item.existing is None and item.same_as is None]
    if not new:
        return
    trace_id = _batch_trace_id()
    rows = []
    for item in new:
        row = coordinator.job_fields(item.job_type, item.fields, owner)
        row["trace_id"] = _trace_id_of(item.fields.get("trace_id"), trace_id)
        rows.append(
            {
                **row,
                "idempotency_key": item.key,
                "waiting": bool(item.wanted),
                "depends_on": dependencies.stored(
                    [(edge.ref, edge.on_failure, None) for edge in item.wanted]
                ),
                "scheduled_for": item.fields["scheduled_for"],
            }
        )
    adding = Counter(item.job_type.name for item in new)
    with quotas.within_quotas(settings.quotas, owner, dict(adding)), database_proxy.atomic():
        made = jobs.insert_jobs(rows)
        for item, job in zip(new, made, strict=True):
            item.row = {"job": job}
            edges.add_edges(job.id, [(edge.ref, edge.on_failure) for edge in item.wanted])
            webhook_events.watch_submission(
                settings.webhooks, job.id, item.fields.get("callback_url")
            )


def _batch_trace_id() -> str | None:
    """With tracing on, the batch's trace, for the items that name none of their own."""
    if not tracing.enabled():
        return None
    current = tracing.current_trace_id()
    return None if current is None else tracing.format_trace_id(current)


def _trace_id_of(asked: str | None, batch: str | None) -> str | None:
    """An item's `trace_id`: a client's W3C one continued (lower case, as a single submit
    has it), any other kept as given; without one, the batch's trace."""
    if asked is None:
        return batch
    w3c = tracing.w3c_trace_id(asked) if tracing.enabled() else None
    return asked if w3c is None else tracing.format_trace_id(w3c)


def _send(coordinator: JobCoordinator, items: list[_Item]) -> None:
    """Send the released jobs' messages together. With tracing on, one by one (each in its
    job's enqueue span, as a single submit's). Jobs whose message may be unsent are failed,
    and the 503 names every job: queued or not."""
    if not items:
        return
    created = [item.row["job"] for item in items]
    try:
        if tracing.enabled():
            _send_traced(coordinator, items)
        else:
            now = utcnow()
            sends = [
                (
                    coordinator._message(item.row["job"], item.job_type),
                    delays.delay_ms(item.row["job"], now),
                )
                for item in items
            ]
            enqueue_all(coordinator.broker, sends)
    except NotAllSent as failure:
        logger.error("Enqueue of a batch failed: %s", failure.error, exc_info=failure.error)
        unsent = set(failure.unsent)
        for index in sorted(unsent):
            jobs.mark_enqueue_failed(
                created[index].id, f"the broker refused the job: {failure.error}"
            )
        details = [
            {
                "path": f"body.jobs[{item.index}]",
                "job_id": job.id,
                "message": "not queued: the job failed (EnqueueError)"
                if position in unsent
                else "queued",
            }
            for position, (item, job) in enumerate(zip(items, created, strict=True))
        ]
        raise ServiceUnavailable(
            f"the broker is unavailable; {len(unsent)} of the batch's jobs were not queued "
            "(failed), the others were",
            details,
        ) from failure.error


def _send_traced(coordinator: JobCoordinator, items: list[_Item]) -> None:
    for position, item in enumerate(items):
        try:
            coordinator._send(item.row["job"], item.job_type)
        except Exception as error:
            raise NotAllSent(list(range(position, len(items))), error) from error


def _answers(coordinator: JobCoordinator, items: list[_Item]) -> list[Submission]:
    from skillq.jobs.coordinator import Submission

    answers: list[Submission] = []
    for item in items:
        if item.existing is not None:
            answers.append(Submission(item.existing, created=False))
        elif item.same_as is not None:
            answers.append(Submission(answers[item.same_as].job, created=False))
        elif item.wanted:
            answers.append(Submission(coordinator.get_job(item.row["job"].id), created=True))
        else:
            answers.append(Submission(item.row["job"], created=True))
    return answers
