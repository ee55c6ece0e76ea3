"""Stale-job recovery: the store never shows a job `running` or `pending` forever.

Brokers redeliver the message of a worker that died (SQLite when its lease runs out, Redis
when its heartbeat is `heartbeat_timeout` old, RabbitMQ when its connection drops), and the
redelivered message takes the job over (see `brokers.job_status`). This pass covers what
brokers cannot:

- a running job whose worker stopped beating for `workers.dead_after_secs` goes back to
  `pending` (or `failed` with `WorkerLost` once its attempts are spent, or `cancelled` if a
  client asked for that), so the store tells the truth while the broker redelivers; a remote
  worker's job (its lease expired) is sent again at once, as its message was acknowledged
  when the remote worker fetched it;
- a pending job whose message was last sent `workers.requeue_pending_after_secs` ago is sent
  again: its message was lost (the API died between writing the job and enqueueing it, or a
  Redis server restarted without persistence). A duplicate this creates is harmless: the
  second delivery finds the job running or finished and does not run it again.

It runs in every worker process (at boot, then every `dead_after_secs`) and as the scheduler's
`recover_stale_jobs` maintenance actor. Every change is a conditional update, so passes in
several processes at once do each recovery once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import dramatiq

from skillq.brokers.job_starts import run_once
from skillq.jobs import release
from skillq.settings import Settings
from skillq.storage import dependencies, job_recovery, jobs, worker_tokens
from skillq.storage.database import connection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    released: int = 0
    failed: int = 0
    cancelled: int = 0
    resent: int = 0
    #: Jobs waiting for dependencies that had all ended, settled here (released, cancelled
    #: or failed): their last dependency's worker died before it could settle them.
    settled: int = 0


def recover_stale_jobs(settings: Settings, broker: dramatiq.Broker | None = None) -> Recovery:
    from skillq.jobs.coordinator import JobCoordinator

    broker = broker or dramatiq.get_broker()
    workers = settings.workers
    released = failed = cancelled = resent = settled = 0
    with connection():
        for job in job_recovery.stale_running(timedelta(seconds=workers.dead_after_secs)):
            if job.cancel_requested_at is not None:
                cancelled += jobs.cancel_unfinished(job.id, attempt=job.attempts)
            elif job.attempts >= job.max_retries + 1 or run_once(broker, job.type):
                failed += jobs.fail_unfinished(
                    job.id,
                    attempt=job.attempts,
                    error_type="WorkerLost",
                    error_message=f"the worker running attempt {job.attempts} stopped",
                )
            elif job_recovery.release_stale(
                job, error_message=f"worker {job.worker_id} stopped during attempt {job.attempts}"
            ):
                released += 1
                if worker_tokens.is_remote(job.worker_id):
                    # A remote worker's message was acknowledged when it fetched the job:
                    # nothing will redeliver it, so its lease expiring sends it again now.
                    resent += _resend_released(settings, broker, job.id)
        lost = job_recovery.lost_pending(timedelta(seconds=workers.requeue_pending_after_secs))
        coordinator = JobCoordinator(broker, settings) if lost else None
        for job in lost:
            if not job_recovery.claim_resend(job):
                continue
            try:
                coordinator.resend(job)
            except Exception:
                logger.warning("Could not re-send job %s; the next pass retries.", job.id)
                break
            resent += 1
        ready = dependencies.ready_waiting()
        if ready:
            settled = release.settle(ready, coordinator or JobCoordinator(broker, settings))
    recovery = Recovery(released, failed, cancelled, resent, settled)
    if recovery != Recovery():
        logger.info(
            "Recovered stale jobs: %d back to pending, %d failed, %d cancelled, %d re-sent,"
            " %d waiting jobs settled.",
            *(released, failed, cancelled, resent, settled),
        )
    return recovery


def _resend_released(settings: Settings, broker: dramatiq.Broker, job_id: str) -> int:
    from skillq.jobs.coordinator import JobCoordinator

    job = jobs.get_job(job_id)
    if job is None or not job_recovery.claim_resend(job):
        return 0
    try:
        JobCoordinator(broker, settings).resend(job)
    except Exception:
        logger.warning("Could not re-send job %s; lost-job recovery retries.", job_id)
        return 0
    return 1
