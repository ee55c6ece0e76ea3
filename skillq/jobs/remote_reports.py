"""What remote workers report over HTTP, recorded in the store by the server's rules.

A report is accepted only from the worker holding the job's lease for that attempt: the job
is `running`, its `worker_id` is the reporting worker and `attempts` is the attempt it
reports on (another worker's job, or one whose lease expired, is a 409 Conflict). Outcomes
follow `brokers.job_status`: a result that cannot be stored or is too large fails the job; a
cancelled job is `cancelled`; a failure is retried, after the server's back-off
(`workers.retry_delay_secs`, doubling, at most 32 times it), while attempts are left and the
worker did not say it must not be (a time limit, an exception in the actor's `throws`);
otherwise the job fails. A retry is the job's message sent again to its queue, so a local or
a remote worker may run it.

A job's log lines come in batches while it runs and before its outcome report, from the same
lease holder, and are appended as a local worker's are (`skillq.storage.job_logs`, bounded by
`jobs.max_log_bytes`): a finished job's log is complete once a client sees it finished.

A limited job's slots (`skillq.brokers.limiter`, taken when it was fetched) are renewed by
the worker's heartbeats and freed by its outcome report, waking the jobs they let start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dramatiq
import peewee
from dramatiq.common import compute_backoff
from dramatiq.errors import ActorNotFound

from skillq.brokers.job_messages import AfterOutcome
from skillq.brokers.limiter import attempt_holder, limiter_of
from skillq.brokers.retries import JobRetries
from skillq.errors import Conflict, InvalidParams, NotFound, ServiceUnavailable
from skillq.jobs.coordinator import JobCoordinator
from skillq.json_values import storable_problems
from skillq.storage import Job, JobState, job_limits, job_logs, jobs, workers
from skillq.storage.job_limits import lease_until
from skillq.storage.job_logs import LogEntry
from skillq.storage.models import stored_size
from skillq.storage.worker_tokens import RemoteWorker

#: At most this many job ids in one heartbeat.
MAX_RUNNING_IDS = 1000
#: At most this many lines in one log report.
MAX_LOG_LINES = 1000


def held_job(worker: RemoteWorker, job_id: str, attempt: int) -> Job:
    """The job, if `worker` holds its lease for `attempt`; else NotFound or Conflict."""
    job = jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if (
        job.job_state is not JobState.RUNNING
        or job.worker_id != worker.id
        or job.attempts != attempt
    ):
        raise Conflict(
            f"worker {worker.id} does not hold the lease of attempt {attempt} of job {job_id}"
        )
    return job


def heartbeat(
    worker: RemoteWorker, running: list[str], broker: dramatiq.Broker | None = None
) -> dict[str, list[str]]:
    """Renew the leases of the jobs `worker` runs (and of their limit slots, with `broker`'s
    limiter); say which of them a client cancelled and which it no longer holds (its lease
    expired: the worker must stop them)."""
    workers.beat(worker.id, running)
    held = (
        {
            job.id: job
            for job in Job.select(Job.id, Job.attempts, Job.cancel_requested_at).where(
                Job.id.in_(running) & (Job.state == JobState.RUNNING) & (Job.worker_id == worker.id)
            )
        }
        if running
        else {}
    )
    limiter = None if broker is None else limiter_of(broker)
    if limiter is not None and held:
        holders = [attempt_holder(job.id, job.attempts) for job in held.values()]
        job_limits.renew(holders, lease_until(limiter.lease_secs))
    return {
        "cancel": sorted(i for i, job in held.items() if job.cancel_requested_at is not None),
        "lost": sorted(set(running) - set(held)),
    }


def progress(
    worker: RemoteWorker, job_id: str, attempt: int, value: float | None, message: str | None
) -> bool:
    """Record progress (it renews the lease too); True when a client asked to cancel."""
    job = held_job(worker, job_id, attempt)
    jobs.set_progress(job_id, value, message)
    return job.cancel_requested_at is not None


def log_entries(lines: list[dict[str, Any]]) -> list[LogEntry]:
    """A log report's lines (their shape checked by the route's schema) as store entries;
    an `at` that is no ISO 8601 time is InvalidParams. A time without an offset is UTC."""
    entries, details = [], []
    for n, line in enumerate(lines):
        try:
            at = datetime.fromisoformat(line["at"])
            if at.tzinfo is not None:
                at = at.astimezone(UTC).replace(tzinfo=None)
        except (ValueError, OverflowError):
            details.append({"path": f"body.lines.{n}.at", "message": "is not an ISO 8601 time"})
            continue
        entries.append(LogEntry(at, line["source"], line["level"], line["text"]))
    if details:
        raise InvalidParams("the request body breaks its schema", details)
    return entries


def append_logs(
    worker: RemoteWorker, job_id: str, attempt: int, entries: list[LogEntry], max_bytes: int
) -> None:
    """Append a batch of the attempt's log lines, the log bounded by `max_bytes`
    (`jobs.max_log_bytes`) as a local worker's is."""
    held_job(worker, job_id, attempt)
    for _ in range(3):
        try:
            job_logs.append(job_id, entries, max_bytes=max_bytes)
            return
        except peewee.IntegrityError:
            # A report of the same job (a retried request) took these numbers: look again.
            continue
    raise ServiceUnavailable(f"the log of job {job_id} is busy; send the lines again")


