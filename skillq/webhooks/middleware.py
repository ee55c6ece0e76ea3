"""The worker side of webhooks: notice a job's outcome and its progress as they happen.

`WebhookOutcomes` sits before `JobStatus` in the middleware list, so its `after_*` hooks
run after `JobStatus` recorded the outcome (dramatiq calls them in reverse order); it then
records and queues the job's events. `WebhookProgress` sits after `JobProgress` and wraps
the job's progress reporter with the `job.progress` throttle. Neither ever fails a job:
an error here is logged, and the sweep (`events.sweep`) catches any outcome it missed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import dramatiq
from dramatiq.middleware import Middleware

from skillq.brokers.job_messages import AfterOutcome, own_job
from skillq.settings import Settings
from skillq.storage import jobs
from skillq.storage.database import connection
from skillq.webhooks import events

logger = logging.getLogger(__name__)


class WebhookOutcomes(AfterOutcome):
    """Records and queues the events of the outcome `JobStatus` just recorded.

    Parameters:
      settings(Settings): the process's settings (`[webhooks]`).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_outcome(self, broker: dramatiq.Broker, job_id: str) -> None:
        try:
            events.notify_outcome(broker, self.settings, job_id)
        except Exception:
            logger.exception("Recording the webhook events of job %s failed.", job_id)


class _ThrottledProgress:
    def __init__(
        self,
        report: Callable[[float | None, str | None], None],
        notify: Callable[[], None],
        interval_secs: float,
    ) -> None:
        self.report = report
        self.notify = notify
        self.interval_secs = interval_secs
        self.last_event = float("-inf")

    def __call__(self, progress: float | None, message: str | None) -> None:
        self.report(progress, message)
        now = time.monotonic()
        if now - self.last_event >= self.interval_secs:
            self.last_event = now
            try:
                self.notify()
            except Exception:
                logger.exception("Recording a job.progress webhook event failed.")

    def flush(self) -> None:
        # The job's own reporter holds back reports that came too soon; it sends the last one
        # when the job ends, through this wrapper.
        flush = getattr(self.report, "flush", None)
        if flush is not None:
            flush()


class WebhookProgress(Middleware):
    """`job.progress` events for the subscriptions that want them: the first report of a
    job, then at most one per `progress_interval_secs`.

    Parameters:
      settings(Settings): the process's settings (`[webhooks]`).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job = own_job(message)
        if job is None:
            return
        if job.on_progress is None or not events.watches_progress(self.settings.webhooks):
            return
        job_id = job.job_id

        def notify() -> None:
            with connection():
                row = jobs.get_job(job_id)
            if row is not None:
                events.notify_progress(broker, self.settings, row)

        interval = self.settings.webhooks.progress_interval_secs
        job.on_progress = _ThrottledProgress(job.on_progress, notify, interval)
