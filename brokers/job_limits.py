"""Global concurrency and rate limits per job type, and per-owner running limits, on every
broker, held in the job store.

A job type limited by `[job_types.<name>] max_concurrent` / `rate` (or the actor options of
the same names), or whose owner's jobs are limited by `[quotas] max_running`, takes its slots
in the store before its attempt starts (`skillq.brokers.limiter`, shared with remote
workers' fetches). A message that finds no free slot is **postponed**, not failed: its job
stays `pending` with its attempt count, its message is kept in the store, and the message
itself is acknowledged, so it neither spins through the broker nor blocks the other types
of its queue.

When a slot frees (a job ends here, a rate window moves on, a dead worker's lease runs out),
a worker takes the next postponed job out (highest priority first, round-robin by owner
within it), reserves the slots for it and sends its message again carrying the reservation,
so the job it woke cannot lose the slots to a newcomer. A job's end hands its slot to that
job in the same transaction, and the woken message starts on its reservation without
reading its job (`Limiter.start_reserved`; `JobStatus` skips it if it was cancelled
meanwhile, and the slot goes back).

Placed before `JobStatus`: a postponed message never marks its job running. Its slots are
given back by its `GiveBack` middleware, placed last, whose after-hook runs first: as soon as
the job's work is over, before its outcome is recorded, so the next job's start does not wait
for that write (without `GiveBack` in the stack, `JobLimits` gives them back itself, last).

Parameters:
  configured(Mapping[str, Limit]): The limits from settings, by job type; they override the
    actor options.
  owners(OwnerLimit): The per-owner running limits (`[quotas] max_running`).
  lease_secs(float): How long a concurrency slot outlives its worker's last renewal (the
    worker's `dead_after_secs`): the slot of a SIGKILLed worker frees after it.
  renew_secs(float): How often each worker renews its slots' leases and looks for slots that
    freed without telling anyone (its `heartbeat_secs`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage

from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.brokers.limit_rules import Limit, OwnerLimit, limit_from
from skillq.brokers.limiter import LIMIT_OPTIONS, TOKEN_OPTION, Limiter, Postponed, limiter_of
from skillq.storage import job_limits
from skillq.storage.database import connection, database_proxy

__all__ = ["GiveBack", "JobLimits", "Limit", "OwnerLimit", "limit_from", "limits_of"]

logger = logging.getLogger(__name__)

#: Message option marking the delivery this worker postponed (its log line is ours).
_POSTPONED_OPTION = "job_postponed"


class _PostponedSkipFilter(logging.Filter):
    """dramatiq warns of every skipped message; a postponement is routine (it has its own INFO
    line), so 1,000 postponed jobs must not mean 1,000 warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "was skipped" not in str(record.msg) or not record.args:
            return True
        message = record.args[0] if isinstance(record.args, tuple) else None
        return not getattr(message, "options", {}).get(_POSTPONED_OPTION)


