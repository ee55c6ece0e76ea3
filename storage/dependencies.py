"""Job dependencies in the store: the edges, and the held jobs they keep off the broker.

A job submitted with `depends_on` is written `pending` with `waiting` set and one edge per
dependency; nothing is sent to the broker for it. Whoever sees its last dependency end
(the worker that recorded that outcome, the coordinator, a recovery pass) settles it with
one conditional UPDATE: released (its message is then sent), cancelled or failed. Only the
writer whose UPDATE lands acts, so concurrent settlers do each thing once, and nothing
depends on memory: a crash between "dependency ended" and "dependant settled" is closed by
the next recovery pass (`ready_waiting`), one between "released" and "sent" by the re-send
of lost pending jobs (its `enqueued_at` is the release).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import peewee

from skillq.json_values import storable_text
from skillq.storage import job_metrics
from skillq.storage.database import database_proxy
from skillq.storage.models import BaseModel, Job, JobState, in_open_state, utcnow

#: What happens to a dependant when this dependency fails or is cancelled.
ON_FAILURE = ("cancel", "run")
_UNFINISHED = (JobState.PENDING.value, JobState.RUNNING.value)


class JobDependency(BaseModel):
    """One edge: `job` waits for `dependency_id` (no foreign key on it: a dependency purged
    past its TTL reads as gone, which settles its dependants like a failure)."""

    job = peewee.ForeignKeyField(Job, column_name="job_id", on_delete="CASCADE")
    dependency_id = peewee.CharField(max_length=36, index=True)
    on_failure = peewee.CharField(max_length=16)

    class Meta:
        table_name = "skillq_job_dependency"
        primary_key = peewee.CompositeKey("job", "dependency_id")


@dataclass(frozen=True)
class Edge:
    """A dependency of a held job, as it is now; `state` None when it no longer exists."""

    dependency_id: str
    on_failure: str
    state: str | None
    error_type: str | None
    error_message: str | None


def add_edges(job_id: str, edges: Iterable[tuple[str, str]]) -> None:
    """Record `(dependency_id, on_failure)` edges of a new job (in its insert's transaction)."""
    rows = [
        {"job": job_id, "dependency_id": dependency, "on_failure": policy}
        for dependency, policy in edges
    ]
    if rows:
        JobDependency.insert_many(rows).execute()


def edges_of(job_id: str) -> list[Edge]:
    dependency = Job.alias()
    query = (
        JobDependency.select(
            JobDependency.dependency_id,
            JobDependency.on_failure,
            dependency.state,
            dependency.error_type,
            dependency.error_message,
        )
        .join(dependency, peewee.JOIN.LEFT_OUTER, on=dependency.id == JobDependency.dependency_id)
        .where(JobDependency.job == job_id)
        .order_by(JobDependency.dependency_id)
    )
    return [Edge(*row) for row in query.tuples()]


def held_dependants(job_id: str) -> list[str]:
    """Held jobs waiting for `job_id` (one indexed lookup; most jobs have none)."""
    query = (
        JobDependency.select(JobDependency.job)
        .join(Job, on=Job.id == JobDependency.job)
        .where(
            (JobDependency.dependency_id == job_id)
            & (Job.state == JobState.PENDING)
            & (Job.waiting == True)  # noqa: E712 (SQL, not Python)
        )
    )
    return [row[0] for row in query.tuples()]


def _unfinished_dependency(held: Any) -> peewee.Query:
    dependency = Job.alias()
    return (
        JobDependency.select(peewee.SQL("1"))
        .join(dependency, on=dependency.id == JobDependency.dependency_id)
        .where((JobDependency.job == held.id) & dependency.state.in_(_UNFINISHED))
    )


def ready_waiting(limit: int = 1000) -> list[str]:
    """Held jobs none of whose dependencies is still pending or running: they should have
    been settled (their last dependency's worker died first, say); recovery settles them."""
    query = (
        Job.select(Job.id)
        .where(
            in_open_state(JobState.PENDING)
            & (Job.waiting == True)  # noqa: E712
            & ~peewee.fn.EXISTS(_unfinished_dependency(Job))
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [row[0] for row in query.tuples()]


def waiting_for(job_ids: Iterable[str]) -> dict[str, list[str]]:
    """For each of these (held) jobs, the dependencies that have not completed yet."""
    ids = list(job_ids)
    if not ids:
        return {}
    dependency = Job.alias()
    query = (
        JobDependency.select(JobDependency.job, JobDependency.dependency_id)
        .join(dependency, peewee.JOIN.LEFT_OUTER, on=dependency.id == JobDependency.dependency_id)
        .where(
            JobDependency.job.in_(ids)
            & (dependency.state.is_null() | (dependency.state != JobState.COMPLETED))
        )
        .order_by(JobDependency.dependency_id)
    )
    found: dict[str, list[str]] = {job_id: [] for job_id in ids}
    for job_id, dependency_id in query.tuples():
        found[job_id].append(dependency_id)
    return found


def results_of(job_ids: Iterable[str]) -> dict[str, Any]:
    """The results of these jobs (completed ones; None for the others)."""
    ids = list(job_ids)
    if not ids:
        return {}
    return {job.id: job.result for job in Job.select(Job.id, Job.result).where(Job.id.in_(ids))}


def _held(job_id: str) -> Any:
    return (Job.id == job_id) & (Job.state == JobState.PENDING) & (Job.waiting == True)  # noqa: E712


def claim_release(job_id: str, params: dict[str, Any]) -> bool:
    """Release a held job with its resolved params; only one settler's claim lands. Its
    `enqueued_at` is now, so a message lost after this is re-sent by recovery."""
    query = Job.update(params=params, waiting=False, enqueued_at=utcnow()).where(_held(job_id))
    return query.execute() == 1


def settle_unreleased(job_id: str, state: JobState, error_type: str, error_message: str) -> bool:
    """End a held job without running it (`cancelled` or `failed`), counted in the job
    metrics as the transition of its type, in one transaction."""
    with database_proxy.atomic():
        query = Job.update(
            state=state,
            waiting=False,
            error_type=storable_text(error_type),
            error_message=storable_text(error_message),
            completed_at=utcnow(),
        ).where(_held(job_id))
        changed = list(query.returning(Job.type).tuples().execute())
        if len(changed) != 1:
            return False
        job_metrics.record(changed[0][0], state.value)
    return True


def hold_again(job_id: str) -> bool:
    """A retried dependant waits for its dependencies again (they may have ended otherwise)."""
    query = Job.update(waiting=True).where(
        (Job.id == job_id) & (Job.state == JobState.PENDING) & Job.depends_on.is_null(False)
    )
    return query.execute() == 1
