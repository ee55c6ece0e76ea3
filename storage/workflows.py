"""Workflows in the store: a named set of jobs created together, and their states.

The jobs carry the workflow's id (`Job.workflow_id`); the row keeps who owns it and which
job each node name became, so its status is one grouped query over its jobs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import peewee

from skillq.storage.models import OPEN_STATES, BaseModel, Job, JSONField, in_open_state, utcnow


class Workflow(BaseModel):
    id = peewee.CharField(max_length=36, primary_key=True)
    owner = peewee.CharField(max_length=200, index=True)
    #: `{node name: job id}`, as created.
    jobs = JSONField()
    created_at = peewee.DateTimeField()
    #: Past this, once its jobs are purged, the workflow goes too.
    expires_at = peewee.DateTimeField(index=True)

    class Meta:
        table_name = "skillq_workflow"


def insert_workflow(
    workflow_id: str, *, owner: str, jobs: dict[str, str], expires_at: datetime
) -> Workflow:
    workflow = Workflow(
        id=workflow_id, owner=owner, jobs=jobs, created_at=utcnow(), expires_at=expires_at
    )
    workflow.save(force_insert=True)
    return workflow


def get_workflow(workflow_id: str) -> Workflow | None:
    return Workflow.get_or_none(Workflow.id == workflow_id)


def job_states(workflow_id: str) -> dict[str, Any]:
    """`{job id: job}` of the workflow's jobs that still exist, without their documents."""
    columns = (Job.id, Job.state, Job.waiting, Job.error_type, Job.error_message)
    return {job.id: job for job in Job.select(*columns).where(Job.workflow_id == workflow_id)}


def unfinished_jobs(workflow_id: str) -> list[str]:
    query = Job.select(Job.id).where((Job.workflow_id == workflow_id) & in_open_state(*OPEN_STATES))
    return [row[0] for row in query.order_by(Job.created_at).tuples()]


def purge_expired(now: datetime | None = None) -> int:
    """Delete workflows past their TTL none of whose jobs is left (run after the jobs'
    purge; a workflow with an unfinished job keeps its jobs, so it stays)."""
    remaining = Job.select(peewee.SQL("1")).where(Job.workflow_id == Workflow.id)
    query = Workflow.delete().where(
        (Workflow.expires_at < (now or utcnow())) & ~peewee.fn.EXISTS(remaining)
    )
    return query.execute()
