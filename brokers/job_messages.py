"""How the middleware around `JobStatus` find the job a message is for.

A message carries its job's id (`JOB_ID_OPTION`; maintenance actors' messages carry none).
While the job runs, the middleware whose hooks run in its thread reach its `RunningJob`
through `own_job`; once `JobStatus` has recorded how the message ended, those that act on
the job's new state in the store derive from `AfterOutcome`.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.brokers.running import RunningJob, current_job


def own_job(message: dramatiq.Message) -> RunningJob | None:
    """The calling thread's job, if it is this message's (`JobStatus` started it).

    None for a message that did not start its job (a skipped duplicate delivery, a message
    without a job), even if the thread still holds another job's entry.
    """
    job = current_job()
    return job if job is not None and job.job_id == message.options.get(JOB_ID_OPTION) else None


class AfterOutcome(Middleware):
    """Acts on a job once `JobStatus` has recorded how its message ended.

    Placed before `JobStatus` in the middleware list, so its `after_*` hooks run after
    `JobStatus` has written the outcome (dramatiq runs them in reverse order). A skipped
    message may have ended its job too (no attempts left, cancelled while its worker was
    gone), so skips are handled like processed messages. `after_outcome` gets the job's id
    only: what happened is read from the store, which holds the truth whichever process or
    path ended the job.
    """

    def after_outcome(self, broker: dramatiq.Broker, job_id: str) -> None:
        """What to do once the outcome of the job's message is recorded."""
        raise NotImplementedError

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is not None:
            self.after_outcome(broker, job_id)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self.after_process_message(broker, message)
