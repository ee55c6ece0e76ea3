"""Moves each job through its states in the store as its message is processed.

Placed before `Retries` in the middleware list: dramatiq runs `after_*` hooks in reverse
order, so by the time this middleware records an outcome, `Retries` has already decided
whether the failure will be retried (`message.failed` is set when it will not).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import dramatiq
import structlog
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import (
    CurrentMessage,
    Middleware,
    SkipMessage,
    TimeLimit,
    TimeLimitExceeded,
)

from skillq.brokers.job_starts import RUN_ONCE_OPTION, begin, next_attempt
from skillq.brokers.running import RunningJobs, current_job
from skillq.json_values import storable_problems
from skillq.storage import job_metrics, job_writes, jobs
from skillq.storage.database import database_proxy
from skillq.storage.models import stored_size

logger = logging.getLogger(__name__)

#: Message option carrying the job id; messages without it (maintenance actors) are ignored.
JOB_ID_OPTION = "job_id"
#: Message option holding the attempt being processed. It is fixed when processing starts,
#: because dramatiq's Retries bumps `retries` on the same message before `after_*` hooks
#: further down the stack run.
ATTEMPT_OPTION = "job_attempt"
#: Message option set when the job was cancelled while this message ran (brokers.cancellation).
CANCELLED_OPTION = "job_cancelled"
#: Message option holding the job's last allowed attempt (max_retries + 1).
LAST_ATTEMPT_OPTION = "job_last_attempt"
#: What every log line written while a job runs carries (see `skillq.log_output`).
_JOB_LOG_FIELDS = ("job_id", "trace_id", "worker_id")

#: Per worker thread: the job whose outcome `JobStatus` recorded last, and how it ended.
_recorded = threading.local()


def recorded_finish(job_id: str) -> job_writes.Finished | None:
    """What `JobStatus` wrote when it ended `job_id`'s attempt in this thread just now, for
    the `AfterOutcome` middleware that run next; None if it ended none (a retry, a skipped
    message) or the caller is another thread (the API, for a remote worker's report)."""
    last = getattr(_recorded, "finish", None)
    return last[1] if last is not None and last[0] == job_id else None


def current_job_owner() -> str:
    """The owner of the job the calling actor body runs for: whose data it acts on.

    Read from the job's row, the record of who submitted it, rather than trusted from the
    message; it needs the `CurrentMessage` middleware (in `job_middleware`)."""
    running = current_job()
    if running is not None and running.owner is not None:
        return running.owner  # a remote worker: the server said whose it is
    message = CurrentMessage.get_current_message()
    job_id = None if message is None else message.options.get(JOB_ID_OPTION)
    job = None if job_id is None else jobs.get_job(job_id)
    if job is None:
        raise LookupError("not running for a job: the owner is unknown")
    return job.owner


def current_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _StoredResultsFilter(logging.Filter):
    """dramatiq warns that a return value is discarded without its Results middleware; ours
    is not discarded (it is the job's stored result), so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned a value that is not None" not in str(record.msg)


class JobStatus(Middleware):
    """pending -> running -> completed | failed | cancelled, and running -> pending when retried.

    `attempts` counts the executions begun, so a run cut short by a dead worker counts too; a
    job whose attempts are spent that way fails with `WorkerLost` instead of running again.

    A message is delivered at least once. Before running a job, this middleware applies the
    start rules remote fetches share (`skillq.brokers.job_starts`): a message whose job is
    finished is dropped, one whose job another live worker is running is deferred, one whose
    job's worker is dead takes the job over.

    A job it marks running joins the worker's `RunningJobs` until its outcome is recorded.

    Parameters:
      running(RunningJobs): The jobs this process runs (shared with the other middleware).
      dead_after_secs(float): A worker silent this long is dead (`workers.dead_after_secs`).
      max_result_bytes(int): A result larger than this, as stored JSON, fails the job with
        `ResultTooLarge` (`jobs.max_result_bytes`).
    """

    def __init__(
        self,
        running: RunningJobs,
        *,
        dead_after_secs: float = 15.0,
        max_result_bytes: int = 1048576,
    ) -> None:
        self.running = running
        self.dead_after_secs = dead_after_secs
        self.max_result_bytes = max_result_bytes
        self.worker_id = current_worker_id()
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_StoredResultsFilter())

    @property
    def actor_options(self) -> set[str]:
        # `run_once=True` marks a job type that must not run twice (see `run_once`).
        return {RUN_ONCE_OPTION}

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # Forked worker processes must not report their parent's id.
        self.worker_id = current_worker_id()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is None:
            return
        # Every log line of this thread names the job until its outcome is recorded.
        structlog.contextvars.bind_contextvars(job_id=job_id, worker_id=self.worker_id)
        # One pooled connection per message, shared by progress writes, returned at the end.
        database_proxy.connect(reuse_if_open=True)
        for _ in range(5):  # another delivery of the same job may win each race; look again
            if self._start(broker, job_id, message):
                return
        logger.warning("Skipping message %s: job %s keeps changing.", message.message_id, job_id)
        raise SkipMessage()

    def _start(self, broker: dramatiq.Broker, job_id: str, message: dramatiq.Message) -> bool:
        """Mark the job running for this message; False if another delivery got there first.
        Raises SkipMessage when this message must not run the job (`job_starts`)."""
        # The usual case, a pending job with attempts left, in one statement.
        started = job_writes.start_pending(job_id, worker_id=self.worker_id)
        if started is not None:
            if started.trace_id:
                structlog.contextvars.bind_contextvars(trace_id=started.trace_id)
            self._started(job_id, message, started.attempt, started.max_retries)
            return True
        job = jobs.get_job(job_id)
        attempt = next_attempt(broker, message, job, self.dead_after_secs)
        if attempt is None:
            raise SkipMessage()
        if job.trace_id:
            structlog.contextvars.bind_contextvars(trace_id=job.trace_id)
        if not begin(job, attempt, self.worker_id):
            return False
        self._started(job_id, message, attempt, job.max_retries)
        return True

    def _started(
        self, job_id: str, message: dramatiq.Message, attempt: int, max_retries: int
    ) -> None:
        message.options[ATTEMPT_OPTION] = attempt
        message.options[LAST_ATTEMPT_OPTION] = max_retries + 1
        started = self.running.start(job_id, message, attempt=attempt)
        started.log_fields = structlog.contextvars.get_contextvars()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is None:
            return
        running = current_job()
        # Each attempt's run time, whatever its outcome, recorded with it.
        started = running.started if running is not None and running.job_id == job_id else None
        run = None if started is None else time.monotonic() - started
        _recorded.finish = None
        try:
            recorded = self._record_outcome(broker, job_id, message, result, exception, run)
            if isinstance(recorded, job_writes.Finished):
                _recorded.finish = (job_id, recorded)
            if not recorded and run is not None:
                # The job had moved on (a retry that overtook this failure, a newer attempt):
                # this attempt still ran for so long.
                job_metrics.observe(message.actor_name, "run_seconds", run)
        finally:
            self.running.finish(job_id)
            database_proxy.close()
            structlog.contextvars.unbind_contextvars(*_JOB_LOG_FIELDS)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        _recorded.finish = None
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is not None:
            self.running.finish(job_id)
            database_proxy.close()
            structlog.contextvars.unbind_contextvars(*_JOB_LOG_FIELDS)

    def _record_outcome(
        self,
        broker: dramatiq.Broker,
        job_id: str,
        message: dramatiq.Message,
        result: Any,
        exception: BaseException | None,
        run_seconds: float | None,
    ) -> job_writes.Finished | bool | None:
        """Record how the attempt ended: the `Finished` outcome, True for a retry, or a falsy
        value if the job had moved on (nothing written)."""
        attempt = message.options[ATTEMPT_OPTION]
        if exception is None:
            # Nothing is written that cannot be read back: a NaN or a lone surrogate in one
            # result would break every listing that includes the job.
            problems = storable_problems(result, "result")
            if problems:
                where = "; ".join(f"{p['path']}: {p['message']}" for p in problems)
                return jobs.mark_failed(
                    job_id,
                    attempt=attempt,
                    error_type="ResultNotSerializable",
                    error_message=f"the job's result cannot be stored as JSON: {where}",
                    run_seconds=run_seconds,
                )
            size = stored_size(result)
            if size > self.max_result_bytes:
                return jobs.mark_failed(
                    job_id,
                    attempt=attempt,
                    error_type="ResultTooLarge",
                    error_message=f"the job's result is {size} bytes of JSON; at most"
                    f" {self.max_result_bytes} are kept (jobs.max_result_bytes)",
                    run_seconds=run_seconds,
                )
            completed = jobs.mark_completed(
                job_id, attempt=attempt, result=result, run_seconds=run_seconds
            )
            if completed:
                # One line per outcome: failures are dramatiq's ERROR with the traceback, a
                # cancel is one INFO line (brokers.cancellation), a success is this.
                logger.info("Job %s completed (attempt %d).", job_id, attempt)
            return completed
        if message.options.get(CANCELLED_OPTION):
            return jobs.mark_cancelled(job_id, attempt=attempt, run_seconds=run_seconds)
        limit_ms = time_limit(broker, message) if isinstance(exception, TimeLimitExceeded) else None
        error_type, error_message = describe_error(exception, limit_ms)
        if message.failed or attempt >= message.options.get(LAST_ATTEMPT_OPTION, attempt + 1):
            return jobs.mark_failed(
                job_id,
                attempt=attempt,
                error_type=error_type,
                error_message=error_message,
                run_seconds=run_seconds,
            )
        return jobs.mark_retrying(
            job_id,
            attempt=attempt,
            error_type=error_type,
            error_message=error_message,
            run_seconds=run_seconds,
        )


def time_limit(broker: dramatiq.Broker, message: dramatiq.Message) -> float | None:
    """The time limit, in milliseconds, the worker's `TimeLimit` gave this message: the
    message's own, else its actor's, else the worker's `workers.job_timeout_secs`."""
    limit = message.options.get("time_limit")
    if limit:
        return limit
    try:
        actor_limit = broker.get_actor(message.actor_name).options.get("time_limit")
    except ActorNotFound:
        actor_limit = None
    if actor_limit:
        return actor_limit
    return next((m.time_limit for m in broker.middleware if isinstance(m, TimeLimit)), None)


def describe_error(exception: BaseException, time_limit_ms: float | None) -> tuple[str, str]:
    if isinstance(exception, TimeLimitExceeded):
        limit = f" of {time_limit_ms / 1000:g} s" if time_limit_ms else ""
        return "TimeLimitExceeded", f"the job ran past its time limit{limit}"
    return type(exception).__name__, str(exception) or type(exception).__name__
