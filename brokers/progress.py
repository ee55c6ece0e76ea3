"""Progress reporting for actor bodies: `report_progress(0.4, "indexed 40 of 100")`.

Writes are throttled per job: a hot loop calling `report_progress` thousands of times per
second costs one store write per `min_interval_secs`; the latest value is kept and written
when the job's message finishes, so the final figure is never lost. The writer hangs on the
job's entry in the worker's `RunningJobs`, where `report_progress` finds it from the actor's
thread.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from skillq.brokers.cancellation import raise_if_cancelled
from skillq.brokers.job_messages import own_job
from skillq.brokers.running import current_job
from skillq.storage import jobs

logger = logging.getLogger(__name__)


class ProgressReporter:
    """Passes a job's progress on to `send`, at most once per `min_interval_secs`.

    The first report is sent at once; one that comes sooner than that after the last is held
    back (replacing any held before it), and `flush`, called when the job ends, sends what is
    held, so the final figure is never lost. The local worker's `send` writes to the store;
    a remote worker's posts to the API.
    """

    def __init__(
        self, send: Callable[[float | None, str | None], object], min_interval_secs: float
    ) -> None:
        self.send = send
        self.min_interval_secs = min_interval_secs
        self.last_sent = float("-inf")
        self.held: tuple[float | None, str | None] | None = None

    def __call__(self, progress: float | None, message: str | None) -> None:
        now = time.monotonic()
        if now - self.last_sent < self.min_interval_secs:
            self.held = (progress, message)
            return
        self.last_sent, self.held = now, None
        self.send(progress, message)

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.send(*held)


class JobProgress(Middleware):
    """Gives the running actor body a progress reporter for its job (a job `JobStatus` has
    started; messages without one report nowhere).

    Parameters:
      min_interval_secs(float): The shortest gap, in seconds, between two progress writes of
        one job.
    """

    def __init__(self, *, min_interval_secs: float = 0.25) -> None:
        self.min_interval_secs = min_interval_secs

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job = own_job(message)
        if job is not None:
            job.on_progress = ProgressReporter(
                functools.partial(jobs.set_progress, job.job_id), self.min_interval_secs
            )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job = own_job(message)
        # Another middleware (webhook progress events) may have wrapped the reporter; the
        # wrapper passes `flush` on.
        flush = None if job is None else getattr(job.on_progress, "flush", None)
        if flush is not None:
            job.on_progress = None
            flush()

    after_skip_message = after_process_message


def report_progress(progress: float | None = None, message: str | None = None) -> None:
    """Record how far the current job has got: `progress` in 0.0-1.0 and/or a short message.

    Outside a job (e.g. an actor called directly in a test) it does nothing.
    """
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be between 0.0 and 1.0 (got {progress})")
    job = current_job()
    if job is not None:
        # The cooperative cancellation point: a cancelled job stops at its next report.
        raise_if_cancelled(job)
        if job.on_progress is not None:
            job.on_progress(progress, message)


def current_job_id() -> str | None:
    """The id of the job the calling worker thread runs, or None outside a job.

    Lets an actor body hand its job id to code that works by job id.
    """
    job = current_job()
    return None if job is None else job.job_id
