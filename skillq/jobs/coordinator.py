"""The jobs coordinator: the one way in for the API, the CLI and MCP.

It validates a submission against the job type's schema, writes the job to the store and
only then enqueues its message, so a worker can never run a job the store has not heard of.
If the enqueue fails, the job is failed at once rather than left pending forever.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dramatiq
import peewee
from opentelemetry.trace import SpanKind

from skillq import tracing
from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.errors import (
    Conflict,
    InvalidParams,
    NotFound,
    ServiceUnavailable,
)
from skillq.jobs import delays, dependencies, quotas, release
from skillq.jobs.submissions import (
    check_acts_for_itself,
    same_request,
    validate_submission,
)
from skillq.jobs.types import JobType, job_types_of
from skillq.json_values import shown
from skillq.settings import Settings
from skillq.storage import Job, JobState, job_logs, jobs
from skillq.storage import dependencies as edges
from skillq.storage.database import database_proxy, in_connection
from skillq.storage.models import utcnow
from skillq.webhooks import events as webhook_events

logger = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_PAGE_SIZE = 100
#: Largest `offset`: any larger would overflow the databases' integers.
MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class Submission:
    job: Job
    #: False when an idempotency key matched an existing job of the same owner.
    created: bool


class JobCoordinator:
    def __init__(self, broker: dramatiq.Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.job_types: dict[str, JobType] = job_types_of(broker)

    @in_connection
    def submit_job(
        self, request: Any, *, owner: str = "local", any_owner: bool = False
    ) -> Submission:
        """Writes and enqueues a job owned by `owner`. `any_owner` says the submitter may act
        on every owner's data (an admin, the operator's CLI or schedules); anyone else may
        name only themselves in a job type's `owner_param`.

        With tracing on, the job's `trace_id` is its trace's: the caller's (a `traceparent`
        header), or the one a client's W3C `trace_id` names, or a new one."""
        if not tracing.enabled():
            return self._submit(request, owner, any_owner)
        asked = request.get("trace_id") if isinstance(request, dict) else None
        with tracing.span("skillq.submit", join=asked) as span:
            submission = self._submit(request, owner, any_owner)
            span.set_attribute("skillq.job_id", submission.job.id)
            span.set_attribute("skillq.job_type", submission.job.type)
            span.set_attribute("skillq.created", submission.created)
            return submission

    @in_connection
    def submit_jobs(
        self, requests: list[Any], *, owner: str = "local", any_owner: bool = False
    ) -> list[Submission]:
        """Many submissions at once, in order, all or none (`skillq.jobs.batch_submit`):
        each item obeys every rule of `submit_job`."""
        from skillq.jobs import batch_submit

        if not tracing.enabled():
            return batch_submit.submit_jobs(self, requests, owner, any_owner)
        with tracing.span("skillq.submit_batch") as span:
            submissions = batch_submit.submit_jobs(self, requests, owner, any_owner)
            span.set_attribute("skillq.jobs", len(submissions))
            return submissions

    def check_submission(
        self, request: Any, *, owner: str, any_owner: bool
    ) -> tuple[JobType, dict[str, Any]]:
        """A submission checked as `submit_job` checks it, nothing written (workflows check
        each of their jobs so before writing any)."""
        job_type, fields = validate_submission(
            request, self.job_types, self.settings.jobs, self.settings.webhooks
        )
        if not any_owner:
            check_acts_for_itself(job_type, fields["params"], owner)
        return job_type, fields

    def _submit(self, request: Any, owner: str, any_owner: bool) -> Submission:
        job_type, fields = self.check_submission(request, owner=owner, any_owner=any_owner)
        key = fields.get("idempotency_key")
        if key is not None:
            existing = jobs.find_by_idempotency_key(owner, key)
            if existing is not None:
                return Submission(same_request(existing, job_type, fields), created=False)
        wanted = dependencies.requested(
            fields.get("depends_on"), "body.depends_on", self.settings.jobs.max_workflow_jobs
        )
        dependencies.check_existing(wanted, owner)
        dependencies.check_references(fields["refs"], {edge.ref for edge in wanted})
        callback_url = fields.get("callback_url")
        # The job, its dependency edges and its webhook watch in one transaction: none is
        # half-written; with a quota, counted and inserted under the owner's lock. A job alone
        # is one INSERT, a transaction of its own (on PostgreSQL, one round trip, not three).
        alone = not wanted and not webhook_events.watches_submission(
            self.settings.webhooks, callback_url
        )
        try:
            with (
                quotas.within_quota(self.settings.quotas, owner, job_type.name),
                contextlib.nullcontext() if alone else database_proxy.atomic(),
            ):
                job = jobs.insert_job(
                    **self.job_fields(job_type, fields, owner),
                    idempotency_key=key,
                    waiting=bool(wanted),
                    depends_on=dependencies.stored([(e.ref, e.on_failure, None) for e in wanted]),
                    scheduled_for=fields["scheduled_for"],
                )
                edges.add_edges(job.id, [(edge.ref, edge.on_failure) for edge in wanted])
                webhook_events.watch_submission(self.settings.webhooks, job.id, callback_url)
        except peewee.IntegrityError:
            # Another request with the same key won the race: answer with its job.
            existing = jobs.find_by_idempotency_key(owner, key) if key else None
            if existing is None:
                raise
            return Submission(same_request(existing, job_type, fields), created=False)
        if wanted:
            # Its dependencies may all have ended already (or just now, racing this insert).
            release.settle([job.id], self)
            return Submission(self.get_job(job.id), created=True)
        self._enqueue(job, job_type)
        return Submission(job, created=True)

    def job_fields(self, job_type: JobType, fields: dict[str, Any], owner: str) -> dict[str, Any]:
        """The columns of a new job of a checked submission (`validate_submission`)."""
        max_retries = (
            job_type.max_retries
            if job_type.max_retries is not None
            else self.settings.workers.max_retries
        )
        return {
            "id": str(uuid.uuid4()),
            "type": job_type.name,
            "queue": job_type.queue,
            "params": fields["params"],
            "priority": fields["priority"],
            "max_retries": max_retries,
            "expires_at": utcnow() + timedelta(hours=fields["ttl_hours"]),
            "owner": owner,
            "trace_id": _trace_id_of(fields.get("trace_id")),
        }

    @in_connection
    def get_job(self, job_id: str, *, owner: str | None = None) -> Job:
        """`owner=None` sees every job; anyone else gets NotFound for jobs not theirs."""
        # Only a canonical UUID can be a job id; anything else (even NUL) is simply unknown.
        job = jobs.get_job(job_id) if _JOB_ID.fullmatch(job_id) else None
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no job with id {shown(job_id)}")
        if job.waiting:
            job.waiting_for = edges.waiting_for([job.id])[job.id]
        return job

    @in_connection
    def read_logs(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        since: int = 0,
        limit: int = job_logs.MAX_READ_LINES,
    ) -> tuple[Job, job_logs.LogPage]:
        """The job (owner rules as `get_job`) and its kept log lines after `since`. The job is
        read first: when it is already finished, its log is complete in the page."""
        job = self.get_job(job_id, owner=owner)
        return job, job_logs.read(job.id, since=since, limit=limit)

    @in_connection
    def list_jobs(
        self,
        *,
        states: list[str] | None = None,
        types: list[str] | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> jobs.JobPage:
        details = []
        for job_type in types or []:
            if "\x00" in job_type or len(job_type) > 100:
                details.append({"path": "type", "message": "not a job type name"})
        for state in states or []:
            if state not in JobState.__members__.values():
                allowed = ", ".join(s.value for s in JobState)
                message = f"{shown(state)} is not one of {allowed}"
                details.append({"path": "state", "message": message})
        if not 1 <= limit <= MAX_PAGE_SIZE:
            details.append({"path": "limit", "message": f"must be 1-{MAX_PAGE_SIZE}"})
        max_offset = min(MAX_OFFSET, self.settings.jobs.max_list_offset)
        if not 0 <= offset <= max_offset:
            details.append({"path": "offset", "message": f"must be 0-{max_offset}"})
        if details:
            raise InvalidParams("invalid list filters", details)
        page = jobs.list_jobs(
            states=states or (), types=types or (), owner=owner, limit=limit, offset=offset
        )
        waiting = edges.waiting_for(job.id for job in page.jobs if job.waiting)
        for job in page.jobs:
            job.waiting_for = waiting.get(job.id, [])
        return page

    @in_connection
    def get_progress(self, job_id: str, *, owner: str | None = None) -> Job:
        """A job's state, attempt, progress and message only (what a watcher polls)."""
        job = jobs.get_progress(job_id) if _JOB_ID.fullmatch(job_id) else None
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no job with id {job_id!r}")
        return job

    @in_connection
    def cancel_job(self, job_id: str, *, owner: str | None = None) -> Job:
        """A pending job is cancelled at once; a running one is marked cancel-requested and
        the worker side ends it. Either way the returned job says which happened."""
        job = self.get_job(job_id, owner=owner)
        if jobs.cancel_pending(job.id):
            self._notify(job.id)
            release.release_dependants(job.id, self)
        elif not jobs.request_cancel(job.id):
            # Neither pending nor running: it ended (or ended just now, racing us).
            job = self.get_job(job_id)
            raise Conflict(
                f"job {job_id} is {job.state}; only a pending or running job can be cancelled"
            )
        return self.get_job(job_id)

    def _notify(self, job_id: str) -> None:
        """The webhook events of an outcome reached here (a pending job cancelled); never
        fails the request: the webhook sweep records what this could not."""
        if not webhook_events.configured(self.settings.webhooks):
            return
        try:
            webhook_events.notify_outcome(self.broker, self.settings, job_id)
        except Exception:
            logger.exception("Recording the webhook events of job %s failed.", job_id)

    @in_connection
    def retry_job(self, job_id: str, *, owner: str | None = None) -> Job:
        job = self.get_job(job_id, owner=owner)
        job_type = self.job_types.get(job.type)
        if job_type is None:
            raise Conflict(f"job type {shown(job.type)} no longer exists")
        ttl = job.expires_at - job.created_at
        with database_proxy.atomic():
            if not jobs.reset_for_retry(job.id, expires_at=utcnow() + ttl):
                raise Conflict(f"job {job_id} is {job.state}; only failed or cancelled jobs retry")
            # A dependant waits for its dependencies again (and runs if they completed).
            held = edges.hold_again(job.id)
        if held:
            release.settle([job.id], self)
            return self.get_job(job_id)
        job = self.get_job(job_id)
        self._enqueue(job, job_type)
        return job

    @in_connection
    def position_in_queue(self, job: Job) -> int | None:
        """Runnable pending jobs of its queue ahead of it; None unless it is pending, not
        waiting for dependencies, and its time has come (a delayed job is in no queue yet:
        its `scheduled_for` says when)."""
        if job.state != JobState.PENDING or job.waiting:
            return None
        now = utcnow()
        if job.scheduled_for is not None and job.scheduled_for > now:
            return None
        return jobs.position_in_queue(job, now=now)

    def resend(self, job: Job, *, delay_ms: int | None = None) -> None:
        """Send a pending job's message again: for stale-job recovery when the first was lost
        (or its remote worker's lease expired), and for a remote worker's retry, after
        `delay_ms` of back-off.

        Raises the broker's error and leaves the job pending, for the next recovery pass."""
        job_type = self.job_types.get(job.type)
        if job_type is None:
            jobs.mark_enqueue_failed(job.id, f"job type {job.type!r} no longer exists")
            return
        self._send(job, job_type, delay_ms=delay_ms or None)

    def _message(self, job: Job, job_type: JobType) -> dramatiq.Message:
        # No time limit: the worker that runs the job applies its job type's, else its own
        # `workers.job_timeout_secs`, so a job queued under other settings follows the worker's.
        actor = self.broker.get_actor(job_type.name)
        # The trace context rides along, so the worker's attempts join the job's trace.
        trace_context = tracing.inject() if tracing.enabled() else {}
        return actor.message_with_options(
            kwargs=job.params,
            **{JOB_ID_OPTION: job.id},
            **trace_context,
            max_retries=job.max_retries,
            broker_priority=job.priority,
        )

    def _send(self, job: Job, job_type: JobType, *, delay_ms: int | None = None) -> None:
        """Enqueue the job's message, held by the broker until its `scheduled_for` (or for
        `delay_ms` of back-off); with tracing on, in an enqueue span of the job's trace (also
        when a retry or a recovery pass, in a trace of its own, sends it)."""
        delay = delay_ms or delays.delay_ms(job, utcnow())
        if not tracing.enabled():
            self.broker.enqueue(self._message(job, job_type), delay=delay)
            return
        attributes = {
            "skillq.job_id": job.id,
            "skillq.job_type": job.type,
            "messaging.destination.name": job_type.queue,
        }
        with tracing.span(
            "skillq.enqueue", join=job.trace_id, kind=SpanKind.PRODUCER, attributes=attributes
        ):
            self.broker.enqueue(self._message(job, job_type), delay=delay)

    def _enqueue(self, job: Job, job_type: JobType) -> None:
        try:
            self._send(job, job_type)
        except Exception as error:
            logger.exception("Enqueue of job %s failed.", job.id)
            jobs.mark_enqueue_failed(job.id, f"the broker refused the job: {error}")
            raise ServiceUnavailable("the broker is unavailable; the job was not queued") from error


def _trace_id_of(asked: str | None) -> str | None:
    """The job's `trace_id`: the current trace's when tracing is on, except that a client's
    value that is no W3C trace id is kept as given (as it always is with tracing off)."""
    current = tracing.current_trace_id() if tracing.enabled() else None
    if current is None or (asked is not None and tracing.w3c_trace_id(asked) is None):
        return asked
    return tracing.format_trace_id(current)
