"""Cancelling running jobs on every broker, through the store rather than the broker.

`DELETE /api/v1/jobs/{id}` sets the job's `cancel_requested_at`. One watcher thread per worker
process looks up, twice a second, which of the jobs this process runs (its `RunningJobs`) have
such a request, so it works the same on SQLite, Redis and RabbitMQ (no broker-specific event
channel). For each request it

- raises `JobCancelled` in the worker thread running the job (the way dramatiq's time limit
  interrupts an actor: it lands at the thread's next Python instruction),
- calls the job's cancel hooks (`RunningJob.on_cancel`): the skill actor registers one that
  kills its tool's subprocess group, since a thread blocked in a system call only sees the
  exception once the call returns,
- flags the message, so that `JobStatus` records `cancelled` whatever the actor raised on the
  way out and `JobRetries` does not retry it.

`report_progress` also checks the flag (see `raise_if_cancelled`), so a job that reports
progress stops at its next report even without the thread exception.

Placed last in the middleware list, so its `after_process_message` runs first: the job is
closed to interrupts before any other middleware records the outcome, and no late exception
can hit them.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import dramatiq
from dramatiq.middleware import Interrupt, Middleware
from dramatiq.threading import raise_thread_exception

from skillq.brokers.job_messages import own_job
from skillq.brokers.job_status import CANCELLED_OPTION
from skillq.brokers.running import RunningJob, RunningJobs, current_job
from skillq.storage import jobs
from skillq.storage.database import connection

logger = logging.getLogger(__name__)

#: Seconds between two looks at the store for cancel requests of this process's jobs.
POLL_SECS = 0.5


class JobCancelled(Interrupt):
    """Raised in an actor's thread when its job is cancelled.

    An `Interrupt` (a BaseException), like dramatiq's `TimeLimitExceeded`, so that an actor's
    `except Exception:` does not swallow it.
    """


def raise_if_cancelled(job: RunningJob | None = None) -> None:
    """The cooperative check: raises `JobCancelled` if the cancellation of `job` (by default
    the calling thread's) was noticed."""
    job = job or current_job()
    if job is None or not job.message.options.get(CANCELLED_OPTION):
        return
    if job.thread_id == threading.get_ident():
        # The watcher flags the job and raises the thread exception under this lock, so both
        # are done once we hold it. Withdraw that exception: raised here instead, it would
        # land a moment later inside dramatiq's handling of this one (while it logs it), out
        # of reach of every middleware, and the job would never be recorded as cancelled.
        with job.lock:
            clear_pending_exception(job.thread_id)
    raise JobCancelled(f"job {job.job_id} was cancelled")


class _CancelledJobRecords(logging.Filter):
    """Turns dramatiq's "unhandled exception" ERROR for a cancelled job into one INFO line.

    dramatiq's worker logs every exception that leaves an actor at ERROR with its traceback
    (`Worker.process_message`), before any middleware sees it, and offers no hook in between:
    its `throws` option would need the exception class in the message options, which must
    stay JSON. A cancel is a client's request carried out, not a fault, so on the worker
    thread's logger the record becomes "Job ... cancelled." at INFO, without the traceback.
    It applies when the exception is `JobCancelled` or, as a job may raise something else on
    its way out (a killed subprocess), when the thread's job was flagged cancelled; every
    other record passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        exception = record.exc_info[1]
        job = current_job()
        flagged = job is not None and bool(job.message.options.get(CANCELLED_OPTION))
        if not (isinstance(exception, JobCancelled) or flagged):
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.msg = "Job %s cancelled."
        record.args = (job.job_id if job is not None else "(unknown)",)
        record.exc_info = record.exc_text = None
        return True


_cancelled_job_records = _CancelledJobRecords()


def clear_pending_exception(thread_id: int) -> None:
    """Withdraw a thread exception that was set but not yet raised (an interrupt that must
    not land any more)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


def interrupt(running: RunningJobs, job_id: str) -> None:
    """Cancel `job_id` if this process runs it: flag its message (so the outcome is
    `cancelled`, never retried), raise `JobCancelled` in its thread, then call its cancel
    hooks. A job interrupted already, or whose outcome is being recorded, is left alone.

    The one way a running job is cancelled, whoever noticed the request: the `Cancellation`
    watcher (the store) or a remote worker (the API's answer to a beat or a progress report).
    """
    job = running.get(job_id)
    if job is None:
        return
    with job.lock:
        if job.interrupted or job.finishing:
            return
        job.interrupted = True
        job.message.options[CANCELLED_OPTION] = True
        # Logged from another thread than the job's: the job's ids are passed along explicitly.
        logger.info("Cancelling job %s.", job_id, extra=job.log_fields)
        raise_thread_exception(job.thread_id, JobCancelled)
    for hook in job.cancel_hooks():
        try:
            hook()
        except Exception:
            logger.warning("A cancel hook of job %s failed.", job_id, exc_info=True)


class Cancellation(Middleware):
    """Watches the store for cancel requests of the jobs this worker process runs.

    Parameters:
      running(RunningJobs): The jobs this process runs (shared with the other middleware).
      poll_secs(float): Seconds between two looks at the store.
    """

    def __init__(self, running: RunningJobs, *, poll_secs: float = POLL_SECS) -> None:
        self.running = running
        self.poll_secs = poll_secs
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # The logger dramatiq's worker threads report actor exceptions on (one filter object,
        # however many brokers a process builds).
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_cancelled_job_records)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.clear()
        self._watcher = threading.Thread(
            target=self._watch, name="skillq-cancellation", daemon=True
        )
        self._watcher.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job = own_job(message)
        if job is None:
            return
        try:
            self._close(job)
        except JobCancelled:
            # The interrupt landed after the actor returned; the job is finished either way.
            self._close(job)

    after_skip_message = after_process_message

    def _close(self, job: RunningJob) -> None:
        """No interrupt may reach the job's thread from now on."""
        with job.lock:
            job.finishing = True
            if job.interrupted:
                clear_pending_exception(job.thread_id)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_secs):
            watched = [
                job.job_id
                for job in self.running.snapshot()
                if not (job.interrupted or job.finishing)
            ]
            if not watched:
                continue
            try:
                with connection():
                    requested = jobs.cancel_requested_among(watched)
            except Exception:
                logger.warning("Could not look for cancel requests; retrying.", exc_info=True)
                continue
            for job_id in requested:
                interrupt(self.running, job_id)
