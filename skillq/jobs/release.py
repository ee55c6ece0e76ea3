"""Settling held jobs: once every dependency of a waiting job has ended, release, cancel or
fail it, from what the store says (never from memory).

Called by whoever may have ended a job's last dependency: the worker once it recorded an
outcome (`DependencyRelease`, a middleware), the coordinator after a submission or a
cancel, and each stale-job recovery pass for whatever a crash left unsettled (a worker
killed between recording a dependency's outcome and settling its dependants). Each step is
one conditional UPDATE, so concurrent settlers of the same job do it once; a released job
whose message is then lost (a crash right after the release) is re-sent by recovery like
any pending job whose message went missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import dramatiq

from skillq.brokers.job_messages import AfterOutcome
from skillq.brokers.job_status import recorded_finish
from skillq.errors import InvalidParams, SkillqError
from skillq.jobs import result_refs
from skillq.jobs.schema_messages import schema_errors
from skillq.jobs.sizes import check_params_size
from skillq.json_values import shown
from skillq.storage import Job, JobState, jobs
from skillq.storage import dependencies as edges
from skillq.storage.database import connection

if TYPE_CHECKING:
    from skillq.jobs.coordinator import JobCoordinator
    from skillq.settings import Settings

logger = logging.getLogger(__name__)

_UNFINISHED = (JobState.PENDING.value, JobState.RUNNING.value)


def settle(job_ids: Iterable[str], coordinator: JobCoordinator) -> int:
    """Settle these held jobs if their dependencies all ended; a job cancelled or failed
    this way settles its own dependants in turn. Returns how many were settled."""
    todo = list(job_ids)
    settled = 0
    while todo:
        job_id = todo.pop()
        outcome = _settle_one(job_id, coordinator)
        if outcome is None:
            continue
        settled += 1
        if outcome is not JobState.PENDING:
            todo.extend(edges.held_dependants(job_id))
    return settled


def release_dependants(job_id: str, coordinator: JobCoordinator) -> int:
    """After `job_id` may have ended: settle the jobs waiting for it."""
    return settle(edges.held_dependants(job_id), coordinator)


def _settle_one(job_id: str, coordinator: JobCoordinator) -> JobState | None:
    job = jobs.get_job(job_id)
    if job is None or job.job_state is not JobState.PENDING or not job.waiting:
        return None
    found = edges.edges_of(job_id)
    if any(edge.state in _UNFINISHED for edge in found):
        return None
    labels = {item["job"]: item.get("name") or item["job"] for item in job.depends_on or []}
    for edge in found:
        if edge.state == JobState.COMPLETED or edge.on_failure == "run":
            continue
        return _cancel(job_id, edge, labels.get(edge.dependency_id, edge.dependency_id))
    try:
        params = _resolved(job, coordinator)
    except Exception as error:
        # Whatever keeps it from being released fails it, rather than leaving it waiting for
        # recovery passes that would fail the same way forever.
        settled = edges.settle_unreleased(job_id, JobState.FAILED, *_described(job_id, error))
        return JobState.FAILED if settled else None
    if not edges.claim_release(job_id, params):
        return None
    released = jobs.get_job(job_id)
    if released is not None:
        try:
            coordinator.resend(released)
        except Exception:
            logger.warning("Could not send released job %s; recovery re-sends it.", job_id)
    return JobState.PENDING


def _described(job_id: str, error: Exception) -> tuple[str, str]:
    """The error type and message a job that could not be released fails with."""
    if not isinstance(error, SkillqError | LookupError):
        logger.exception("Could not release job %s.", job_id)
        return type(error).__name__, str(error) or type(error).__name__
    message = error.message if isinstance(error, SkillqError) else str(error)
    details = getattr(error, "details", None) or []
    where = "; ".join(
        f"{d['path']}: {d.get('message')}" for d in details if isinstance(d, dict) and "path" in d
    )
    return "InvalidParams", f"{message} ({where})" if where else message


def _cancel(job_id: str, edge: edges.Edge, label: str) -> JobState | None:
    shown_label = label if label == edge.dependency_id else f"{label} ({edge.dependency_id})"
    if edge.state == JobState.CANCELLED:
        error_type, what = "DependencyCancelled", "was cancelled"
    elif edge.state == JobState.FAILED:
        error_type, what = "DependencyFailed", f"failed: {edge.error_type}: {edge.error_message}"
    else:
        error_type, what = "DependencyFailed", "no longer exists"
    message = f"dependency {shown_label} {what}"
    if edges.settle_unreleased(job_id, JobState.CANCELLED, error_type, message):
        return JobState.CANCELLED
    return None


def _resolved(job: Job, coordinator: JobCoordinator) -> dict[str, Any]:
    """The job's params with its `$result` references filled in, checked as a submission's
    params are; raises the error that fails the job."""
    job_type = coordinator.job_types.get(job.type)
    if job_type is None:
        raise SkillqError(f"job type {shown(job.type)} no longer exists")
    refs = result_refs.references(job.params)
    if not refs:
        return job.params
    by_name: dict[str, str] = {}
    for item in job.depends_on or []:
        by_name[item["job"]] = item["job"]
        if item.get("name"):
            by_name[item["name"]] = item["job"]
    results = edges.results_of(by_name.values())
    params = result_refs.resolve(job.params, lambda name: results.get(by_name.get(name, "")))
    details = schema_errors(job_type.validator, params, "params")
    if details:
        raise InvalidParams(
            f"params with their $result values do not match the schema of {shown(job.type)}",
            details,
        )
    check_params_size(params, coordinator.settings.jobs.max_params_bytes)
    if job_type.params_check is not None:
        job_type.params_check(params)
    return params


class DependencyRelease(AfterOutcome):
    """Settles the jobs waiting for a job once a worker has recorded its outcome (of a
    processed or a skipped message). No query for a job the worker just finished when its
    finish statement saw nothing name it in `depends_on` (`JobStatus`'s `recorded_finish`);
    one indexed query otherwise.

    Parameters:
      settings(Settings): The process's settings (for the coordinator that sends released
        jobs' messages and checks their params).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._coordinator: JobCoordinator | None = None

    def _coordinator_of(self, broker: dramatiq.Broker) -> JobCoordinator:
        # Built on first use: the job types are all declared by then.
        if self._coordinator is None:
            from skillq.jobs.coordinator import JobCoordinator

            self._coordinator = JobCoordinator(broker, self.settings)
        return self._coordinator

    def after_outcome(self, broker: dramatiq.Broker, job_id: str) -> None:
        finished = recorded_finish(job_id)
        if finished is not None and not finished.has_dependants:
            return  # nothing names it in depends_on (read with its outcome): nothing to look up
        try:
            with connection():
                waiting = edges.held_dependants(job_id)
                if waiting:
                    settle(waiting, self._coordinator_of(broker))
        except Exception:
            # Recovery settles them on its next pass.
            logger.warning("Could not settle the dependants of job %s.", job_id, exc_info=True)