class JobLimits(Middleware):
    """Postpones a job whose type or owner is at a limit; see the module docstring."""

    def __init__(
        self,
        configured: Mapping[str, Limit] | None = None,
        owners: OwnerLimit | None = None,
        **timing: float,
    ) -> None:
        # `timing`: `lease_secs` and `renew_secs`, as `Limiter` takes them.
        self.limiter = Limiter(configured, owners, **timing)
        self._held: dict[int, tuple[str, str]] = {}  # worker thread -> (token, job's owner)
        self._lock = threading.Lock()
        self._waker: _Waker | None = None
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_PostponedSkipFilter())

    @property
    def actor_options(self) -> set[str]:
        return set(LIMIT_OPTIONS)

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        # A bad option is a programming error: fail where the actor is declared.
        limit_from(actor.options.get("max_concurrent"), actor.options.get("rate"))

    def limits(self, broker: dramatiq.Broker) -> dict[str, Limit]:
        """Every job type with a limit."""
        return self.limiter.limits(broker)

    # --- the worker side ---

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.limiter.limits(broker) or self.limiter.owners:
            self._waker = _Waker(self, broker)
            self._waker.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._waker is not None:
            self._waker.stop()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is None or not self.limiter.applies(broker, message.actor_name):
            return
        database_proxy.connect(reuse_if_open=True)
        token = self.limiter.start_reserved(broker, message)
        if token is not None:
            # A woken job, its slots confirmed without reading it: if it must not run after
            # all (cancelled while it waited), `JobStatus` skips it and the slots go back.
            with self._lock:
                self._held[threading.get_ident()] = (token, "")
            return
        job = job_limits.applicant(job_id)
        if job is None or job.job_state.is_terminal:
            token = message.options.pop(TOKEN_OPTION, None)
            if token is not None:
                # Its reserved slot frees: a job postponed meanwhile may have counted on it.
                job_limits.forget(token)
                self.limiter.wake(broker, message.actor_name)
            return  # `JobStatus` drops it
        try:
            token = self.limiter.admit(broker, message, job)
        except Postponed:
            message.options[_POSTPONED_OPTION] = True
            if self._waker is not None and self.limiter.limit_of(broker, message.actor_name).rate:
                # Its rate slot frees by itself, maybe before the waker's next pass is due.
                self._waker.poke()
            raise SkipMessage() from None
        if token is not None:
            with self._lock:
                self._held[threading.get_ident()] = (token, job.owner)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self.give_back(broker, message)

    after_skip_message = after_process_message

    def give_back(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        """Give back the slots this thread's attempt of `message` holds, if it holds any
        (once: whichever of `GiveBack` and `JobLimits` comes first)."""
        with self._lock:
            held = self._held.pop(threading.get_ident(), None)
        if held is None:
            return
        token, owner = held
        # `JobStatus` keeps the attempt's connection open until its own after-hook: use it
        # rather than return it to the pool and take it again for the outcome.
        opened = contextlib.nullcontext() if not database_proxy.is_closed() else connection()
        with opened:
            self.limiter.give_back(broker, token, message.actor_name, owner)

    def held_tokens(self) -> list[str]:
        with self._lock:
            return [token for token, _ in self._held.values()]

    def wake(self, broker: dramatiq.Broker, job_type: str) -> int:
        """Send postponed jobs of `job_type` again, one per slot free now."""
        return self.limiter.wake(broker, job_type)


class GiveBack(Middleware):
    """Gives a limited attempt's slots back as soon as its work is over: placed last in the
    stack, its after-hook runs first (dramatiq runs them in reverse), before `JobStatus`
    records the outcome. The job's work is done, so the limit still holds for the work; and
    the next job's start, which the slot is handed to (`Limiter.give_back`), no longer waits
    for the outcome write, which was a fifth of the gap between one job's end and the next
    one's start. A worker that dies in between leaves its job running with its slot free,
    as one that dies during the work would: recovery sends it again, to take a slot anew."""

    def __init__(self, limits: JobLimits) -> None:
        self.limits = limits

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self.limits.give_back(broker, message)

    after_skip_message = after_process_message


class _Waker(threading.Thread):
    """Renews this worker's leases and wakes postponed jobs whose slot freed by itself (a rate
    window moved on, a dead worker's lease ran out); see `Limiter.wake_pass`."""

    def __init__(self, limits: JobLimits, broker: dramatiq.Broker) -> None:
        super().__init__(name="skillq-job-limits", daemon=True)
        self.limits = limits
        self.broker = broker
        self._stop = threading.Event()
        self._poked = threading.Event()

    def poke(self) -> None:
        """A job was postponed: look again at when the next slot frees."""
        self._poked.set()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()

    def run(self) -> None:
        timeout = 0.0
        while not self._stop.is_set():
            self._poked.wait(timeout)
            self._poked.clear()
            if self._stop.is_set():
                return
            try:
                with connection():
                    timeout = self.limits.limiter.wake_pass(self.broker, self.limits.held_tokens())
            except Exception:
                logger.warning("Job limits: the store did not answer; trying again.", exc_info=True)
                timeout = self.limits.limiter.renew_secs


def limits_of(broker: dramatiq.Broker) -> dict[str, Limit]:
    """Every job type of `broker` with a limit (for stats and `workers status`)."""
    limiter = limiter_of(broker)
    return {} if limiter is None else limiter.limits(broker)


def owner_limit_of(broker: dramatiq.Broker) -> OwnerLimit:
    """`broker`'s per-owner running limits (for stats and `workers status`)."""
    limiter = limiter_of(broker)
    return OwnerLimit() if limiter is None else limiter.owners
