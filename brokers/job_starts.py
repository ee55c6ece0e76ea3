"""The rules for starting a job's next attempt from a delivered message, one set for local
workers (`skillq.brokers.job_status.JobStatus`) and remote HTTP workers' fetches
(`skillq.jobs.remote_fetch`), so a message means the same whichever consumer gets it.

A message is delivered at least once. `next_attempt` drops a message whose job is finished
or waits for its dependencies (its own message is sent when it is released), sends one back
that came before the job's `scheduled_for`, defers one whose job another live worker runs
(a duplicate delivery: the Redis broker requeues a stalled worker's messages, stale-job
recovery re-sends lost ones), takes over the job of a dead worker (or, `run_once`, fails it
with `WorkerLost`), and fails a job whose attempts are spent. What is left is an attempt the
caller may begin with `begin`, whose conditional update lets only one delivery win.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.message import generate_unique_id

from skillq.storage import Job, JobState, jobs
from skillq.storage.models import utcnow

logger = logging.getLogger(__name__)

#: Actor option: the job type must not run again after a worker died while running it.
RUN_ONCE_OPTION = "run_once"


def run_once(broker: dramatiq.Broker, actor_name: str) -> bool:
    """Whether a job type was declared `run_once=True`: delivery is at least once, so a job
    whose worker died mid-run is normally run again; such a type fails with `WorkerLost`
    instead, for work that must never happen twice (payments, e-mails, non-idempotent calls).
    """
    try:
        return bool(broker.get_actor(actor_name).options.get(RUN_ONCE_OPTION))
    except ActorNotFound:
        return False


def worker_alive(
    worker_id: str | None, heartbeat_at: datetime | None, dead_after_secs: float
) -> bool:
    """Whether the worker process that started a job still runs it: its beat is fresh and, when
    it runs on this host, its process exists (so a SIGKILL is seen at once, not after the
    timeout)."""
    if worker_id is None or heartbeat_at is None:
        return False
    if utcnow() - heartbeat_at > timedelta(seconds=dead_after_secs):
        return False
    host, _, pid = worker_id.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _process_alive(int(pid))
    return True


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # A killed process its parent has not reaped yet is a zombie: dead for us.
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def next_attempt(
    broker: dramatiq.Broker, message: dramatiq.Message, job: Job | None, dead_after_secs: float
) -> int | None:
    """The attempt `message` may begin for `job` now, or None when it must not run it (what
    that case needs is done: see the module docstring)."""
    if job is None or job.job_state.is_terminal:
        state, job_id = (job.state, job.id) if job else ("deleted", message.options.get("job_id"))
        logger.info("Skipping message %s: job %s is %s.", message.message_id, job_id, state)
        return None
    if job.waiting:
        logger.info("Skipping message %s: job %s waits.", message.message_id, job.id)
        return None
    if job.job_state is JobState.PENDING and job.scheduled_for is not None:
        early_ms = (job.scheduled_for - utcnow()).total_seconds() * 1000
        if early_ms > 0:
            # Whatever delivered it early (a clock ahead of the store's, a duplicate sent
            # without the delay): back to the broker for the time that is left.
            logger.info(
                "Holding message %s: job %s is due in %d ms.", message.message_id, job.id, early_ms
            )
            broker.enqueue(message.copy(message_id=generate_unique_id()), delay=int(early_ms) + 1)
            return None
    if job.job_state is JobState.RUNNING and not _may_follow(broker, message, job, dead_after_secs):
        return None
    attempt = job.attempts + 1
    if attempt > job.max_retries + 1:
        error = (job.error_type, job.error_message)
        if job.job_state is JobState.RUNNING or error[0] is None:
            error = ("WorkerLost", f"the worker running attempt {job.attempts} stopped")
        jobs.fail_unfinished(
            job.id, attempt=job.attempts, error_type=error[0], error_message=error[1]
        )
        logger.info("Skipping message %s: job %s has no attempts left.", message.message_id, job.id)
        return None
    return attempt


def _may_follow(
    broker: dramatiq.Broker, message: dramatiq.Message, job: Job, dead_after_secs: float
) -> bool:
    """A message of a running job: dramatiq's retry of an attempt that just failed (it can
    arrive before that attempt's outcome is recorded, and follows on from it), or a
    duplicate, deferred while the job's worker lives and taking over once it is dead."""
    follows_on = int(message.options.get("retries", 0)) >= job.attempts
    if not follows_on and worker_alive(job.worker_id, job.heartbeat_at, dead_after_secs):
        logger.info(
            "Deferring message %s: job %s runs on live worker %s.",
            message.message_id,
            job.id,
            job.worker_id,
        )
        duplicate = message.copy(message_id=generate_unique_id())
        broker.enqueue(duplicate, delay=int(dead_after_secs * 1000))
        return False
    if job.cancel_requested_at is not None:
        # Its attempt ended (worker died, or it failed) after a client cancelled it.
        jobs.cancel_unfinished(job.id, attempt=job.attempts)
        return False
    if follows_on:
        return True
    if run_once(broker, message.actor_name):
        jobs.fail_unfinished(
            job.id,
            attempt=job.attempts,
            error_type="WorkerLost",
            error_message=f"the worker running attempt {job.attempts} stopped; the job"
            " type is run_once, so it is not run again",
        )
        return False
    logger.warning(
        "Job %s: worker %s is gone; message %s takes over.",
        job.id,
        job.worker_id,
        message.message_id,
    )
    return True


def begin(job: Job, attempt: int, worker_id: str) -> bool:
    """Mark `attempt` of `job` running on `worker_id`; False if another delivery got there
    first. The wait is from submission to the first attempt's start (a retry's wait is
    mostly its own back-off delay, which says nothing about the workers)."""
    wait = (utcnow() - job.created_at).total_seconds() if attempt == 1 else None
    return jobs.mark_running(job.id, attempt=attempt, worker_id=worker_id, wait_seconds=wait)
