"""How the middleware around `JobStatus` find the job a message is for.

A message carries its job's id (`JOB_ID_OPTION`; maintenance actors' messages carry none).
While the job runs, the middleware whose hooks run in its thread reach its `RunningJob`
through `own_job`.
"""

from __future__ import annotations

import dramatiq

from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.brokers.running import RunningJob, current_job


def own_job(message: dramatiq.Message) -> RunningJob | None:
    """The calling thread's job, if it is this message's (`JobStatus` started it).

    None for a message that did not start its job (a skipped duplicate delivery, a message
    without a job), even if the thread still holds another job's entry.
    """
    job = current_job()
    return job if job is not None and job.job_id == message.options.get(JOB_ID_OPTION) else None

