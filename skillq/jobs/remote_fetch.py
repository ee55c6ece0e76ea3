"""Hands jobs to remote HTTP workers: one more consumer of the same broker queues.

A remote worker's long-poll (`POST /api/v1/workers/{id}/fetch`) opens a consumer on each
queue its token allows and takes the next message, as a local worker's consumer would. The
job is then started in the store by the same function a local worker's `JobStatus` uses
(`skillq.brokers.job_starts`: a finished job's message is dropped, a duplicate of a job a
live worker runs is deferred, a dead worker's job is taken over or, `run_once`, failed with
`WorkerLost`), with the remote worker as its `worker_id`, and only then is the message
acknowledged. A limited job takes its slots first through the same start gate as a local
worker's (`skillq.brokers.limiter`): one that cannot start now is postponed, not handed
out, and its slots are freed when the worker reports its outcome
(`skillq.jobs.remote_reports`) or, its heartbeats stopped, when their lease runs out. From
there the job row is the lease: the worker's heartbeats renew `heartbeat_at`, and when they
stop for `workers.dead_after_secs`, stale-job recovery puts the job back to pending and
sends its message again (`skillq.jobs.recovery`). So a job submitted once is started by
whichever consumer, local or remote, gets its message, and the store's conditional
`mark_running` lets only one attempt begin.

A message a remote worker cannot run (its job type requires a capability the worker lacks,
a skill it has not got, no job id) is put back on its queue for another consumer. A delay
queue's message (a retry's back-off, on Redis and RabbitMQ) is handed out once due, or put
back with the rest of its delay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis, dq_name, q_name
from dramatiq.errors import ActorNotFound
from dramatiq.message import generate_unique_id

from skillq.brokers.job_starts import begin, next_attempt
from skillq.brokers.job_status import JOB_ID_OPTION, time_limit
from skillq.brokers.limiter import Postponed, attempt_holder, limiter_of
from skillq.jobs.recovery import recover_stale_jobs
from skillq.settings import Settings
from skillq.storage import jobs
from skillq.storage.database import connection
from skillq.storage.worker_tokens import RemoteWorker

logger = logging.getLogger(__name__)

#: Milliseconds one consumer waits for a message before the next queue is looked at.
POLL_MS = 50
#: Seconds between two looks at the delay queues (their messages come due seldom).
DELAY_POLL_SECS = 1.0
#: The longest long-poll a worker may ask for, in seconds.
MAX_WAIT_SECS = 30.0
#: Actor option: capabilities a worker must declare to be handed the job (`["gpu"]`).
REQUIRES_OPTION = "requires"
#: The job type whose `skill` param a worker's declared skill list restricts.
SKILL_JOB_TYPE = "execute_skill"


@dataclass(frozen=True)
class Assignment:
    """What a remote worker needs to run one attempt of a job."""

    job_id: str
    type: str
    queue: str
    attempt: int
    max_attempts: int
    args: list[Any]
    kwargs: dict[str, Any]
    owner: str
    trace_id: str | None
    time_limit_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RemoteFetch:
    """The API-side consumer that remote workers fetch through.

    Parameters:
      broker(dramatiq.Broker): The API process's broker (the actors are declared on it).
      settings(Settings): Its settings; `workers.dead_after_secs` is the lease.
    """

    def __init__(self, broker: dramatiq.Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.dead_after_secs = settings.workers.dead_after_secs
        self._recovery_lock = threading.Lock()
        self._next_recovery = 0.0
        self._wake_lock = threading.Lock()
        self._next_wake = 0.0

    def fetch(self, worker: RemoteWorker, wait_secs: float) -> Assignment | None:
        """Block up to `wait_secs` for a job `worker` may run; None when none came."""
        deadline = time.monotonic() + min(max(wait_secs, 0.0), MAX_WAIT_SECS)
        consumers = dict(self._consumers(worker.queues))
        passed: set[str] = set()
        next_delayed = 0.0
        try:
            while consumers:
                self.wake_now_and_then()
                delayed_too = time.monotonic() >= next_delayed
                if delayed_too:
                    next_delayed = time.monotonic() + DELAY_POLL_SECS
                for name, consumer in list(consumers.items()):
                    if name.endswith(".DQ") and not delayed_too:
                        continue
                    proxy = next(consumer)
                    if proxy is None:
                        continue
                    handed = self._handle(worker, consumer, proxy, passed)
                    if handed is _EXHAUSTED:
                        del consumers[name]  # only unsuitable messages there, for now
                    elif handed is not None:
                        return handed
                if time.monotonic() >= deadline:
                    return None
            # No queue to look at (none declared, or only unsuitable messages): wait out the
            # poll rather than have the worker ask again at once.
            time.sleep(max(0.0, deadline - time.monotonic()))
            return None
        finally:
            for consumer in consumers.values():
                consumer.close()

    def recover_now_and_then(self) -> None:
        """Stale-job recovery, at most once per `dead_after_secs` per process, so expired
        leases are recovered even where no local worker or scheduler runs."""
        now = time.monotonic()
        if now < self._next_recovery or not self._recovery_lock.acquire(blocking=False):
            return
        try:
            self._next_recovery = now + self.dead_after_secs
            recover_stale_jobs(self.settings, self.broker)
        except Exception:
            logger.warning("Stale-job recovery failed; retrying later.", exc_info=True)
        finally:
            self._recovery_lock.release()

    def wake_now_and_then(self) -> None:
        """Wake postponed jobs whose slots freed by themselves (a rate window moved on, a
        remote worker's lease ran out), as each local worker's waker does, so they start
        where only remote workers run; at most once per `Limiter.wake_pass` interval."""
        limiter = limiter_of(self.broker)
        now = time.monotonic()
        if limiter is None or now < self._next_wake:
            return
        if not (limiter.owners or limiter.limits(self.broker)):
            self._next_wake = float("inf")
            return
        if not self._wake_lock.acquire(blocking=False):
            return
        try:
            with connection():
                self._next_wake = now + limiter.wake_pass(self.broker)
        except Exception:
            logger.warning("Job limits: the store did not answer; trying again.", exc_info=True)
            self._next_wake = now + limiter.renew_secs
        finally:
            self._wake_lock.release()

    def _consumers(self, queues: list[str]) -> Iterator[tuple[str, dramatiq.Consumer]]:
        declared = self.broker.get_declared_queues()
        delayed = self.broker.get_declared_delay_queues()
        for queue in queues:
            for name in (queue, dq_name(queue)):
                if name in declared or name in delayed:
                    yield name, self.broker.consume(name, prefetch=1, timeout=POLL_MS)

    def _handle(
        self,
        worker: RemoteWorker,
        consumer: dramatiq.Consumer,
        proxy: MessageProxy,
        passed: set[str],
    ) -> Assignment | object | None:
        """Claim the message's job for `worker`, or put the message where it belongs.
        Returns the assignment, None, or `_EXHAUSTED` when this queue only holds messages
        already passed over in this fetch. The message is acknowledged in every case."""
        message = proxy.copy(queue_name=q_name(proxy.queue_name))
        eta = proxy.options.get("eta")
        if proxy.queue_name != message.queue_name and isinstance(eta, int):
            remaining = eta - current_millis()
            if remaining > 0:
                self.broker.enqueue(message, delay=remaining)
                consumer.ack(proxy)
                return None
        job_id = message.options.get(JOB_ID_OPTION)
        if not isinstance(job_id, str) or not self._suits(worker, message):
            key = job_id if isinstance(job_id, str) else message.actor_name
            again = key in passed
            passed.add(key)
            self.broker.enqueue(message.copy(message_id=generate_unique_id()))
            consumer.ack(proxy)
            return _EXHAUSTED if again else None
        with connection():
            assignment = self._claim(worker, message, job_id)
        consumer.ack(proxy)
        return assignment

    def _suits(self, worker: RemoteWorker, message: dramatiq.Message) -> bool:
        try:
            actor = self.broker.get_actor(message.actor_name)
        except ActorNotFound:
            return False
        required = set(actor.options.get(REQUIRES_OPTION) or ())
        if not required <= set(worker.capabilities):
            return False
        if worker.skills is not None and actor.actor_name == SKILL_JOB_TYPE:
            return message.kwargs.get("skill") in worker.skills
        return True

    def _claim(
        self, worker: RemoteWorker, message: dramatiq.Message, job_id: str
    ) -> Assignment | None:
        """Start the job for `worker` by the rules and through the limiter a local worker's
        start goes by (`job_starts`, `Limiter.admit`); None when this message must not run it
        (finished, deferred, failed, cancelled or postponed instead)."""
        for _ in range(5):  # another delivery of the same job may win each race
            job = jobs.get_job(job_id)
            attempt = next_attempt(self.broker, message, job, self.dead_after_secs)
            if attempt is None:
                return None
            limiter = limiter_of(self.broker)
            try:
                token = (
                    None
                    if limiter is None
                    else limiter.admit(self.broker, message, job, attempt_holder(job_id, attempt))
                )
            except Postponed:
                return None  # kept in the store; sent again when a slot frees
            if begin(job, attempt, worker.id):
                limit = time_limit(self.broker, message)
                return Assignment(
                    job_id=job_id,
                    type=job.type,
                    queue=job.queue,
                    attempt=attempt,
                    max_attempts=job.max_retries + 1,
                    args=list(message.args),
                    kwargs=dict(message.kwargs),
                    owner=job.owner,
                    trace_id=job.trace_id,
                    time_limit_ms=None if limit is None else int(limit),
                )
            if token is not None:  # another delivery started it: the slots go back
                limiter.give_back(self.broker, token, job.type, job.owner)
        logger.warning("Job %s keeps changing; message %s dropped.", job_id, message.message_id)
        return None


#: `_handle`'s answer for a queue holding only messages this fetch already passed over.
_EXHAUSTED = object()
