"""Each worker process records itself in the store and beats while it lives.

The row (id, host, pid, queues, threads, started, last beat, jobs running) is what
`GET /api/v1/workers` and `skillq workers status` show. The same beat refreshes the
`heartbeat_at` of the jobs the process runs, which is how the rest of the system tells a live
attempt from one whose worker died (`brokers.job_status.worker_alive`, stale-job recovery).

A thread of its own runs stale-job recovery (`skillq.jobs.recovery`) at boot and then every
`dead_after_secs`, so recovery needs no scheduler: wherever jobs can run, it runs. It is not
the beat thread: a slow pass (a loaded store, a thousand lost jobs to send again) must not
hold back this process's beats, or the other workers' passes would take its live jobs for
a dead worker's and run them again.

On a graceful shutdown, jobs still running when dramatiq gives up waiting for them
(`--worker-shutdown-timeout`) go back to pending at once, so the store does not show them
running until the broker redelivers their messages.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from skillq.brokers.job_status import current_worker_id
from skillq.brokers.running import RunningJobs
from skillq.storage import job_recovery, workers
from skillq.storage.database import connection

logger = logging.getLogger(__name__)


class WorkerRegistry(Middleware):
    """Records this worker process in the store and beats for it and for the jobs it runs.

    Parameters:
      running(RunningJobs): The jobs this process runs (shared with the other middleware).
      heartbeat_secs(float): Seconds between two beats.
      dead_after_secs(float): Seconds between two stale-job recovery passes.
      recover(Callable): Runs one stale-job recovery pass; None for none.
    """

    def __init__(
        self,
        running: RunningJobs,
        *,
        heartbeat_secs: float,
        dead_after_secs: float,
        recover: Callable[[], Any] | None = None,
    ) -> None:
        self.heartbeat_secs = heartbeat_secs
        self.dead_after_secs = dead_after_secs
        self.running = running
        self.recover = recover
        self.worker_id = current_worker_id()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        self.worker_id = current_worker_id()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.worker_id = current_worker_id()
        queues = sorted(getattr(worker, "consumer_whitelist", None) or broker.get_declared_queues())
        with connection():
            workers.register(
                self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=[q for q in queues if not q.endswith((".DQ", ".XQ"))],
                threads=worker.worker_threads,
            )
        self._stop.clear()
        self._threads = [threading.Thread(target=self._beat, name="skillq-heartbeat", daemon=True)]
        if self.recover is not None:
            recovery = threading.Thread(target=self._recover, name="skillq-recovery", daemon=True)
            self._threads.append(recovery)
        for thread in self._threads:
            thread.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)  # the last beat must not land after the stop
        # A job whose actor has returned is recording its outcome: releasing it now would
        # make that write miss and leave the job pending, to run again.
        abandoned = [job for job in self.running.snapshot() if not job.finishing]
        try:
            with connection():
                for job in abandoned:
                    job_recovery.release_abandoned(job.job_id, attempt=job.attempt)
                workers.mark_stopped(self.worker_id)
        except Exception:
            logger.warning("Could not record the worker's shutdown.", exc_info=True)
        if abandoned:
            logger.warning("Requeued %d jobs still running at shutdown.", len(abandoned))

    def _beat(self) -> None:
        while not self._stop.is_set():
            running = sorted(job.job_id for job in self.running.snapshot())
            try:
                with connection():
                    workers.beat(self.worker_id, running)
            except Exception:
                logger.warning("Could not record the worker's heartbeat.", exc_info=True)
            self._stop.wait(self.heartbeat_secs)

    def _recover(self) -> None:
        assert self.recover is not None
        while not self._stop.is_set():  # at boot, then every dead_after_secs
            try:
                self.recover()
            except Exception:
                logger.warning("Stale-job recovery failed; retrying later.", exc_info=True)
            # Jittered, so the passes of workers started together spread out.
            self._stop.wait(self.dead_after_secs * random.uniform(0.8, 1.2))
