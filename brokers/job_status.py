"""Moves each job through its states in the store as its message is processed.

Placed before `Retries` in the middleware list: dramatiq runs `after_*` hooks in reverse
order, so by the time this middleware records an outcome, `Retries` has already decided
whether the failure will be retried (`message.failed` is set when it will not).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage, TimeLimitExceeded

from storage import jobs
from storage.database import database_proxy

logger = logging.getLogger(__name__)

#: Message option carrying the job id; messages without it (maintenance actors) are ignored.
JOB_ID_OPTION = "job_id"
#: Message option holding the attempt being processed. It is fixed when processing starts,
#: because dramatiq's Retries bumps `retries` on the same message before `after_*` hooks
#: further down the stack run.
ATTEMPT_OPTION = "job_attempt"


def current_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def attempt_of(message: dramatiq.Message) -> int:
    """1 for the first run; dramatiq's `retries` option counts the failed runs before it."""
    return int(message.options.get("retries", 0)) + 1


class _StoredResultsFilter(logging.Filter):
    """dramatiq warns that a return value is discarded without its Results middleware; ours
    is not discarded (it is the job's stored result), so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned a value that is not None" not in str(record.msg)


class JobStatus(Middleware):
    """pending -> running -> completed | failed, and running -> pending when retried."""

    def __init__(self) -> None:
        self.worker_id = current_worker_id()
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_StoredResultsFilter())

    @property
    def actor_options(self) -> set[str]:
        # Declared here because a job type is an actor plus these: the catalogue of job
        # types (`skillq.job_types`) reads them back from each actor.
        return {"params_schema", "description"}

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # Forked worker processes must not report their parent's id.
        self.worker_id = current_worker_id()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is None:
            return
        # One pooled connection per message, shared by progress writes, returned at the end.
        database_proxy.connect(reuse_if_open=True)
        attempt = message.options[ATTEMPT_OPTION] = attempt_of(message)
        if not jobs.mark_running(job_id, attempt=attempt, worker_id=self.worker_id):
            job = jobs.get_job(job_id)
            state = job.state if job else "deleted"
            logger.info("Skipping message %s: job %s is %s.", message.message_id, job_id, state)
            raise SkipMessage()

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
        try:
            self._record_outcome(job_id, message, result, exception)
        finally:
            database_proxy.close()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if message.options.get(JOB_ID_OPTION) is not None:
            database_proxy.close()

    def _record_outcome(
        self,
        job_id: str,
        message: dramatiq.Message,
        result: Any,
        exception: BaseException | None,
    ) -> None:
        attempt = message.options[ATTEMPT_OPTION]
        if exception is None:
            try:
                json.dumps(result)
            except (TypeError, ValueError) as error:
                jobs.mark_failed(
                    job_id,
                    attempt=attempt,
                    error_type="ResultNotSerializable",
                    error_message=f"the job's result is not JSON: {error}",
                )
                return
            jobs.mark_completed(job_id, attempt=attempt, result=result)
            return
        error_type, error_message = describe_error(exception, message)
        if message.failed:
            jobs.mark_failed(
                job_id, attempt=attempt, error_type=error_type, error_message=error_message
            )
        else:
            jobs.mark_retrying(
                job_id, attempt=attempt, error_type=error_type, error_message=error_message
            )


def describe_error(exception: BaseException, message: dramatiq.Message) -> tuple[str, str]:
    if isinstance(exception, TimeLimitExceeded):
        limit_ms = message.options.get("time_limit")
        limit = f" of {limit_ms / 1000:g} s" if limit_ms else ""
        return "TimeLimitExceeded", f"the job ran past its time limit{limit}"
    return type(exception).__name__, str(exception) or type(exception).__name__
