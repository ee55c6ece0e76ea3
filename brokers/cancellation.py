"""Cancelling running jobs on every broker, through the store rather than the broker.

`DELETE /api/v1/jobs/{id}` sets the job's `cancel_requested_at`. One watcher thread per worker
process looks up, twice a second, which of the jobs this process runs have such a request, so
it works the same on SQLite, Redis and RabbitMQ (no broker-specific event channel). For each
request it

- raises `JobCancelled` in the worker thread running the job (the way dramatiq's time limit
  interrupts an actor: it lands at the thread's next Python instruction),
- kills the job's skill subprocess group, if it runs one
  (`skillq.engine.sandbox.kill_running`), since
  a thread blocked in a system call only sees the exception once the call returns,
- flags the message, so that `JobStatus` records `cancelled` whatever the actor raised on the
  way out and `JobRetries` does not retry it.

`report_progress` also checks the flag (see `raise_if_cancelled`), so a job that reports
progress stops at its next report even without the thread exception.

Placed last in the middleware list: its `before_process_message` runs once `JobStatus` has
marked the job running, and its `after_process_message` runs first, so the job is unregistered
before any other middleware records the outcome, and no late exception can hit them.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import dramatiq
from dramatiq.middleware import Interrupt, Middleware
from dramatiq.threading import raise_thread_exception

from skillq.brokers.job_status import CANCELLED_OPTION, JOB_ID_OPTION
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


class _Running:
    def __init__(self, message: dramatiq.Message, thread_id: int) -> None:
        self.message = message
        self.thread_id = thread_id
        self.interrupted = False


_lock = threading.Lock()
_running: dict[str, _Running] = {}


def raise_if_cancelled(job_id: str) -> None:
    """The cooperative check: raises `JobCancelled` if this job's cancellation was noticed."""
    with _lock:
        entry = _running.get(job_id)
        cancelled = entry is not None and entry.message.options.get(CANCELLED_OPTION)
    if cancelled:
        raise JobCancelled(f"job {job_id} was cancelled")


def _clear_pending_exception(thread_id: int) -> None:
    """Withdraw a thread exception that was set but not yet raised."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class Cancellation(Middleware):
    """Watches the store for cancel requests of the jobs this worker process runs.

    Parameters:
      poll_secs(float): Seconds between two looks at the store.
    """

    def __init__(self, *, poll_secs: float = POLL_SECS) -> None:
        self.poll_secs = poll_secs
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.clear()
        self._watcher = threading.Thread(
            target=self._watch, name="skillq-cancellation", daemon=True
        )
        self._watcher.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is None:
            return
        # A request made before this point is still in the store: the next poll finds it.
        with _lock:
            _running[job_id] = _Running(message, threading.get_ident())

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
            self._forget(job_id)
        except JobCancelled:
            # The interrupt landed after the actor returned; the job is finished either way.
            self._forget(job_id)

    after_skip_message = after_process_message

    def _forget(self, job_id: str) -> None:
        with _lock:
            entry = _running.get(job_id)
            if entry is None or entry.thread_id != threading.get_ident():
                return
            del _running[job_id]
            if entry.interrupted:
                _clear_pending_exception(entry.thread_id)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_secs):
            with _lock:
                watched = [job_id for job_id, e in _running.items() if not e.interrupted]
            if not watched:
                continue
            try:
                with connection():
                    requested = jobs.cancel_requested_among(watched)
            except Exception:
                logger.warning("Could not look for cancel requests; retrying.", exc_info=True)
                continue
            for job_id in requested:
                self._interrupt(job_id)

    def _interrupt(self, job_id: str) -> None:
        with _lock:
            entry = _running.get(job_id)
            if entry is None or entry.interrupted:
                return
            entry.interrupted = True
            entry.message.options[CANCELLED_OPTION] = True
            logger.info("Cancelling job %s.", job_id)
            raise_thread_exception(entry.thread_id, JobCancelled)
        _kill_subprocess(job_id)


def _kill_subprocess(job_id: str) -> None:
    try:
        from skillq.engine.sandbox import kill_running
    except ImportError:  # the sandbox is optional; without it no job runs a subprocess
        return
    try:
        kill_running(job_id)
    except Exception:
        logger.warning("Could not kill the subprocess of job %s.", job_id, exc_info=True)