def complete(
    worker: RemoteWorker,
    job_id: str,
    attempt: int,
    result: object,
    run_seconds: float | None,
    max_result_bytes: int,
    broker: dramatiq.Broker | None = None,
) -> str:
    """Record the attempt's result, then free its limit slots (with `broker`'s limiter);
    returns the job's new state."""
    job = held_job(worker, job_id, attempt)
    problems = storable_problems(result, "result")
    size = stored_size(result) if not problems else 0
    if problems or size > max_result_bytes:
        if problems:
            where = "; ".join(f"{p['path']}: {p['message']}" for p in problems)
            error = ("ResultNotSerializable", f"the job's result cannot be stored as JSON: {where}")
        else:
            error = (
                "ResultTooLarge",
                f"the job's result is {size} bytes of JSON; at most {max_result_bytes} are"
                " kept (jobs.max_result_bytes)",
            )
        done = jobs.mark_failed(
            job_id,
            attempt=attempt,
            error_type=error[0],
            error_message=error[1],
            run_seconds=run_seconds,
        )
        state = _state_or_conflict(done, JobState.FAILED, worker, job_id)
    else:
        done = jobs.mark_completed(job_id, attempt=attempt, result=result, run_seconds=run_seconds)
        state = _state_or_conflict(done, JobState.COMPLETED, worker, job_id)
    free_slots(broker, job, attempt)
    if broker is not None:
        after_outcome(broker, job_id)
    return state


def fail(
    coordinator: JobCoordinator,
    worker: RemoteWorker,
    job_id: str,
    attempt: int,
    error: tuple[str, str],
    *,
    retryable: bool,
    run_seconds: float | None,
) -> str:
    """Record a failed (or cancelled) attempt and free its limit slots; retry it by the
    server's rules. Returns the job's new state."""
    job = held_job(worker, job_id, attempt)
    error_type, error_message = error
    broker = coordinator.broker
    if job.cancel_requested_at is not None:
        done = jobs.mark_cancelled(job_id, attempt=attempt, run_seconds=run_seconds)
        state = _state_or_conflict(done, JobState.CANCELLED, worker, job_id)
        free_slots(broker, job, attempt)
    elif retryable and attempt < job.max_retries + 1:
        done = jobs.mark_retrying(
            job_id,
            attempt=attempt,
            error_type=error_type,
            error_message=error_message,
            run_seconds=run_seconds,
        )
        state = _state_or_conflict(done, JobState.PENDING, worker, job_id)
        free_slots(broker, job, attempt)  # before the retry may want them
        pending = jobs.get_job(job_id)
        if pending is not None:
            # Should the broker refuse, the job stays pending and lost-job recovery sends it.
            coordinator.resend(pending, delay_ms=retry_delay_ms(broker, job, attempt))
    else:
        done = jobs.mark_failed(
            job_id,
            attempt=attempt,
            error_type=error_type,
            error_message=error_message,
            run_seconds=run_seconds,
        )
        state = _state_or_conflict(done, JobState.FAILED, worker, job_id)
        free_slots(broker, job, attempt)
    after_outcome(broker, job_id)
    return state


def after_outcome(broker: dramatiq.Broker, job_id: str) -> None:
    """Run, in the API process, what a local worker runs once `JobStatus` has recorded a
    message's outcome (the broker's `AfterOutcome` middleware: dependants released, webhook
    events), so a remote worker's jobs settle their dependants and notify at once rather
    than at the next recovery sweep."""
    for middleware in broker.middleware:
        if isinstance(middleware, AfterOutcome):
            middleware.after_outcome(broker, job_id)


def free_slots(broker: dramatiq.Broker | None, job: Job, attempt: int) -> None:
    """A remote attempt ended: give back the slots it took when it was fetched, and wake
    the postponed jobs they let start."""
    limiter = None if broker is None else limiter_of(broker)
    if limiter is not None and limiter.applies(broker, job.type):
        limiter.give_back(broker, attempt_holder(job.id, attempt), job.type, job.owner)


def retry_delay_ms(broker: dramatiq.Broker, job: Job, attempt: int) -> int:
    """The back-off dramatiq's `Retries` would wait before this retry: the actor's
    `min_backoff`/`max_backoff`, else the server's (`workers.retry_delay_secs`)."""
    retries = next((m for m in broker.middleware if isinstance(m, JobRetries)), None)
    min_backoff = retries.min_backoff if retries is not None else 0
    max_backoff = retries.max_backoff if retries is not None else 0
    try:
        options = broker.get_actor(job.type).options
    except ActorNotFound:
        options = {}
    min_backoff = options.get("min_backoff", min_backoff)
    max_backoff = options.get("max_backoff", max_backoff)
    if not min_backoff:
        return 0
    _, delay = compute_backoff(attempt, factor=min_backoff, max_backoff=max_backoff)
    return int(delay)


def _state_or_conflict(done: bool, state: JobState, worker: RemoteWorker, job_id: str) -> str:
    if not done:
        raise Conflict(f"worker {worker.id} lost the lease of job {job_id} while reporting")
    return state.value
